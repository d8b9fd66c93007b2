"""Training losses: the U-Net's pixel-wise weighted cross entropy and a soft Dice term.

All losses take raw network outputs ``logits`` of shape ``(B, C, *S)`` (any number of spatial
axes), integer class targets ``(B, *S)`` in which ``ignore_index`` marks unlabelled pixels (the
sparse annotations of the 3D U-Net), and return a scalar. Ignored pixels contribute nothing to
the loss and receive exactly zero gradient; a batch without any labelled pixel gives 0, not NaN.
They run on the device of their inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from useg.errors import ConfigError, InputError
from useg.labels import IGNORE

__all__ = ["weighted_cross_entropy", "soft_dice_loss", "SegmentationLoss"]


def _check(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> None:
    if logits.ndim < 2:
        raise InputError(f"logits must be (B, C, *S), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise InputError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    if target.is_floating_point() or target.is_complex():
        raise InputError(f"target must hold integer class ids, got {target.dtype}")
    if weights is not None and tuple(weights.shape) != expected:
        raise InputError(
            f"weights shape {tuple(weights.shape)} does not match logits {tuple(logits.shape)}"
        )


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # A zero denominator means nothing was labelled: the numerator is 0 then, and so is the loss
    # (dividing by 1 instead keeps the gradient finite).
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _labelled(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits in at least float32 with the ignored pixels' set to 0, the mask of labelled
    pixels ``(B, *S)`` and the target with 0 at ignored pixels (a valid class to index with).
    An overflowed (inf) logit at an ignored pixel would otherwise give a NaN gradient through
    the softmax, even with its loss term masked afterwards."""
    labelled = target != ignore_index
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    logits = torch.where(labelled.unsqueeze(1), logits, torch.zeros_like(logits))
    safe_target = torch.where(labelled, target, torch.zeros_like(target)).long()
    return logits, labelled, safe_target


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Pixel-wise softmax cross entropy weighted by a per-pixel map (U-Net paper, eq. 1).

    ``loss = sum_x w(x) * (-log softmax(logits)(x)[target(x)]) / sum_x w(x)``, the sums running
    over all labelled pixels of the batch. Normalising by the total weight (instead of the
    number of pixels) keeps the loss on the scale of an ordinary mean cross entropy whatever
    ``w0`` or the class balance, so the learning rate does not depend on them; without
    ``weights`` it is the mean over labelled pixels. Pixels whose target is ``ignore_index``
    have weight 0.

    Parameters
    ----------
    logits : Tensor ``(B, C, *S)``
    target : Tensor ``(B, *S)`` of int
        Class ids in ``0 .. C-1``, or ``ignore_index``.
    weights : Tensor ``(B, *S)``, optional
        Non-negative pixel weights (e.g. :func:`useg.training.weights.border_weight_map`).
    ignore_index : int

    Returns
    -------
    Scalar tensor (float32, or float64 for float64 logits).

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 2)
    >>> target = torch.tensor([[[0, -1]]])
    >>> round(weighted_cross_entropy(logits, target).item(), 6)  # log(2)
    0.693147
    """
    _check(logits, target, weights)
    logits, labelled, safe_target = _labelled(logits, target, ignore_index)
    dtype = logits.dtype
    log_prob = F.log_softmax(logits, dim=1)
    nll = -log_prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
    w = labelled.to(dtype)
    if weights is not None:
        w = w * weights.to(dtype)
    # torch.where, not a product alone: 0 * inf would be NaN if an ignored pixel's logits overflow.
    contribution = torch.where(w > 0, w * nll, torch.zeros_like(nll))
    return _safe_divide(contribution.sum(), w.sum())


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss ``1 - mean_c (2 |P_c T_c| + s) / (|P_c| + |T_c| + s)`` over labelled pixels.

    ``P_c`` are the softmax probabilities of class ``c``, ``T_c`` the one-hot target; sums run
    over all labelled pixels of the batch. ``smooth`` (``s``) keeps classes that are absent from
    both target and prediction at a Dice of 1, and the loss of an all-ignored batch at 0.

    Parameters
    ----------
    logits : Tensor ``(B, C, *S)``
    target : Tensor ``(B, *S)`` of int
    ignore_index : int
    smooth : float

    Returns
    -------
    Scalar tensor.

    Examples
    --------
    >>> logits = torch.tensor([[[20.0, -20.0]], [[-20.0, 20.0]]]).reshape(1, 2, 1, 2)
    >>> round(soft_dice_loss(logits, torch.tensor([[[0, 1]]])).item(), 6)
    0.0
    """
    _check(logits, target, None)
    if not smooth > 0:
        raise ConfigError(f"smooth must be > 0 (it avoids 0/0 for absent classes), got {smooth}")
    classes = logits.shape[1]
    logits, labelled, safe_target = _labelled(logits, target, ignore_index)
    dtype = logits.dtype
    labelled = labelled.unsqueeze(1)
    prob = torch.softmax(logits, dim=1)
    prob = torch.where(labelled, prob, torch.zeros_like(prob))
    onehot = F.one_hot(safe_target, classes).movedim(-1, 1).to(dtype) * labelled
    dims = [0, *range(2, logits.ndim)]
    intersection = (prob * onehot).sum(dim=dims)
    total = prob.sum(dim=dims) + onehot.sum(dim=dims)
    dice = (2 * intersection + smooth) / (total + smooth)
    return 1 - dice.mean()


class SegmentationLoss(nn.Module):
    """Weighted cross entropy plus ``dice_weight`` times the soft Dice loss.

    Parameters
    ----------
    dice_weight : float, default 0
        0 gives the papers' loss (weighted cross entropy only).
    ignore_index : int, default IGNORE (-1)
    smooth : float, default 1
        Smoothing of the Dice term.

    Examples
    --------
    >>> loss = SegmentationLoss(dice_weight=0.5)
    >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    >>> value = loss(logits, torch.randint(0, 3, (2, 8, 8)), torch.rand(2, 8, 8))
    >>> value.backward(); value.ndim
    0
    """

    def __init__(self, dice_weight: float = 0.0, ignore_index: int = IGNORE, smooth: float = 1.0):
        super().__init__()
        if not smooth > 0:
            raise ConfigError(f"smooth must be > 0, got {smooth}")
        if dice_weight < 0:
            raise ConfigError(f"dice_weight must be >= 0, got {dice_weight}")
        self.dice_weight = float(dice_weight)
        self.ignore_index = int(ignore_index)
        self.smooth = float(smooth)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = weighted_cross_entropy(logits, target, weights, self.ignore_index)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(
                logits, target, self.ignore_index, self.smooth
            )
        return loss

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, ignore_index={self.ignore_index}"

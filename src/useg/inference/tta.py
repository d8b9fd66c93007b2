"""Test-time augmentation: flips and 90-degree rotations, their inverses, and averaging.

A transform is a pair ``(flips, k)``: the spatial axes to flip (counted from the first spatial
axis), then ``k`` quarter turns in the plane of the last two spatial axes (Y, X). In 2D the eight
transforms are the dihedral group of the square; in 3D the default set is that group acting in
the (Y, X) plane, where microscopy volumes are usually isotropic, times the flip of Z: 16
distinct transforms (flipping both Y and X is a half turn, so it is not counted twice).

The functions work on NumPy arrays and torch tensors alike, laid out ``(B, C, *spatial)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "Transform",
    "apply",
    "invert",
    "turns_commute",
    "transforms",
    "unseen_by_training",
    "with_tta",
]

Transform = tuple[tuple[int, ...], int]


def transforms(
    ndim: int, rotations: bool = True, flips: Sequence[int] | None = None
) -> list[Transform]:
    """All transforms of the TTA set for ``ndim`` spatial dimensions.

    Parameters
    ----------
    rotations : bool
        Include quarter turns in the (Y, X) plane (needs ``ndim >= 2`` and square tiles).
    flips : sequence of int, optional
        Spatial axes that may be flipped; all by default.

    Examples
    --------
    >>> len(transforms(2)), len(transforms(3)), len(transforms(3, rotations=False))
    (8, 16, 8)
    """
    axes = tuple(range(ndim)) if flips is None else tuple(flips)
    if rotations and ndim >= 2:
        # With quarter turns, flipping X as well as Y repeats a rotation: flip Y at most.
        axes = tuple(a for a in axes if a != ndim - 1)
        ks = range(4)
    else:
        ks = range(1)
    subsets = [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    return [(f, k) for f in subsets for k in ks]


def turns_commute(cfg: Any) -> bool:
    """Whether a quarter turn of the (Y, X) plane commutes with the network of config ``cfg``:
    it pools and convolves Y and X alike at every level. A network that does not (a pooling or
    kernel size that differs between Y and X) would see a turned input as another geometry, of
    another output shape, so test-time augmentation takes flips alone for it.

    Examples
    --------
    >>> from useg.nets.config import UNetConfig
    >>> turns_commute(UNetConfig(ndim=2, depth=2)), turns_commute(
    ...     UNetConfig(ndim=2, depth=2, pool=((1, 2), (2, 2))))
    (True, False)
    """
    if cfg.ndim < 2:
        return False
    return all(level[-1] == level[-2] for level in (*cfg.pools(), *cfg.kernels()))


def _flip(x: Any, dims: tuple[int, ...]) -> Any:
    if not dims:
        return x
    if isinstance(x, np.ndarray):
        return np.flip(x, dims)
    return x.flip(dims)


def _rot(x: Any, k: int, dims: tuple[int, int]) -> Any:
    k %= 4
    if k == 0:
        return x
    if isinstance(x, np.ndarray):
        return np.rot90(x, k, dims)
    import torch

    return torch.rot90(x, k, dims)


def apply(x: Any, t: Transform) -> Any:
    """Apply a transform to ``(B, C, *spatial)`` data."""
    flips, k = t
    nd = x.ndim - 2
    x = _flip(x, tuple(2 + a for a in flips))
    return _rot(x, k, (2 + nd - 2, 2 + nd - 1)) if k else x


def invert(x: Any, t: Transform) -> Any:
    """Undo :func:`apply` on an output laid out like its input."""
    flips, k = t
    nd = x.ndim - 2
    if k:
        x = _rot(x, -k, (2 + nd - 2, 2 + nd - 1))
    return _flip(x, tuple(2 + a for a in flips))


def with_tta(predictor: Callable[[Any], Any], ts: Sequence[Transform]) -> Callable[[Any], Any]:
    """Wrap a predictor so it returns the mean of its inverse-transformed outputs.

    Average probabilities, not logits, for the usual meaning of TTA: wrap a predictor whose
    output is already softmax-ed.

    Examples
    --------
    >>> f = with_tta(lambda x: x * 2, transforms(2))
    >>> x = np.random.default_rng(0).random((1, 1, 4, 4))
    >>> bool(np.allclose(f(x), 2 * x))
    True
    """

    def averaged(x: Any) -> Any:
        total = None
        for t in ts:
            y = invert(predictor(apply(x, t)), t)
            total = y if total is None else total + y
        return total / len(ts)

    return averaged


def unseen_by_training(header: Mapping[str, Any] | None) -> str | None:
    """Why the flipped and turned copies that TTA predicts would be new to a network, from its
    model file's header (the training configuration under ``provenance``), or None.

    A network trained without flips and without rotations has only seen its images one way
    round; averaging its predictions over copies it never saw can be worse than one plain
    prediction (bench/flyem_recipe.py's ``long-tta``). A header without a training configuration
    (a network not trained by useg, or built in code), or with one that training could not have
    written, says nothing, so neither does this.

    Examples
    --------
    >>> unseen_by_training({"provenance": {"config": {"augment": None}}})
    'was trained without augmentation'
    >>> unseen_by_training({"provenance": {"config": {"augment": {}}}}) is None
    True
    """
    provenance = header.get("provenance") if isinstance(header, Mapping) else None
    config = provenance.get("config") if isinstance(provenance, Mapping) else None
    if not isinstance(config, Mapping) or "augment" not in config:
        return None
    augment = config["augment"]
    if augment is None:
        return "was trained without augmentation"
    if not isinstance(augment, Mapping):
        return None
    # Training's own reading of the settings, so that an omitted one means its default there.
    from useg.errors import ConfigError
    from useg.training.augment import AugmentConfig

    try:
        settings = AugmentConfig.from_dict(augment)
        flips = float(settings.flip_probability) > 0 and settings.flip_axes != ()
    except (ConfigError, TypeError, ValueError):  # not a configuration training wrote
        return None
    if not flips and settings.rotate is False:
        return "was trained without flips or rotations"
    return None

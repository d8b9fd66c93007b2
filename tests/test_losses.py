"""Tests of useg.training.losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from useg.errors import ConfigError, InputError
from useg.training.losses import SegmentationLoss, soft_dice_loss, weighted_cross_entropy


def case(shape=(2, 3, 5, 6), seed=0, ignore_fraction=0.3):
    g = torch.Generator().manual_seed(seed)
    b, c, *s = shape
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (b, *s), generator=g)
    target[torch.rand((b, *s), generator=g) < ignore_fraction] = -1
    weights = torch.rand((b, *s), generator=g, dtype=torch.float64) * 5
    return logits, target, weights


def manual_ce(logits, target, weights):
    """Loops over pixels: -w log softmax, summed, divided by the labelled weight."""
    num = den = 0.0
    b, c = logits.shape[:2]
    flat_logits = logits.reshape(b, c, -1)
    flat_target = target.reshape(b, -1)
    flat_w = None if weights is None else weights.reshape(b, -1)
    for i in range(b):
        for p in range(flat_target.shape[1]):
            t = int(flat_target[i, p])
            if t == -1:
                continue
            z = flat_logits[i, :, p]
            logp = z[t] - math.log(sum(math.exp(v) for v in z.tolist()))
            w = 1.0 if flat_w is None else float(flat_w[i, p])
            num += -w * float(logp)
            den += w
    return num / den


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 3, 4, 5)])
def test_weighted_ce_matches_manual(shape):
    logits, target, weights = case(shape)
    got = weighted_cross_entropy(logits, target, weights)
    assert got.ndim == 0
    assert got.item() == pytest.approx(manual_ce(logits, target, weights), rel=1e-12)
    # with log_softmax and explicit masks
    lab = target != -1
    logp = F.log_softmax(logits, 1).gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    ref = -(weights * logp)[lab].sum() / weights[lab].sum()
    torch.testing.assert_close(got, ref)


def test_unweighted_ce_is_pytorch_mean_with_ignore():
    logits, target, _ = case()
    got = weighted_cross_entropy(logits, target)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, ignore_index=-1))
    assert got.item() == pytest.approx(manual_ce(logits, target, None), rel=1e-12)


def test_constant_weights_do_not_change_ce():
    logits, target, _ = case(seed=1)
    torch.testing.assert_close(
        weighted_cross_entropy(logits, target, torch.full(target.shape, 7.0, dtype=torch.float64)),
        weighted_cross_entropy(logits, target),
    )


def test_other_ignore_index():
    logits, target, weights = case(seed=2)
    moved = torch.where(target == -1, torch.full_like(target, 255), target)
    torch.testing.assert_close(
        weighted_cross_entropy(logits, moved, weights, ignore_index=255),
        weighted_cross_entropy(logits, target, weights),
    )


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_gradient_is_zero_on_ignored_pixels(dice_weight):
    logits, target, weights = case(seed=3)
    logits.requires_grad_(True)
    SegmentationLoss(dice_weight=dice_weight)(logits, target, weights).backward()
    grad = logits.grad
    ignored = (target == -1).unsqueeze(1).expand_as(grad)
    assert ignored.any()
    assert (grad[ignored] == 0).all()
    assert (grad[~ignored] != 0).any()


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_an_overflowed_ignored_pixel_gives_no_nan_gradient(dice_weight):
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 2] = float("inf")
    logits.requires_grad_(True)
    target = torch.tensor([[[0, 1, -1]]])
    loss = SegmentationLoss(dice_weight=dice_weight)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[0, :, 0, 2] == 0).all()


def test_zero_weight_pixels_get_no_gradient():
    logits, target, weights = case(seed=4, ignore_fraction=0.0)
    weights[:, :2] = 0
    logits.requires_grad_(True)
    weighted_cross_entropy(logits, target, weights).backward()
    assert (logits.grad[:, :, :2] == 0).all()


def test_fully_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), -1)
    for loss in (
        weighted_cross_entropy(logits, target, torch.rand(2, 4, 4)),
        weighted_cross_entropy(logits, target),
        soft_dice_loss(logits, target),
        SegmentationLoss(dice_weight=1.0)(logits, target),
    ):
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_soft_dice_matches_manual():
    logits, target, _ = case(seed=5)
    smooth = 1.0
    prob = torch.softmax(logits, 1)
    lab = target != -1
    dices = []
    for c in range(logits.shape[1]):
        p = prob[:, c][lab]
        t = (target[lab] == c).double()
        dices.append((2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth))
    ref = 1 - torch.stack(dices).mean()
    torch.testing.assert_close(soft_dice_loss(logits, target, smooth=smooth), ref)


def test_soft_dice_perfect_and_wrong():
    target = torch.tensor([[[0, 1, 1, 0]]])
    perfect = F.one_hot(target, 2).movedim(-1, 1).double() * 60 - 30
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-12)
    wrong = -perfect
    # Dice of each class = smooth / (4 + smooth) = 1/5
    assert soft_dice_loss(wrong, target).item() == pytest.approx(0.8, abs=1e-12)


def test_combined_loss():
    logits, target, weights = case(seed=6)
    loss = SegmentationLoss(dice_weight=0.5)
    expected = weighted_cross_entropy(logits, target, weights) + 0.5 * soft_dice_loss(
        logits, target
    )
    torch.testing.assert_close(loss(logits, target, weights), expected)
    torch.testing.assert_close(
        SegmentationLoss()(logits, target, weights), weighted_cross_entropy(logits, target, weights)
    )
    with pytest.raises(ConfigError):
        SegmentationLoss(dice_weight=-1)


def test_float32_half_inputs_give_float32():
    logits, target, weights = case(seed=7)
    out = weighted_cross_entropy(logits.half(), target, weights.float())
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(
        weighted_cross_entropy(logits, target, weights).item(), rel=1e-2
    )


def test_shape_checks():
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(InputError):
        weighted_cross_entropy(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(InputError):
        weighted_cross_entropy(logits, torch.zeros(2, 4, 4))
    with pytest.raises(InputError):
        weighted_cross_entropy(logits, torch.zeros(2, 4, 4, dtype=torch.long), torch.ones(2, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    logits, target, weights = case(seed=8)
    loss = SegmentationLoss(dice_weight=1.0)
    cpu = loss(logits, target, weights)
    gpu = loss(logits.cuda(), target.cuda(), weights.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu)

"""The fused pooling and crop of a level's output (nets.skip) against the two taken apart."""

import pytest
import torch

from useg.nets import UNet, skip
from useg.nets.skip import center_crop, pool_and_crop


def _both_ways(fn):
    out = []
    for fused in (True, False):
        skip.FUSED = fused
        try:
            out.append(fn())
        finally:
            skip.FUSED = True
    return out


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("shape", "kernel", "crop"), [
    ((2, 3, 13, 10), (2, 2), (6, 4)),          # odd size: the last row is never pooled
    ((1, 2, 9, 8, 12), (1, 2, 2), (5, 8, 7)),  # anisotropic pooling, uneven crop margins
    ((1, 2, 6, 6, 6), (2, 2, 2), (6, 6, 6)),   # crop of the whole level
    ((1, 2, 6, 6, 6), (2, 2, 2), None),        # no crop
])
def test_pool_and_crop_gives_the_same_values_and_gradients(shape, kernel, crop, relu):
    torch.manual_seed(0)
    x0 = torch.randn(shape, dtype=torch.float64)

    def run():
        x = x0.clone().requires_grad_()
        pre = x * 1.0  # a ReLU in place needs a non-leaf input
        pooled, cropped = pool_and_crop(pre, kernel, crop, relu=relu)
        assert skip.fuses(pre) == skip.FUSED
        (pooled.sin().sum() + cropped.cos().sum()).backward()
        return pooled.detach(), cropped.detach(), x.grad

    for a, b in zip(*_both_ways(run), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    pooled, cropped, grad = run()
    assert cropped.shape[2:] == (crop or shape[2:])
    if relu:
        assert pooled.min() >= 0 and cropped.min() >= 0
        assert (grad[x0 < 0] == 0).all() and (grad[x0 > 0] != 0).any()
    x = x0.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pool_and_crop(t * 1.0, kernel, crop, relu), (x,))


def test_one_output_unused_still_gets_its_zero_gradient():
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    pooled, _ = pool_and_crop(x, (2, 2), (4, 4))
    pooled.sum().backward()
    assert x.grad[0, 0].count_nonzero() == 16  # one per pooling window
    x.grad = None
    _, cropped = pool_and_crop(x, (2, 2), (4, 4))
    cropped.sum().backward()
    assert x.grad.sum() == 16 and x.grad[0, 0, 2:6, 2:6].sum() == 16


@pytest.mark.parametrize(("preset", "shape", "overrides"), [
    ("ronneberger2015", (1, 1, 44, 44), {}),
    ("ronneberger2015", (2, 1, 45, 47), {"padding": "same"}),
    ("cicek2016", (2, 1, 44, 44, 44), {}),
    ("cicek2016", (1, 1, 12, 20, 20), {"padding": "same", "pool": ((1, 2, 2), (2, 2, 2))}),
])
def test_a_unet_trains_to_the_same_gradients_fused_or_not(preset, shape, overrides):
    torch.manual_seed(3)
    net = UNet(preset, width=4, depth=2, dropout=0.0, **overrides).train()
    x = torch.randn(shape)

    def run():
        net.zero_grad()
        y = net(x)
        y.square().mean().backward()
        return [y.detach()] + [p.grad.clone() for p in net.parameters()]

    for a, b in zip(*_both_ways(run), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_prediction_and_tracing_keep_the_standard_operators():
    net = UNet("ronneberger2015", width=4, depth=2).eval()
    x = torch.randn(1, 1, 44, 44, requires_grad=True)
    assert not skip.fuses(x.detach())
    with torch.no_grad():
        assert not skip.fuses(x)
    traced = torch.jit.trace(net, x)
    assert "PythonOp" not in str(traced.graph)


def test_center_crop_of_the_whole_tensor_is_the_tensor():
    x = torch.randn(1, 2, 5, 6)
    assert center_crop(x, (5, 6)) is x
    assert center_crop(x, (3, 4)).shape == (1, 2, 3, 4)
    torch.testing.assert_close(center_crop(x, (3, 4)), x[:, :, 1:4, 1:5])

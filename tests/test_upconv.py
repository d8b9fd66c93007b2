import pytest
import torch
from torch import nn

import useg.nets.upconv as upconv
from useg.nets.upconv import ConvTranspose2d, ConvTranspose3d, uses_product


@pytest.mark.parametrize(("module", "shape", "kernel"), [
    (ConvTranspose2d, (1, 6, 5, 7), (2, 2)),
    (ConvTranspose2d, (2, 3, 4, 3), (2, 3)),          # batch of two, uneven kernel
    (ConvTranspose3d, (1, 4, 3, 5, 4), (2, 2, 2)),
    (ConvTranspose3d, (2, 5, 3, 4, 2), (1, 2, 2)),    # anisotropic pooling
])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_training_pass_matches_pytorch(module, shape, kernel, bias, channels_last):
    torch.manual_seed(0)
    mine = module(shape[1], 3, kernel, stride=kernel, bias=bias)
    ref = (nn.ConvTranspose3d if module is ConvTranspose3d else nn.ConvTranspose2d)(
        shape[1], 3, kernel, stride=kernel, bias=bias)
    ref.load_state_dict(mine.state_dict())
    layout = torch.channels_last_3d if len(kernel) == 3 else torch.channels_last
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=layout)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    assert uses_product(mine, xa)
    ya, yb = mine(xa), ref(xb)
    assert ya.is_contiguous(memory_format=layout)
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad)
    if bias:
        torch.testing.assert_close(mine.bias.grad, ref.bias.grad)


def test_gradients_are_exact_in_double_precision():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upconv._UpByProduct.apply, (x, w, b))


def test_pytorchs_kernels_where_the_product_does_not_apply():
    up = ConvTranspose2d(4, 2, 2, stride=2)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    with torch.no_grad():
        assert not uses_product(up, x)                          # prediction
    assert not uses_product(ConvTranspose2d(4, 2, 3, stride=2), x)  # overlapping taps
    assert not uses_product(up, x.double())
    upconv.PRODUCT = False
    try:
        assert not uses_product(up, x)
    finally:
        upconv.PRODUCT = True
    assert uses_product(up, x)


def test_tracing_records_pytorchs_transposed_convolution():
    up = ConvTranspose3d(2, 3, 2, stride=2)
    traced = torch.jit.trace(up, torch.randn(1, 2, 3, 3, 3, requires_grad=True))
    assert "PythonOp" not in str(traced.graph)


@pytest.mark.parametrize(("preset", "shape"), [
    ("ronneberger2015", (1, 1, 44, 44)),
    ("cicek2016", (2, 1, 20, 20, 20)),
])
def test_a_unet_trains_to_the_same_gradients_either_way(preset, shape):
    from useg.nets import UNet

    torch.manual_seed(3)
    overrides = {"width": 4, "depth": 2, "dropout": 0.0}  # dropout would differ per pass
    if preset == "cicek2016":
        overrides["padding"] = "same"
    net = UNet(preset, **overrides).train()
    x = torch.randn(shape)
    grads = []
    for product in (True, False):
        upconv.PRODUCT = product
        try:
            net.zero_grad()
            net(x).square().mean().backward()
        finally:
            upconv.PRODUCT = True
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

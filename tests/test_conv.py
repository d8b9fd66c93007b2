"""useg.nets.conv: oneDNN convolutions where PyTorch would take slower kernels, same results."""

import pytest
import torch
from torch import nn

import useg.nets.conv as conv
from useg.nets.conv import Conv2d, Conv3d, uses_onednn_kernel


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("cls", "shape", "padding"), [
    (Conv3d, (1, 6, 14, 15, 13), 1),   # small: PyTorch's reference kernel
    (Conv3d, (1, 3, 12, 11, 10), 0),   # valid convolution
    (Conv3d, (2, 4, 9, 10, 11), 1),    # a batch of two: the weight gradient sums over it
    (Conv2d, (1, 5, 30, 29), 1),
    (Conv2d, (1, 2, 17, 16), 0),
])
def test_forward_and_gradients_equal_pytorchs(cls, shape, padding, channels_last):
    torch.manual_seed(0)
    mine = cls(shape[1], 7, 3, padding=padding)
    ref = getattr(nn, cls.__name__)(shape[1], 7, 3, padding=padding)
    ref.load_state_dict(mine.state_dict())
    layout = torch.contiguous_format
    if channels_last:  # as useg trains: activations and gradients channels-last
        layout = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    assert uses_onednn_kernel(mine, x)
    y, y_ref = mine(x), ref(x_ref)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)
    # The input gradient comes back in the input's layout (no conversion in the layer below;
    # a leaf's .grad would be laid out like the leaf whatever the layer returned).
    seen = []
    h = x.detach().clone().requires_grad_(True) * 1.0
    h.register_hook(seen.append)
    mine(h).backward(g)
    assert seen[0].is_contiguous(memory_format=layout)


def test_only_where_it_applies():
    c = Conv3d(4, 4, 3, padding=1)
    small = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        assert uses_onednn_kernel(c, small)  # PyTorch would take its reference kernel
        assert not uses_onednn_kernel(c, torch.randn(1, 4, 80, 80, 8))  # PyTorch's is oneDNN
        assert not uses_onednn_kernel(c, small.double())
    assert not uses_onednn_kernel(Conv3d(4, 4, 3, stride=2), small)
    assert not uses_onednn_kernel(Conv3d(4, 4, 3, groups=2), small)
    assert not uses_onednn_kernel(Conv3d(4, 4, 3, padding=3), small)
    assert not uses_onednn_kernel(Conv3d(4, 4, 3, padding=1, padding_mode="reflect"), small)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn_kernel(c, small)
    conv.DIRECT = False
    try:
        assert not uses_onednn_kernel(c, small)
    finally:
        conv.DIRECT = True


def test_tracing_records_pytorchs_convolution():
    # Exported networks (TorchScript, ONNX) must hold the standard operator, not a Python one.
    c = Conv3d(2, 3, 3, padding=1).eval()
    traced = torch.jit.trace(c, torch.randn(1, 2, 6, 6, 6))
    assert "PythonOp" not in str(traced.graph)
    assert "_convolution" in str(traced.graph) or "conv3d" in str(traced.graph)


@pytest.mark.parametrize(("shape", "kernel", "padding"), [
    ((1, 3, 7, 9, 11), (3, 3, 3), (0, 0, 0)),
    ((2, 4, 6, 8, 5), (3, 3, 3), (1, 1, 1)),   # batch of two, same padding
    ((2, 5, 13, 10), (3, 3), (1, 1)),         # 2D
    ((1, 2, 9, 8, 7), (2, 3, 1), (1, 0, 0)),   # uneven kernel
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_gradient_by_offsets_is_the_weight_gradient(shape, kernel, padding,
                                                           channels_last):
    torch.manual_seed(1)
    nd = len(kernel)
    layout = torch.contiguous_format
    if channels_last:
        layout = torch.channels_last if nd == 2 else torch.channels_last_3d
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=layout)
    w = torch.randn(6, shape[1], *kernel, dtype=torch.float64, requires_grad=True)
    y = (nn.functional.conv3d if nd == 3 else nn.functional.conv2d)(x, w, padding=padding)
    g = torch.randn_like(y)
    y.backward(g)
    mine = conv._weight_grad_by_offsets(x, g, kernel, padding)
    torch.testing.assert_close(mine, w.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("shape", "channels_out"), [
    ((2, 1, 9, 7, 6), 3),    # one input channel: gathered offsets, batch of two
    ((1, 6, 9, 7, 6), 4),    # one product per offset
    ((2, 6, 11, 9), 5),      # 2D
])
def test_weight_gradient_by_offsets_over_many_slabs_and_blocks(monkeypatch, shape,
                                                               channels_out):
    """Slabs of planes, blocks of rows and the last, shorter slab all add up to the gradient."""
    monkeypatch.setattr(conv, "_SLAB_ROWS", 70)
    monkeypatch.setattr(conv, "_BLOCK_ROWS", 23)
    monkeypatch.setattr(conv, "_IM2COL_ROWS", 31)
    torch.manual_seed(3)
    nd = len(shape) - 2
    kernel, padding = (3,) * nd, (1,) + (0,) * (nd - 1)
    x = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(channels_out, shape[1], *kernel, dtype=torch.float64, requires_grad=True)
    y = (nn.functional.conv3d if nd == 3 else nn.functional.conv2d)(x, w, padding=padding)
    g = torch.randn_like(y)
    y.backward(g)
    mine = conv._weight_grad_by_offsets(x, g, kernel, padding)
    torch.testing.assert_close(mine, w.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("module", "shape", "kernel", "pays"), [
    # The top level of a 3D U-Net: 32 -> 32 channels over 52^3 outputs.
    (Conv3d, (1, 32, 54, 54, 54), (3, 3, 3), True),
    # The top level of a 2D U-Net (narrowed): 8 -> 8 channels over 190^2 outputs.
    (Conv2d, (1, 8, 192, 192), (3, 3), True),
    # A 1x1 head is one matrix product, whatever its size.
    (Conv2d, (1, 8, 20, 20), (1, 1), True),
    (Conv3d, (1, 8, 6, 6, 6), (1, 1, 1), True),
    # The first layer of a gray volume's network: one input channel over 52^3 outputs.
    (Conv3d, (1, 1, 54, 54, 54), (3, 3, 3), True),
    # Small layers keep the swapped convolution.
    (Conv2d, (1, 8, 40, 40), (3, 3), False),
    (Conv3d, (1, 8, 20, 20, 20), (3, 3, 3), False),
])
def test_weight_gradient_takes_the_way_that_pays_and_matches_pytorch(module, shape, kernel,
                                                                    pays):
    torch.manual_seed(2)
    mine = module(shape[1], shape[1], kernel)
    ref = (nn.Conv3d if module is Conv3d else nn.Conv2d)(shape[1], shape[1], kernel)
    ref.load_state_dict(mine.state_dict())
    layout = torch.channels_last_3d if module is Conv3d else torch.channels_last
    x = torch.randn(shape).contiguous(memory_format=layout)
    y = mine(x.requires_grad_(True))
    assert conv._weight_grad_by_offsets_pays(x, y, kernel) is pays
    g = torch.randn_like(y)
    y.backward(g)
    ref(x.detach()).backward(g)
    torch.testing.assert_close(mine.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(mine.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-2)

"""Convolutions that keep to oneDNN on the CPU where PyTorch would leave it.

PyTorch chooses the kernel of a float32 convolution on the CPU by a size rule: with one image
in the batch and ``batch x channels x`` the first two spatial sizes at most 20,480, it takes its
reference kernels (``slow_conv3d``, ``slow_conv2d``: im2col and a matrix product) rather than
oneDNN's. A 3D U-Net meets that rule in every layer of a narrow network (8 channels on a 44^3
tile) and in the deep levels of any network, where tiles are small; there the reference
kernels ran an order of magnitude slower than oneDNN's on the same convolution. And its
backward of a 3D convolution was slow even where the forward was oneDNN's.
:class:`Conv2d` and :class:`Conv3d` are ``nn.Conv2d``/``nn.Conv3d`` (same parameters, same
state dict) that call oneDNN directly in those cases (:func:`uses_onednn_kernel`), with a
backward pass made of oneDNN convolutions too (the input gradient is the convolution of the
output gradient with the flipped, transposed kernel; the weight gradient the convolution of
the input with the output gradient, batch and channels swapped, or, for large layers and 1x1
kernels, one matrix product per kernel offset over the flat channels-last grid). Elsewhere,
and while a network is traced or exported, they are PyTorch's convolutions unchanged.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

__all__ = ["Conv2d", "Conv3d", "memory_format", "uses_onednn_kernel"]

# PyTorch's rule (aten/src/ATen/native/Convolution.cpp, use_mkldnn): below this product of the
# first four sizes of a single-image batch its reference kernels are used.
_REFERENCE_BELOW = 20480

#: False turns the direct path off everywhere (PyTorch's own choice of kernel), to compare.
DIRECT = True
#: False computes every weight gradient by the swapped convolution, to compare.
WEIGHT_GRAD_BY_OFFSETS = True


def memory_format(ndim: int) -> torch.memory_format:
    """The memory format activations of an ``ndim``-D network run fastest in (channels last)."""
    return {2: torch.channels_last, 3: torch.channels_last_3d}.get(ndim, torch.contiguous_format)


def eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 2D or 3D float32 CPU batch in an eager pass that useg's own kernels
    may take over: not under autocast, and not while a network is traced, scripted or exported
    (exported networks must hold PyTorch's standard operators)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() in (4, 5)
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


def uses_onednn_kernel(conv: nn.modules.conv._ConvNd, x: torch.Tensor) -> bool:
    """Whether :class:`Conv2d`/:class:`Conv3d` take the direct oneDNN path for input ``x``.

    A float32 CPU convolution (stride 1, undilated, ungrouped, zero padding) takes it when a
    gradient is needed, for oneDNN's backward through this module, and otherwise where PyTorch
    would give it to its reference kernels; elsewhere oneDNN's forward is what PyTorch calls
    anyway.
    """
    if not (
        DIRECT
        and eager_cpu_float32(x)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and all(s == 1 for s in conv.stride)
        and all(d == 1 for d in conv.dilation)
        # The input gradient pads by kernel - 1 - padding, which must not be negative.
        and all(p < k for p, k in zip(conv.padding, conv.kernel_size, strict=True))
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    ):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return True
    return x.shape[0] == 1 and math.prod(x.shape[:4]) <= _REFERENCE_BELOW


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            padding: tuple[int, ...]) -> torch.Tensor:
    ones = (1,) * len(padding)
    return torch.mkldnn_convolution(x, weight, bias, padding, ones, ones, 1)


class _OneDNNConvolution(torch.autograd.Function):
    """A stride-1, undilated, ungrouped convolution whose forward and backward are oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # noqa: ANN001, ANN205 (autograd signature)
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_gradient(grad, weight, ctx.padding, x)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_gradient(x, grad, weight.shape[2:], ctx.padding)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, *range(2, weight.dim())))
        return grad_x, grad_w, grad_b, None


def _input_gradient(grad: torch.Tensor, weight: torch.Tensor, padding: tuple[int, ...],
                    x: torch.Tensor) -> torch.Tensor:
    """The input gradient: the output gradient convolved with the flipped, transposed kernel,
    in the layout of the forward's input ``x`` (so the layers below need no conversion)."""
    last = memory_format(x.dim() - 2)
    layout = last if x.is_contiguous(memory_format=last) else torch.contiguous_format
    flipped = weight.transpose(0, 1).flip(tuple(range(2, weight.dim()))).contiguous()
    full = tuple(k - 1 - p for k, p in zip(weight.shape[2:], padding, strict=True))
    return _onednn(grad.contiguous(memory_format=layout), flipped, None, full)


def _weight_gradient(x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, ...],
                     padding: tuple[int, ...]) -> torch.Tensor:
    """The weight gradient, by whichever of the two ways pays for these shapes."""
    if _weight_grad_by_offsets_pays(x, grad, kernel):
        return _weight_grad_by_offsets(x, grad, kernel, padding)
    return _weight_grad_swapped(x, grad, padding)


def _weight_grad_swapped(x: torch.Tensor, grad: torch.Tensor,
                         padding: tuple[int, ...]) -> torch.Tensor:
    """The weight gradient as a convolution with batch and channels swapped: the output
    gradient is the kernel; its output is the kernel-sized gradient, summed over the batch (now
    the channels)."""
    g = grad.contiguous()
    return _onednn(x.transpose(0, 1).contiguous(), g.transpose(0, 1).contiguous(), None,
                   padding).transpose(0, 1)


# Rows of the flat grid per matrix product in _weight_grad_by_offsets: a block of the output
# gradient is reused by every kernel offset while it is in the cache. With one input channel
# each offset's product is a matrix times a vector; for a kernel of at least _GATHER_OFFSETS
# offsets (3x3x3) the offsets' rows are gathered instead (a small im2col, in longer blocks) and
# multiplied once, which measured faster there and slower for a 3x3 kernel.
_BLOCK_ROWS = 8192
_IM2COL_ROWS = 32768
_GATHER_OFFSETS = 27
# Rows of the flat grid whose output gradient is laid out at a time (whole planes of the
# first spatial axis; at least one).
_SLAB_ROWS = 65536


def _weight_grad_by_offsets_pays(x: torch.Tensor, grad: torch.Tensor,
                                 kernel: tuple[int, ...]) -> bool:
    """Whether :func:`_weight_grad_by_offsets` beats the batch/channel-swapped convolution.

    Measured layer by layer on the paper networks' training tiles on a 2-core AVX2 CPU (one
    image; ``bench/train_step.py --layers``, which times both ways for every layer):

    * a 1x1 kernel: always; it is a single matrix product, while the swapped convolution meets
      oneDNN with a kernel as large as the image;
    * 2D: over large images (the top two levels of the 2D U-Net, where the swapped convolution
      took up to twice as long); below, the two were within a few percent either way;
    * 3D: over large volumes with many channel pairs (the top levels of the 3D U-Net), or with
      one input channel (the first layer of a gray image's network, where the swapped
      convolution also copies the output gradient to another layout); slower for small
      volumes, or for few channel pairs (three input channels among them), where oneDNN's
      convolution does well.
    """
    if not WEIGHT_GRAD_BY_OFFSETS:
        return False
    if math.prod(kernel) == 1:
        return True
    outputs = math.prod(grad.shape[2:])
    if x.dim() == 4:
        return outputs >= 1 << 15
    many_pairs = x.shape[1] * grad.shape[1] >= 1024
    return (many_pairs or x.shape[1] == 1) and outputs >= 1 << 17


def _weight_grad_by_offsets(x: torch.Tensor, grad: torch.Tensor, kernel: tuple[int, ...],
                            padding: tuple[int, ...]) -> torch.Tensor:
    """The weight gradient of a stride-1 convolution, one matrix product per kernel offset.

    ``dW[:, :, k] = sum_o grad[o]^T x[o + k]`` over the output positions ``o``. On the flat,
    channels-last grid of the (zero-padded) input, the output gradient laid out at the output
    positions (zeros elsewhere, which also covers the rows that wrap into the next line or
    slice) and the input shifted by the flat offset of ``k`` are two contiguous row ranges, so
    each offset is a matrix product without copying the input (unlike the swapped convolution,
    which transposes both tensors and meets oneDNN with a kernel as large as the volume). The
    output gradient is laid out a slab of planes at a time, into one small buffer whose padding
    stays zero: no tensor of the input's size is allocated, filled and faulted in.
    """
    nd = len(kernel)
    channels_in, channels_out = x.shape[1], grad.shape[1]
    last = (0, *range(2, nd + 2), 1)
    if any(padding):
        x = torch.nn.functional.pad(x, [q for p in reversed(padding) for q in (p, p)])
    images = x.permute(last).contiguous()  # no copy for a channels-last input
    grads = grad.permute(last)
    grid, outputs = images.shape[1:-1], grad.shape[2:]
    strides = [math.prod(grid[a + 1:]) for a in range(nd)]
    shifts = [sum(i * st for i, st in zip(k, strides, strict=True))
              for k in itertools.product(*(range(n) for n in kernel))]
    plane = strides[0]
    planes = max(1, _SLAB_ROWS // plane)
    # Rows of a slab's last plane up to its last output position: no shifted range beyond it
    # leaves the input.
    tail = sum((o - 1) * st for o, st in zip(outputs[1:], strides[1:], strict=True)) + 1
    laid = grad.new_zeros(min(planes, outputs[0]), *grid[1:], channels_out)
    inner = tuple(slice(0, o) for o in outputs[1:])
    few = channels_in == 1 and len(shifts) >= _GATHER_OFFSETS
    if few:
        total = grad.new_zeros(channels_out, len(shifts) * channels_in)
        gathered = grad.new_empty(len(shifts) * channels_in, _IM2COL_ROWS)
    else:
        total = grad.new_zeros(len(shifts), channels_out, channels_in)
    for image, image_grad in zip(images, grads, strict=True):
        rows = image.reshape(-1, channels_in)
        for first in range(0, outputs[0], planes):
            count = min(planes, outputs[0] - first)
            laid[(slice(0, count), *inner)].copy_(image_grad[first:first + count])
            used = (count - 1) * plane + tail
            flat = laid.view(-1, channels_out)
            base = first * plane
            step = _IM2COL_ROWS if few else _BLOCK_ROWS
            for start in range(0, used, step):
                stop = min(used, start + step)
                block, lo, hi = flat[start:stop].T, base + start, base + stop
                if few:
                    _gathered_product(total, block, rows, lo, hi, shifts, gathered)
                else:
                    for i, shift in enumerate(shifts):
                        total[i].addmm_(block, rows[lo + shift:hi + shift])
    if few:
        total = total.view(channels_out, len(shifts), channels_in).transpose(0, 1)
    return total.permute(1, 2, 0).reshape(channels_out, channels_in, *kernel)


def _gathered_product(total: torch.Tensor, block: torch.Tensor, rows: torch.Tensor, lo: int,
                      hi: int, shifts: list[int], gathered: torch.Tensor) -> None:
    """Add ``block`` times the input rows ``lo:hi`` at every shift, gathered side by side into
    ``gathered`` (offsets x channels rows), to ``total`` (output channels x offsets x channels):
    one matrix product instead of one thin product per offset."""
    channels, n = rows.shape[1], hi - lo
    for i, shift in enumerate(shifts):
        gathered[i * channels:(i + 1) * channels, :n].copy_(rows[lo + shift:hi + shift].T)
    total.addmm_(block, gathered[:, :n].T)


class _OneDNNWhereSlow:
    """The forward of :class:`Conv2d` and :class:`Conv3d`."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002, ANN001, ANN202 (nn's names)
        if uses_onednn_kernel(self, input):
            return _OneDNNConvolution.apply(input, weight, bias, tuple(self.padding))
        return super()._conv_forward(input, weight, bias)


class Conv2d(_OneDNNWhereSlow, nn.Conv2d):
    """``nn.Conv2d`` that keeps to oneDNN on the CPU (see the module's description)."""


class Conv3d(_OneDNNWhereSlow, nn.Conv3d):
    """``nn.Conv3d`` that keeps to oneDNN on the CPU (see the module's description)."""

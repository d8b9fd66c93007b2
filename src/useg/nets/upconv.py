"""Up-convolutions whose training pass on the CPU is one matrix product each way.

A U-Net's up-convolution is a transposed convolution whose stride equals its kernel: every
output position receives exactly one kernel tap of every input channel, so the whole layer is
the product of the input (one row per position, channels in the columns) with the kernel laid
out as ``in_channels x (kernel taps x out_channels)``, followed by interleaving the taps into
the larger grid. Its gradients are products too: the input gradient is the regrouped output
gradient times the kernel's transpose, the weight gradient the input's transpose times the
regrouped output gradient. PyTorch's CPU backward of a transposed convolution is a general
one that does not know about this structure.

:class:`ConvTranspose2d` and :class:`ConvTranspose3d` are ``nn``'s (same parameters, same
state dict) that take this path in float32 training on the CPU (:func:`uses_product`) and are
PyTorch's transposed convolutions everywhere else: prediction, other devices and precisions,
other strides or paddings, and while a network is traced or exported.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from useg.nets.conv import eager_cpu_float32

__all__ = ["ConvTranspose2d", "ConvTranspose3d", "uses_product"]

#: False turns the product path off everywhere (PyTorch's own kernels), to compare.
PRODUCT = True


def uses_product(up: nn.modules.conv._ConvTransposeNd, x: torch.Tensor) -> bool:
    """Whether :class:`ConvTranspose2d`/:class:`ConvTranspose3d` compute input ``x`` as a
    matrix product: a float32 CPU up-convolution (stride equal to the kernel, no padding,
    undilated, ungrouped) in a pass that needs a gradient."""
    return (
        PRODUCT
        and eager_cpu_float32(x)
        and torch.is_grad_enabled()
        and (x.requires_grad or up.weight.requires_grad)
        and tuple(up.stride) == tuple(up.kernel_size)
        and not any(up.padding)
        and not any(up.output_padding)
        and all(d == 1 for d in up.dilation)
        and up.groups == 1
        and up.padding_mode == "zeros"
    )


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as one row per batch and position, channels in the columns (no copy if ``x`` is
    channels-last)."""
    return x.permute(0, *range(2, x.dim()), 1).reshape(-1, x.shape[1])


def _taps_first(weight: torch.Tensor) -> torch.Tensor:
    """The ``in x out x kernel`` weight as ``in x (kernel taps x out)``."""
    return weight.permute(0, *range(2, weight.dim()), 1).reshape(weight.shape[0], -1)


def _interleaved(nd: int) -> list[int]:
    """The order that takes the axes ``(batch, *grid, *taps, channels)`` of a product's result
    to ``(batch, grid_0, tap_0, grid_1, tap_1, ..., channels)``, the channels-last output."""
    order = [0]
    for axis in range(nd):
        order += [1 + axis, 1 + nd + axis]
    return order + [1 + 2 * nd]


class _UpByProduct(torch.autograd.Function):
    """A stride = kernel transposed convolution, forward and backward as matrix products."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # noqa: ANN001, ANN205 (autograd signature)
        kernel = tuple(weight.shape[2:])
        grid = tuple(x.shape[2:])
        channels_out = weight.shape[1]
        rows = _rows(x)
        taps = _taps_first(weight)
        if bias is None:
            product = rows @ taps
        else:
            product = torch.addmm(bias.repeat(math.prod(kernel)), rows, taps)
        split = (x.shape[0], *grid, *kernel, channels_out)
        out_shape = (x.shape[0], *(g * k for g, k in zip(grid, kernel, strict=True)),
                     channels_out)
        out = product.view(split).permute(_interleaved(len(kernel))).reshape(out_shape)
        ctx.save_for_backward(rows, taps)
        ctx.shapes = (tuple(x.shape), tuple(weight.shape))
        ctx.has_bias = bias is not None
        return out.permute(0, -1, *range(1, len(grid) + 1))  # channels-last

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        rows, taps = ctx.saved_tensors
        x_shape, w_shape = ctx.shapes
        kernel, grid = w_shape[2:], x_shape[2:]
        nd = len(kernel)
        channels_out = w_shape[1]
        # The output gradient regrouped as one row per input position, its taps beside each
        # other: the inverse of the forward's interleaving.
        last = grad.permute(0, *range(2, grad.dim()), 1)
        split = [x_shape[0]]
        for g, k in zip(grid, kernel, strict=True):
            split += [g, k]
        order = [0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1]
        regrouped = last.reshape(*split, channels_out).permute(order).reshape(rows.shape[0], -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (regrouped @ taps.T).view(x_shape[0], *grid, x_shape[1])
            grad_x = grad_x.permute(0, -1, *range(1, nd + 1))
        if ctx.needs_input_grad[1]:
            grad_w = (rows.T @ regrouped).view(w_shape[0], *kernel, channels_out)
            grad_w = grad_w.permute(0, -1, *range(1, nd + 1)).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = regrouped.view(-1, channels_out).sum(0)
        return grad_x, grad_w, grad_b


class _ProductInTraining:
    """The forward of :class:`ConvTranspose2d` and :class:`ConvTranspose3d`."""

    def forward(self, input: torch.Tensor,  # noqa: A002 (nn's name)
                output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is None and uses_product(self, input):
            return _UpByProduct.apply(input, self.weight, self.bias)
        return super().forward(input, output_size)


class ConvTranspose2d(_ProductInTraining, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose CPU training pass is a matrix product (see the module)."""


class ConvTranspose3d(_ProductInTraining, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose CPU training pass is a matrix product (see the module)."""

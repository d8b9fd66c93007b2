"""A contracting level's output, pooled for the level below and cropped for the skip connection.

A U-Net uses the output of every contracting level twice: max-pooled, as the next level's
input, and centre-cropped, to be concatenated in the expanding path. Taken apart, the backward
pass builds two gradients of the full level: the pooling's (zeros, then one value per pooling
window) and the crop's (zeros, then the crop copied into its centre), and autograd then adds
them; on a large 3D level those fills, the sum and the first touch of their fresh memory cost
as much as a convolution's gradient of a small layer; the level's last ReLU then makes a third
(its backward is not in place). :func:`pool_and_crop` is one autograd operation for the ReLU,
the pooling and the crop with one gradient buffer: the pooling's gradient, the crop's added into
its centre in place, and the ReLU's backward applied to it in place. The forward results are
those of ``relu_``, ``max_pool`` and a slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["center_crop", "crop_box", "fuses", "pool_and_crop"]

#: False makes :func:`fuses` always False (the ReLU, the pooling and the slice apart), to compare.
FUSED = True

_POOL_BACKWARD = {
    2: torch.ops.aten.max_pool2d_with_indices_backward,
    3: torch.ops.aten.max_pool3d_with_indices_backward,
}


def crop_box(have: Sequence[int], want: Sequence[int]) -> tuple[slice, ...]:
    """Index of the centred ``want``-sized crop of a ``(batch, channel, *have)`` tensor."""
    box = [slice(None), slice(None)]
    for h, w in zip(have, want, strict=True):
        start = (h - w) // 2
        box.append(slice(start, start + w))
    return tuple(box)


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (batch, channel first) to ``shape`` around the centre."""
    if not torch.jit.is_tracing() and tuple(x.shape[2:]) == tuple(shape):
        # No slice: its backward would build a zero-filled copy of the whole gradient. A traced
        # network keeps the slice, whose bounds then follow the input's size.
        return x
    return x[crop_box(x.shape[2:], shape)]


def fuses(x: torch.Tensor) -> bool:
    """Whether :func:`pool_and_crop` takes the fused path for ``x``: a 2D or 3D batch in an
    eager pass that needs its gradient (traced, scripted and exported networks keep PyTorch's
    standard operators)."""
    return (
        FUSED
        and x.dim() in (4, 5)
        and torch.is_grad_enabled()
        and x.requires_grad
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.onnx.is_in_onnx_export()
    )


class _PoolAndCrop(torch.autograd.Function):
    """ReLU (optional, in place), max-pooling and centre crop of one tensor, one gradient buffer."""

    @staticmethod
    def forward(ctx, x, kernel, box, relu):
        if relu:
            # In place, as nn.ReLU(inplace=True) would: x is a normalisation's or a
            # convolution's output, which neither needs for its backward.
            x.relu_()
            ctx.mark_dirty(x)
        pooled, indices = F.max_pool2d(x, kernel, return_indices=True) if x.dim() == 4 else \
            F.max_pool3d(x, kernel, return_indices=True)
        ctx.save_for_backward(x, indices)
        ctx.kernel, ctx.box, ctx.relu = kernel, box, relu
        ctx.whole = all(b.stop - b.start == n for b, n in zip(box[2:], x.shape[2:], strict=True))
        ctx.set_materialize_grads(False)
        if ctx.whole:
            return pooled, x
        if relu:
            # A tensor changed in place must be an output itself, so the crop cannot be a view
            # of it; the crop is a small part of the level, the copy cheap.
            return pooled, x[box].clone(), x
        return pooled, x[box]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled, grad_cropped, grad_whole=None):
        x, indices = ctx.saved_tensors
        k = list(ctx.kernel)
        if grad_pooled is None:
            grad = torch.zeros_like(x)
        else:
            # The pooling's own backward: one fresh buffer, zeros except one value per window.
            grad = _POOL_BACKWARD[x.dim() - 2](
                grad_pooled, x, k, k, [0] * len(k), [1] * len(k), False, indices
            )
        if grad_cropped is not None:
            (grad if ctx.whole else grad[ctx.box]).add_(grad_cropped)
        if grad_whole is not None:
            grad.add_(grad_whole)
        if ctx.relu:
            # ReLU's backward written into the buffer this function owns, instead of a new one.
            torch.ops.aten.threshold_backward.grad_input(grad, x, 0.0, grad_input=grad)
        return grad, None, None, None


def pool_and_crop(
    x: torch.Tensor, kernel: Sequence[int], crop: Sequence[int] | None, relu: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` max-pooled (kernel and stride ``kernel``) and centre-cropped to ``crop`` (None:
    not cropped); with ``relu``, of ``x`` after a ReLU applied in place.

    The same results as ``max_poolNd(x, kernel)`` and ``x[crop_box(...)]``; where
    :func:`fuses` holds, one autograd operation whose backward fills one gradient buffer (and
    applies the ReLU's backward to it in place).
    """
    kernel = tuple(int(k) for k in kernel)
    if fuses(x):
        box = crop_box(x.shape[2:], x.shape[2:] if crop is None else crop)
        return _PoolAndCrop.apply(x, kernel, box, relu)[:2]
    if relu:
        x = F.relu(x, inplace=True)
    pool = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[x.dim()]
    return pool(x, kernel), x if crop is None else center_crop(x, crop)

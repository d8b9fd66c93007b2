"""The inference forward pass of a :class:`~useg.nets.unet.UNet`: the same operations as
``model(x)``, with fewer activations alive at once and batch norm folded into the convolutions.

Prediction (:func:`useg.inference.predict.make_predictor`) runs it; its memory is modelled by
:func:`useg.nets.geometry.peak_bytes`, which the choice of the tile relies on.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from useg.nets.conv import memory_format
from useg.nets.geometry import forward_shapes
from useg.nets.unet import UNet

__all__ = ["inference_forward", "inference_layers", "memory_format", "up_into"]


def inference_layers(model: UNet) -> tuple[list[list], list[list]]:
    """The layers of every convolution block of the contracting and expanding paths, with each
    batch normalisation that uses running statistics (in eval mode) folded into the convolution
    before it: one pass over the activations less per layer and, under bf16 autocast, no casts
    to float32 and back (batch norm runs in float32). Identity layers are dropped."""
    fmt = memory_format(model.config.ndim)

    def fold(block) -> list:
        layers: list = []
        for layer in block:
            prev = layers[-1] if layers else None
            if (isinstance(layer, nn.modules.batchnorm._BatchNorm) and not layer.training
                    and layer.running_mean is not None
                    and isinstance(prev, nn.modules.conv._ConvNd) and not prev.training):
                layers[-1] = fuse_conv_bn_eval(prev, layer).to(memory_format=fmt)
            elif not isinstance(layer, nn.Identity):
                layers.append(layer)
        return layers

    return ([fold(model.inc), *(fold(d.conv) for d in model.downs)],
            [fold(u.conv) for u in model.ups])


def inference_forward(model: UNet, x: torch.Tensor, layers: tuple | None = None) -> torch.Tensor:
    """``model(x)`` with the same operations but fewer activations alive at once.

    Each skip connection is cropped to what the expanding path uses as soon as it has been
    pooled, every tensor is released once consumed, and each concatenation is written in place,
    skip first, so that the skip is gone before the up-convolution runs. For the 2D U-Net's
    1,212 tile this lowers the peak from 1.8 to 1.0 GB. ``layers`` are the blocks' layers from
    :func:`inference_layers` (the model's own when omitted).
    """
    cfg = model.config
    fmt = memory_format(cfg.ndim)
    if layers is None:
        layers = ([model.inc, *(d.conv for d in model.downs)], [u.conv for u in model.ups])
    _, up = forward_shapes(cfg, x.shape[2:])
    skips = []
    for level, block in enumerate(layers[0]):
        for layer in block:
            x = layer(x)
        if level == cfg.depth:
            break
        # Max pooling is exact in any precision, but autocast would run the 3D one in float32
        # (two casts of the largest activations of the network).
        with torch.autocast(x.device.type, enabled=False):
            pooled = model.downs[level].pool(x)
        want = up[cfg.depth - 1 - level][1]
        if tuple(x.shape[2:]) != want:
            box = tuple(
                slice((have - w) // 2, (have - w) // 2 + w)
                for have, w in zip(x.shape[2:], want, strict=True)
            )
            x = x[(slice(None), slice(None), *box)].contiguous(memory_format=fmt)
        skips.append(x)
        x = pooled
        del pooled
    x = model.dropout(x)
    for stage, block in zip(model.ups, layers[1], strict=True):
        skip = skips.pop()
        c_skip = skip.shape[1]
        cat = torch.empty(
            (skip.shape[0], c_skip + stage.up.out_channels, *skip.shape[2:]),
            dtype=skip.dtype, device=skip.device, memory_format=fmt,
        )
        cat[:, :c_skip] = skip
        del skip
        up_into(stage.up, x, cat[:, c_skip:])
        x = cat
        del cat
        for layer in block:
            x = layer(x)
    return model.head(x)


# Input pixels per matrix product of up_into on the CPU: the product's buffer stays in the cache
# until it is copied out.
_UP_BLOCK_ROWS = 16384


def up_into(up: nn.modules.conv._ConvTransposeNd, x: torch.Tensor, out: torch.Tensor) -> None:
    """``out[...] = up(x)`` without the up-convolution's own output tensor.

    With a stride equal to its kernel and no padding, every output pixel of an up-convolution
    meets one tap of the kernel: the output pixels at kernel offset ``k`` are the input pixels
    times that tap's weights (one matrix product over the channels), which go straight to
    their strided places in ``out`` (here the concatenation buffer). That saves allocating and
    writing an output the size of ``out`` and then copying it, and it lowers the pass's peak
    memory (the up-convolution's output no longer lives beside the buffer). Any other
    up-convolution is computed as usual and copied.
    """
    plain = (all(s == k for s, k in zip(up.stride, up.kernel_size, strict=True))
             and not any(up.padding) and not any(up.output_padding)
             and all(d == 1 for d in up.dilation) and up.groups == 1
             and up.padding_mode == "zeros")
    if not plain:
        out.copy_(up(x))
        return
    nd = x.dim() - 2
    last = (0, *range(2, nd + 2), 1)
    # Under autocast the up-convolution would run in its lower precision, as the activations
    # already are: the same precision, explicitly.
    with torch.autocast(x.device.type, enabled=False):
        rows = x.permute(last).contiguous()  # no copy for a channels-last input
        dst = out.permute(last)
        taps = [(k, up.weight.detach()[(slice(None), slice(None), *k)].to(x.dtype))
                for k in itertools.product(*(range(s) for s in up.stride))]
        bias = up.bias.detach().to(x.dtype) if up.bias is not None else None
        per_slice = math.prod(rows.shape[2:-1])
        step = (rows.shape[1] if x.device.type != "cpu"
                else max(1, _UP_BLOCK_ROWS // max(per_slice, 1)))
        buffer = torch.empty((min(step, rows.shape[1]) * per_slice, up.out_channels),
                             dtype=x.dtype, device=x.device)
        for n in range(rows.shape[0]):
            for start in range(0, rows.shape[1], step):
                stop = min(rows.shape[1], start + step)
                block = rows[n, start:stop].reshape(-1, rows.shape[-1])
                product = buffer[: block.shape[0]]
                for k, tap in taps:
                    if bias is None:
                        torch.mm(block, tap, out=product)
                    else:
                        torch.addmm(bias, block, tap, out=product)
                    first = slice(start * up.stride[0] + k[0], stop * up.stride[0], up.stride[0])
                    rest = tuple(slice(j, None, s) for j, s in zip(k[1:], up.stride[1:],
                                                                  strict=True))
                    dst[(n, first, *rest)].copy_(product.view(stop - start,
                                                              *rows.shape[2:-1], -1))

"""The inference forward pass of a :class:`~useg.nets.unet.UNet`: the same operations as
``model(x)``, with fewer activations alive at once and batch norm folded into the convolutions.

Prediction (:func:`useg.inference.predict.make_predictor`) runs it; its memory is modelled by
:func:`useg.nets.geometry.peak_bytes`, which the choice of the tile relies on.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from useg.nets.conv import memory_format
from useg.nets.geometry import forward_shapes
from useg.nets.skip import crop_box
from useg.nets.unet import UNet

__all__ = ["inference_forward", "inference_layers", "memory_format"]


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
            x = x[crop_box(x.shape[2:], want)].contiguous(memory_format=fmt)
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
        cat[:, c_skip:] = stage.up(x)
        x = cat
        del cat
        for layer in block:
            x = layer(x)
    return model.head(x)

"""U-Net for 1, 2 and 3 spatial dimensions, built from a :class:`~useg.nets.config.UNetConfig`.

The network is a small composition of blocks (:class:`ConvBlock`, :class:`Down`, :class:`Up`);
the papers' networks are presets of the configuration (:mod:`useg.nets.config`), and its shapes
are arithmetic on the configuration (:mod:`useg.nets.geometry`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from useg.nets.config import UNetConfig, preset
from useg.nets.conv import Conv2d, Conv3d
from useg.nets.geometry import forward_shapes, halo, output_shape, valid_input_shape
from useg.nets.skip import center_crop, fuses, pool_and_crop
from useg.nets.upconv import ConvTranspose2d, ConvTranspose3d

__all__ = ["ConvBlock", "Down", "UNet", "Up", "center_crop", "unet_from_config"]

# useg's Conv2d/Conv3d are nn's with oneDNN kept where PyTorch would fall back (nets.conv);
# its up-convolutions train as matrix products (nets.upconv).
_CONV = {1: nn.Conv1d, 2: Conv2d, 3: Conv3d}
_UPCONV = {1: nn.ConvTranspose1d, 2: ConvTranspose2d, 3: ConvTranspose3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCENORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


def _norm(cfg: UNetConfig, channels: int) -> nn.Module:
    if cfg.norm == "batch":
        # track_running_stats=False makes batch norm use batch statistics in eval mode too.
        return _BATCHNORM[cfg.ndim](
            channels, affine=cfg.norm_affine, track_running_stats=not cfg.batch_stats
        )
    if cfg.norm == "instance":
        return _INSTANCENORM[cfg.ndim](channels, affine=cfg.norm_affine)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two convolutions, each followed by normalisation (optional) and ReLU."""

    def __init__(self, cfg: UNetConfig, c_in: int, c_mid: int, c_out: int, kernel: tuple[int, ...]):
        conv = _CONV[cfg.ndim]
        pad = tuple(k // 2 for k in kernel) if cfg.padding == "same" else 0
        bias = cfg.norm == "none" or not cfg.norm_affine
        super().__init__(
            conv(c_in, c_mid, kernel, padding=pad, bias=bias),
            _norm(cfg, c_mid),
            nn.ReLU(inplace=True),
            conv(c_mid, c_out, kernel, padding=pad, bias=bias),
            _norm(cfg, c_out),
            nn.ReLU(inplace=True),
        )

    def before_last_relu(self, x: torch.Tensor) -> torch.Tensor:
        """The block without its last ReLU (which the U-Net applies with the pooling)."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


class Down(nn.Module):
    """Max-pooling followed by a :class:`ConvBlock`."""

    def __init__(self, cfg: UNetConfig, pool: tuple[int, ...], c_in: int, c_mid: int, c_out: int,
                 kernel: tuple[int, ...]):
        super().__init__()
        self.pool = _POOL[cfg.ndim](pool)
        self.conv = ConvBlock(cfg, c_in, c_mid, c_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Up-convolution, concatenation with the cropped skip connection, :class:`ConvBlock`."""

    def __init__(self, cfg: UNetConfig, pool: tuple[int, ...], c_in: int, c_skip: int, c_out: int,
                 kernel: tuple[int, ...]):
        super().__init__()
        c_up = c_in if cfg.up_keep_channels else c_in // 2
        self.up = _UPCONV[cfg.ndim](c_in, c_up, pool, stride=pool, bias=cfg.up_bias)
        self.conv = ConvBlock(cfg, c_up + c_skip, c_out, c_out, kernel)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[2:]), x], dim=1))


class UNet(nn.Module):
    """U-Net for 1, 2 or 3 spatial dimensions.

    Parameters
    ----------
    config : UNetConfig or str
        The architecture, or a preset name.
    **overrides
        Changes to the configuration (e.g. ``in_channels=3``).

    Examples
    --------
    >>> net = UNet("ronneberger2015", width=8, depth=2)
    >>> x = torch.zeros(1, 1, 44, 44)
    >>> tuple(net(x).shape)
    (1, 2, 4, 4)
    """

    def __init__(self, config: UNetConfig | str = "ronneberger2015", **overrides: Any):
        super().__init__()
        if isinstance(config, str):
            config = preset(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.config = cfg = config
        pools, kernels = cfg.pools(), cfg.kernels()
        mid, out = cfg.level_channels(0)
        self.inc = ConvBlock(cfg, cfg.in_channels, mid, out, kernels[0])
        self.downs = nn.ModuleList()
        skips = [out]
        for level in range(1, cfg.depth + 1):
            mid, nxt = cfg.level_channels(level)
            self.downs.append(Down(cfg, pools[level - 1], out, mid, nxt, kernels[level]))
            out = nxt
            skips.append(out)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            c_skip = skips[level]
            self.ups.append(Up(cfg, pools[level], out, c_skip, c_skip, kernels[level]))
            out = c_skip
        self.head = _CONV[cfg.ndim](out, cfg.classes, 1)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """He initialisation: normal with std sqrt(2/N), N the incoming connections of a unit."""
        for m in self.modules():
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                # With stride equal to the kernel, each output unit sees exactly one kernel tap
                # of every input channel.
                fan_in = m.in_channels
            elif isinstance(m, nn.modules.conv._ConvNd):
                fan_in = m.in_channels * math.prod(m.kernel_size)
            else:
                continue
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
                if m.bias is not None:
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        # Each contracting level's last ReLU, its pooling and its skip crop are one operation
        # (nets.skip), which in training owns one gradient buffer for all three; the crop's
        # size is then known from the input's. Elsewhere (prediction, tracing) the Up crops.
        x = self.inc.before_last_relu(x)
        crops = [u for _, u, *_ in reversed(forward_shapes(self.config, shape)[1])] \
            if fuses(x) else [None] * len(self.downs)
        skips = []
        for down, pool, crop in zip(self.downs, self.config.pools(), crops, strict=True):
            pooled, skip = pool_and_crop(x, pool, crop, relu=True)
            skips.append(skip)
            x = down.conv.before_last_relu(pooled)
        x = self.dropout((self.downs[-1].conv if len(self.downs) else self.inc)[-1](x))
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)

    # Shape algebra of this network, for convenience.
    def output_shape(self, shape: Sequence[int] | int) -> tuple[int, ...]:
        return output_shape(self.config, shape)

    def valid_input_shape(
        self, shape: Sequence[int] | int, mode: str = "nearest"
    ) -> tuple[int, ...]:
        return valid_input_shape(self.config, shape, mode)

    @property
    def halo(self) -> tuple[int, ...]:
        return halo(self.config)


def unet_from_config(**config: Any) -> UNet:
    """A network from the fields of a configuration (a model file header's ``"config"``).

    For loaders that build a network by calling a function with JSON keyword arguments, such as
    the BioImage Model Zoo's ``pytorch_state_dict`` weights (``useg export --format
    bioimageio``); the weights are loaded afterwards.

    Examples
    --------
    >>> unet_from_config(ndim=2, width=4, depth=1).config.width
    4
    """
    return UNet(UNetConfig.from_dict(config))

"""U-Net for 1, 2 and 3 spatial dimensions, built from a configuration, and its shape algebra.

The network is a small composition of blocks (:class:`ConvBlock`, :class:`Down`, :class:`Up`)
built from a :class:`UNetConfig`. The papers' networks are presets, i.e. plain data:

- ``ronneberger2015``: 2D, valid convolutions, no normalisation, dropout 0.5 at the end of the
  contracting path, 64..1024 channels, up-convolutions halve the channels (572x572 -> 388x388).
- ``cicek2016``: 3D, valid convolutions, batch norm without affine parameters (as Caffe), 32..512
  channels with the first convolution of a level at half the level's width, three poolings, and
  up-convolutions that keep the channel count, without bias (132x132x116 -> 44x44x28). Batch
  norm trains with the statistics of the batch and predicts with the running averages gathered
  in training, as Caffe's batch norm layer (which Cicek et al. used) does by default in its test
  phase. Normalising each tile with its own statistics would make the output depend on the
  tile, i.e. on the memory of the machine that picks it, and break the seamless overlap-tile
  guarantee; ``batch_stats=True`` keeps that behaviour for those who want it, and such a
  network predicts only in one pass over the whole input (:mod:`useg.predict`).

Shape algebra (:func:`output_shape`, :func:`valid_input_shape`, :func:`halo`) is pure arithmetic on
the configuration and needs no forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from useg.errors import ConfigError

__all__ = [
    "PRESETS",
    "UNet",
    "UNetConfig",
    "anisotropic_pools",
    "halo",
    "is_valid_input",
    "min_input_shape",
    "output_shape",
    "pool_step",
    "preset",
    "receptive_radius",
    "valid_input_shape",
]

_NORMS = ("none", "batch", "instance")
_PADDINGS = ("valid", "same")


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a U-Net's architecture.

    Parameters
    ----------
    ndim : int
        Number of spatial dimensions (1, 2 or 3).
    in_channels, classes : int
        Input channels and output classes (the final 1x1 convolution's channels).
    width : int
        Channels of the first convolution; channels double at each pooling.
    depth : int
        Number of poolings.
    padding : {"valid", "same"}
        ``valid`` as the papers (the output is smaller than the input by twice the halo);
        ``same`` zero-pads every convolution so output and input have the same size.
    norm : {"none", "batch", "instance"}
        Normalisation after each convolution, before the ReLU.
    norm_affine : bool
        Learnable scale and shift in the normalisation (Caffe's batch norm, used by Cicek et al.,
        has none).
    batch_stats : bool
        Batch norm uses the statistics of the current batch also at inference instead of the
        running averages of training. The output of a tile then depends on the tile, so such a
        network predicts only in one pass over the whole input.
    dropout : float
        Dropout probability at the end of the contracting path (0 disables).
    up_bias : bool
        Bias in the up-convolutions.
    up_keep_channels : bool
        Up-convolutions keep the channel count (3D U-Net) instead of halving it (2D U-Net).
    double_within_level : bool
        The first convolution of each contracting level has half the level's output channels
        (3D U-Net: 32 -> 64, 64 -> 128, ...) instead of all of them.
    pool : tuple of tuple of int, optional
        Pooling factor per level and axis, e.g. ``((1, 2, 2), (2, 2, 2), (2, 2, 2))`` for
        anisotropic volumes; ``None`` means 2 along every axis at every level.
    kernel : tuple of tuple of int, optional
        Convolution kernel size per level (``depth + 1`` entries) and axis; ``None`` means 3.

    Examples
    --------
    >>> cfg = preset("ronneberger2015", in_channels=1, classes=2)
    >>> output_shape(cfg, (572, 572))
    (388, 388)
    """

    ndim: int = 2
    in_channels: int = 1
    classes: int = 2
    width: int = 64
    depth: int = 4
    padding: str = "valid"
    norm: str = "none"
    norm_affine: bool = True
    batch_stats: bool = False
    dropout: float = 0.0
    up_bias: bool = True
    up_keep_channels: bool = False
    double_within_level: bool = False
    pool: tuple[tuple[int, ...], ...] | None = None
    kernel: tuple[tuple[int, ...], ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.ndim not in (1, 2, 3):
            raise ConfigError(f"ndim must be 1, 2 or 3, got {self.ndim}")
        for name in ("in_channels", "classes", "width"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ConfigError(f"depth must be >= 0, got {self.depth}")
        if self.padding not in _PADDINGS:
            raise ConfigError(f"padding must be one of {_PADDINGS}, got {self.padding!r}")
        if self.norm not in _NORMS:
            raise ConfigError(f"norm must be one of {_NORMS}, got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.double_within_level and self.width % 1:
            raise ConfigError("width must be an integer")
        # Normalise list-valued fields (e.g. from JSON) into tuples so configs stay hashable.
        if self.pool is not None:
            pool = tuple(tuple(int(f) for f in level) for level in self.pool)
            if len(pool) != self.depth or any(len(p) != self.ndim for p in pool):
                raise ConfigError(
                    f"pool needs {self.depth} levels of {self.ndim} factors, got {pool}"
                )
            if any(f < 1 for p in pool for f in p):
                raise ConfigError(f"pool factors must be >= 1, got {pool}")
            object.__setattr__(self, "pool", pool)
        if self.kernel is not None:
            kernel = tuple(tuple(int(k) for k in level) for level in self.kernel)
            if len(kernel) != self.depth + 1 or any(len(k) != self.ndim for k in kernel):
                raise ConfigError(
                    f"kernel needs {self.depth + 1} levels of {self.ndim} sizes, got {kernel}"
                )
            if any(k < 1 or k % 2 == 0 for lv in kernel for k in lv):
                raise ConfigError(f"kernel sizes must be odd and >= 1, got {kernel}")
            object.__setattr__(self, "kernel", kernel)

    # Per-level geometry, resolved from the optional fields.
    def pools(self) -> tuple[tuple[int, ...], ...]:
        return self.pool if self.pool is not None else ((2,) * self.ndim,) * self.depth

    def kernels(self) -> tuple[tuple[int, ...], ...]:
        return self.kernel if self.kernel is not None else ((3,) * self.ndim,) * (self.depth + 1)

    def level_channels(self, level: int) -> tuple[int, int]:
        """Channels (after first conv, after second conv) of contracting level ``level``."""
        out = self.width * 2**level
        if self.double_within_level:
            return out, 2 * out
        return out, out

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown network configuration keys: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)


# The papers' networks, as data.
PRESETS: dict[str, dict[str, Any]] = {
    "ronneberger2015": dict(
        ndim=2, width=64, depth=4, padding="valid", norm="none", dropout=0.5, up_bias=True,
        up_keep_channels=False, double_within_level=False, classes=2,
    ),
    "cicek2016": dict(
        ndim=3, width=32, depth=3, padding="valid", norm="batch", norm_affine=False,
        batch_stats=False, dropout=0.0, up_bias=False, up_keep_channels=True,
        double_within_level=True, classes=3,
    ),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    """Return the configuration of a named preset, with optional overrides.

    Examples
    --------
    >>> preset("cicek2016", in_channels=3).depth
    3
    >>> preset("ronneberger2015", width=16).width
    16
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return UNetConfig(**{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# Shape algebra


def _axis_output(cfg: UNetConfig, n: int, axis: int) -> int | None:
    """Output length along an axis for input length ``n``; None when a pooling sees an odd size."""
    pools = [p[axis] for p in cfg.pools()]
    shrink = [0] * (cfg.depth + 1)
    if cfg.padding == "valid":
        shrink = [2 * (k[axis] - 1) for k in cfg.kernels()]
    for level in range(cfg.depth):
        n -= shrink[level]
        if n < 1 or n % pools[level]:
            return None
        n //= pools[level]
    n -= shrink[cfg.depth]
    if n < 1:
        return None
    for level in reversed(range(cfg.depth)):
        n = n * pools[level] - shrink[level]
        if n < 1:
            return None
    return n


def _as_shape(cfg: UNetConfig, shape: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,) * cfg.ndim
    shape = tuple(int(s) for s in shape)
    if len(shape) != cfg.ndim:
        raise ConfigError(f"expected a {cfg.ndim}-D spatial shape, got {shape}")
    return shape


def is_valid_input(cfg: UNetConfig, shape: Sequence[int] | int) -> bool:
    """True when every pooling of the network sees an even (divisible) size for this input.

    Examples
    --------
    >>> cfg = preset("ronneberger2015")
    >>> is_valid_input(cfg, 572), is_valid_input(cfg, 570)
    (True, False)
    """
    shape = _as_shape(cfg, shape)
    return all(_axis_output(cfg, n, a) is not None for a, n in enumerate(shape))


def output_shape(cfg: UNetConfig, shape: Sequence[int] | int) -> tuple[int, ...]:
    """Spatial output shape of the network for a spatial input shape.

    Raises :class:`~useg.errors.ConfigError` when the input is not valid (see
    :func:`valid_input_shape`).

    Examples
    --------
    >>> output_shape(preset("cicek2016", in_channels=3), (116, 132, 132))
    (28, 44, 44)
    """
    shape = _as_shape(cfg, shape)
    out = tuple(_axis_output(cfg, n, a) for a, n in enumerate(shape))
    if any(o is None for o in out):
        suggestion = valid_input_shape(cfg, shape)
        raise ConfigError(
            f"input shape {shape} is not valid for this network (a pooling would see an odd size "
            f"or a size below 1); nearest valid shape is {suggestion}"
        )
    return out  # type: ignore[return-value]


def _axis_input_for_bottom(cfg: UNetConfig, m: int, axis: int) -> int:
    """Input length whose bottom level (after its convolutions) has length ``m``."""
    pools = [p[axis] for p in cfg.pools()]
    shrink = [0] * (cfg.depth + 1)
    if cfg.padding == "valid":
        shrink = [2 * (k[axis] - 1) for k in cfg.kernels()]
    n = m + shrink[cfg.depth]
    for level in reversed(range(cfg.depth)):
        n = n * pools[level] + shrink[level]
    return n


def _axis_valid_inputs(cfg: UNetConfig, axis: int, upto: int) -> list[int]:
    """All valid input lengths along an axis up to (and one beyond) ``upto``, increasing."""
    sizes: list[int] = []
    m = 1
    while True:
        n = _axis_input_for_bottom(cfg, m, axis)
        if _axis_output(cfg, n, axis) is not None:
            sizes.append(n)
            if n >= upto:
                return sizes
        m += 1


def valid_input_shape(
    cfg: UNetConfig, shape: Sequence[int] | int, mode: str = "nearest"
) -> tuple[int, ...]:
    """Nearest valid input shape to a requested one.

    Parameters
    ----------
    mode : {"nearest", "down", "up"}
        ``down`` never exceeds the request (except below the minimum valid size), ``up`` never
        falls below it.

    Examples
    --------
    >>> cfg = preset("ronneberger2015")
    >>> valid_input_shape(cfg, 1000), valid_input_shape(cfg, 1000, mode="up")
    ((1004, 1004), (1004, 1004))
    >>> valid_input_shape(cfg, 1000, mode="down")
    (988, 988)
    """
    if mode not in ("nearest", "down", "up"):
        raise ConfigError(f"mode must be 'nearest', 'down' or 'up', got {mode!r}")
    shape = _as_shape(cfg, shape)
    result = []
    for axis, n in enumerate(shape):
        sizes = _axis_valid_inputs(cfg, axis, n)
        above = sizes[-1]
        below = [s for s in sizes if s <= n]
        if mode == "up" or not below:
            result.append(above)
        elif mode == "down":
            result.append(below[-1])
        else:
            b = below[-1]
            result.append(b if n - b <= above - n else above)
    return tuple(result)


def min_input_shape(cfg: UNetConfig) -> tuple[int, ...]:
    """Smallest valid input shape.

    Examples
    --------
    >>> min_input_shape(preset("ronneberger2015"))
    (188, 188)
    """
    return tuple(_axis_valid_inputs(cfg, a, 1)[0] for a in range(cfg.ndim))


def halo(cfg: UNetConfig) -> tuple[int, ...]:
    """Border lost on each side of the input, per axis (0 for same-padding networks).

    For a valid-padding network ``output = input - 2 * halo`` for every valid input.

    Examples
    --------
    >>> halo(preset("ronneberger2015"))
    (92, 92)
    >>> halo(preset("cicek2016"))
    (44, 44, 44)
    """
    n = min_input_shape(cfg)
    out = output_shape(cfg, n)
    return tuple((i - o) // 2 for i, o in zip(n, out, strict=True))


def receptive_radius(cfg: UNetConfig) -> tuple[int, ...]:
    """Distance, per axis, from an output pixel to the farthest input pixel that can affect it.

    For a same-padding network, tiles whose discarded margin is at least this radius (and that
    sit on the pooling grid) never see the zero padding of their own edges: stitching is then
    exact, like the valid network's overlap-tile strategy.

    Examples
    --------
    >>> receptive_radius(preset("ronneberger2015", padding="same"))
    (107, 107)
    """
    radius = []
    for axis in range(cfg.ndim):
        scale, r = 1, 0
        for level in range(cfg.depth + 1):
            k = cfg.kernels()[level][axis] // 2
            convs = 2 if level == cfg.depth else 4  # contracting and expanding convolutions
            r += convs * k * scale
            if level < cfg.depth:
                p = cfg.pools()[level][axis]
                r += (p - 1) * scale  # a pooling window reaches p - 1 pixels further
                scale *= p
        radius.append(r)
    return tuple(radius)


def pool_step(cfg: UNetConfig) -> tuple[int, ...]:
    """Step between consecutive valid input sizes per axis (product of the pooling factors)."""
    return tuple(math.prod(p[a] for p in cfg.pools()) for a in range(cfg.ndim))


def anisotropic_pools(
    spacing: Sequence[float], depth: int, ratio: float = 2.0
) -> tuple[tuple[int, ...], ...]:
    """Pooling factors per level for voxels of the given size (an nnU-Net-like rule).

    At each level an axis is pooled by 2 only if its current voxel size is below ``ratio``
    times the current size of the finest axis; pooling then doubles the size of the pooled
    axes. Thick slices are thus left alone until the in-plane voxels have grown about as
    coarse as them, and from there on all axes pool together, so the deep levels see roughly
    isotropic voxels. Isotropic spacing (and anything within a factor ``ratio``) pools every
    axis at every level, which is the plain U-Net.

    Parameters
    ----------
    spacing : sequence of float
        Voxel size per spatial axis ((Z,) Y, X), in any unit.
    depth : int
        Number of poolings.
    ratio : float
        An axis this many times coarser than the finest one is not pooled (2, as nnU-Net).

    Returns
    -------
    ``depth`` tuples of pooling factors (1 or 2) per axis, for :class:`UNetConfig` ``pool``.

    Examples
    --------
    >>> anisotropic_pools((50, 4, 4), 4)
    ((1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))
    >>> anisotropic_pools((0.235, 0.15, 0.15), 2)
    ((2, 2, 2), (2, 2, 2))
    """
    size = [float(s) for s in spacing]
    if not size or not all(math.isfinite(s) and s > 0 for s in size):
        raise ConfigError(f"voxel spacing must be positive numbers, got {tuple(spacing)}")
    if depth < 0:
        raise ConfigError(f"depth must be >= 0, got {depth}")
    pools = []
    for _ in range(depth):
        finest = min(size)
        level = tuple(2 if s < ratio * finest else 1 for s in size)
        size = [s * f for s, f in zip(size, level, strict=True)]
        pools.append(level)
    return tuple(pools)


# ----------------------------------------------------------------------------------------------
# Blocks

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
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


class Down(nn.Module):
    """Max-pooling followed by a :class:`ConvBlock`."""

    def __init__(self, cfg: UNetConfig, pool: tuple[int, ...], c_in: int, c_mid: int, c_out: int,
                 kernel: tuple[int, ...]):
        super().__init__()
        self.pool = _POOL[cfg.ndim](pool)
        self.conv = ConvBlock(cfg, c_in, c_mid, c_out, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (batch, channel first) to ``shape`` around the centre."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


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
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
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

"""The configuration of a U-Net (:class:`UNetConfig`) and the papers' networks as presets.

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
  network predicts only in one pass over the whole input (:mod:`useg.inference.tile_choice`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from useg.errors import ConfigError, check_choice

__all__ = ["PRESETS", "UNetConfig", "preset"]

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
    >>> from useg.nets.geometry import output_shape
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
        check_choice("padding", self.padding, _PADDINGS)
        check_choice("norm", self.norm, _NORMS)
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

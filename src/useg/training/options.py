"""The options of ``useg train`` and ``useg densify``, named as on the command line, and the
parsing of their text values. Needs nothing but the standard library, so that the command line
takes its defaults from here without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from useg.errors import ConfigError

__all__ = ["NET_OPTIONS", "TrainOptions", "parse_pool", "parse_slices"]


@dataclass
class TrainOptions:
    """The options of ``useg train`` and ``useg densify``, named and defaulted as on the
    command line (``--no-augment`` is ``no_augment``; None leaves the preset's value).

    The defaults of the training settings are also those of
    :class:`~useg.training.config.TrainConfig`, which takes them from here."""

    # network
    preset: str | None = None
    width: int | None = None
    depth: int | None = None
    padding: str | None = None
    norm: str | None = None
    dropout: float | None = None
    pool: str | None = None  # "1x2x2,2x2x2": see parse_pool
    batch_stats: bool | None = None
    # training
    tile: Sequence[int] | None = None
    iterations: int = 2000
    batch_size: int = 1
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "poly"
    precision: str = "auto"
    grad_clip: float | None = None
    dice: float = 0.0
    no_augment: bool = False
    no_elastic: bool = False
    w0: float = 10.0
    sigma: float = 5.0
    no_class_balance: bool = False
    label_mode: str | None = None
    unlabeled: int | None = None
    boundary_width: int = 1
    spacing: Sequence[float] | None = None
    slices: Sequence[str] | None = None  # ["z=10,40", "y=64"]: see parse_slices
    val_every: int = 200
    log_every: int = 10
    checkpoint_every: int = 100
    workers: int = 1
    seed: int = 0
    device: str = "auto"


# Options of the network that override the preset's value when given.
NET_OPTIONS = ("width", "depth", "padding", "norm", "dropout", "batch_stats")


def parse_pool(text: str | None, ndim: int) -> list[list[int]] | None:
    """``"1x2x2,2x2x2"`` -> ``[[1, 2, 2], [2, 2, 2]]``: pooling factors per level and axis."""
    if not text:
        return None
    try:
        levels = [[int(v) for v in level.lower().split("x")] for level in text.split(",")]
    except ValueError:
        raise ConfigError(f"--pool expects e.g. 1x2x2,2x2x2, got {text!r}") from None
    if any(len(level) != ndim for level in levels):
        raise ConfigError(f"--pool: each level needs {ndim} factors, got {text!r}")
    return levels


def parse_slices(items: Sequence[str] | None, ndim: int) -> dict[int, list[int]] | None:
    """``["z=10,40", "y=64"]`` -> {axis: [indices]} for the spatial axes of an ndim volume."""
    if not items:
        return None
    names = "ZYX"[3 - ndim:]
    result: dict[int, list[int]] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().upper()
        if name not in names or not values:
            raise ConfigError(f"--slices expects AXIS=i,j with AXIS in {names}, got {item!r}")
        try:
            result.setdefault(names.index(name), []).extend(int(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--slices: indices must be integers, got {item!r}") from None
    return result

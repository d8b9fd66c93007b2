"""The options of ``useg train`` and ``useg densify``, named as on the command line, and the
parsing of their text values. Needs nothing but the standard library, so that the command line
takes its defaults from here without importing torch.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from useg.errors import ConfigError

__all__ = ["NET_OPTIONS", "RANGES", "RECIPE_OPTIONS", "TrainOptions", "check_ranges",
           "format_duration", "parse_duration", "parse_pool", "parse_slices"]


# The range of each numeric training setting, by its name in TrainOptions (TrainConfig names the
# Dice weight dice_weight): (integer?, low, high, low open?, high open?). useg train and densify
# give the same ranges to their argparse types (useg.cli.train).
RANGES: dict[str, tuple[bool, float, float, bool, bool]] = {
    "width": (True, 1, math.inf, False, False),
    "depth": (True, 0, math.inf, False, False),
    "dropout": (False, 0.0, 1.0, False, True),
    "tile": (True, 1, math.inf, False, False),
    "iterations": (True, 1, math.inf, False, False),
    "batch_size": (True, 1, math.inf, False, False),
    "lr": (False, 0.0, math.inf, True, False),
    "momentum": (False, 0.0, 1.0, False, False),
    "weight_decay": (False, 0.0, math.inf, False, False),
    "grad_clip": (False, 0.0, math.inf, False, False),  # 0: off, like None
    "dice": (False, 0.0, math.inf, False, False),
    "w0": (False, 0.0, math.inf, False, False),  # 0: no border weights
    "sigma": (False, 0.0, math.inf, True, False),
    "unlabeled": (True, -math.inf, math.inf, False, False),
    "boundary_width": (True, 1, math.inf, False, False),
    "spacing": (False, 0.0, math.inf, True, False),
    "val_every": (True, 1, math.inf, False, False),
    "log_every": (True, 1, math.inf, False, False),
    "checkpoint_every": (True, 1, math.inf, False, False),
    "workers": (True, 0, math.inf, False, False),  # 0: tiles made in the training process
    "seed": (True, 0, math.inf, False, False),
    "warmup": (True, 0, math.inf, False, False),
    "time_budget": (False, 0.0, math.inf, True, False),  # seconds
}


def describe_range(name: str) -> str:
    """``"a positive integer"``, ``"a number in [0, 1)"``... for the setting ``name``."""
    integer, low, high, low_open, high_open = RANGES[name]
    if integer:
        if low == -math.inf:
            return "an integer"
        return {1: "a positive integer", 0: "a non-negative integer"}.get(
            int(low), f"an integer of at least {low:g}")
    if high == math.inf:
        if low == 0:
            return "a positive finite number" if low_open else "a non-negative finite number"
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def in_range(name: str, value: object) -> bool:
    """Whether ``value`` (one number) lies in the range of the setting ``name``."""
    integer, low, high, low_open, high_open = RANGES[name]
    if isinstance(value, bool) or not isinstance(
            value, numbers.Integral if integer else numbers.Real):
        return False
    if not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and (
        value < high if high_open else value <= high)


def check_ranges(values: Mapping[str, object], names: Mapping[str, str] | None = None) -> None:
    """Raise the :class:`ConfigError` naming the first setting of ``values`` (a name of
    :data:`RANGES` -> a number, a sequence of numbers or None) out of its range; ``names``
    renames settings in the message."""
    names = names or {}
    for key, value in values.items():
        if value is None or key not in RANGES:
            continue
        items: Iterable[object] = (
            value if isinstance(value, Sequence) and not isinstance(value, str) else (value,))
        if isinstance(value, Sequence) and not isinstance(value, str) and not value:
            items = ("an empty list",)
        if not all(in_range(key, v) for v in items):
            many = " (each)" if items is value else ""
            raise ConfigError(f"{names.get(key, key)}{many} must be {describe_range(key)}, "
                              f"got {value!r}")


@dataclass
class TrainOptions:
    """The options of ``useg train`` and ``useg densify``, named and defaulted as on the
    command line (``--no-augment`` is ``no_augment``; None leaves the recipe's value, else the
    preset's or :class:`~useg.training.config.TrainConfig`'s).

    The defaults of the training settings are also those of
    :class:`~useg.training.config.TrainConfig`, which takes them from here, except those that a
    recipe sets (:data:`RECIPE_OPTIONS`, :mod:`useg.training.recipes`): None here, the papers'
    there."""

    recipe: str = "auto"  # useg.training.recipes: cpu-fast on the CPU, gpu-paper on CUDA
    # A model (file, run folder or packaged name) whose network and weights the run starts
    # from: fine-tuning. None: a new network, He-initialised.
    init: str | None = None

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
    iterations: int | None = None
    time_budget: float | None = None  # seconds (parse_duration): the run ends within it
    batch_size: int = 1
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float = 0.0
    schedule: str | None = None
    precision: str = "auto"
    grad_clip: float | None = None
    dice: float | None = None  # None: the recipe's (0 when it sets none)
    no_augment: bool = False
    no_elastic: bool = False
    w0: float | None = None  # None: the recipe's (the paper's 10 when it sets none)
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
    workers: int | None = None  # None: the recipe's, else 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_ranges(vars(self))


# Options of the network that override the preset's value when given.
NET_OPTIONS = ("width", "depth", "padding", "norm", "dropout", "batch_stats")
# Options whose default (None) is the recipe's value (useg.training.recipes).
RECIPE_OPTIONS = ("width", "depth", "padding", "norm", "tile", "iterations", "optimizer", "lr",
                  "momentum", "schedule", "workers")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh])", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``"90s"``, ``"20m"``, ``"1.5h"`` or ``"1h30m"`` -> seconds (a positive finite number).

    Examples
    --------
    >>> parse_duration("20m"), parse_duration("1h30m"), parse_duration("45 s")
    (1200.0, 5400.0, 45.0)
    >>> parse_duration("20")
    Traceback (most recent call last):
    ...
    useg.errors.ConfigError: a time budget needs a unit (s, m or h), e.g. 90s, 20m or 1.5h; got '20'
    """
    seconds, end = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != end:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2).lower()]
        end = match.end()
    if end == 0 or text[end:].strip():
        raise ConfigError("a time budget needs a unit (s, m or h), e.g. 90s, 20m or 1.5h; "
                          f"got {text!r}")
    if not 0 < seconds < math.inf:
        raise ConfigError(f"a time budget must be positive and finite, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as people say them: ``"45 s"``, ``"2.5 min"``, ``"21 min"``, ``"2 h 05 min"``.

    Examples
    --------
    >>> format_duration(44.6), format_duration(150), format_duration(1260), format_duration(7500)
    ('45 s', '2.5 min', '21 min', '2 h 05 min')
    """
    if seconds < 119.5:
        return f"{seconds:.0f} s"
    if seconds < 570:
        return f"{seconds / 60:.1f} min"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


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

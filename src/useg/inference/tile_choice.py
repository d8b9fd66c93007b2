"""Which input tile prediction uses: the cheapest within a memory budget, or one pass over the
whole image for a network whose output depends on the tile.

:func:`default_tile` scores every tile shape that changes the number of tiles along some axis by
the convolutions of all its tiles (:func:`useg.nets.geometry.mac_terms`) and keeps the cheapest
whose peak memory (:func:`useg.nets.geometry.peak_bytes`) fits the budget.
:func:`tile_geometry` turns a requested tile into the tile, halo, margin and pooling step that
:func:`useg.inference.predict.predict` and the block-wise prediction use.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from useg.device import device_memory
from useg.errors import ConfigError, TileWarning
from useg.inference.tiling import check_batch_size, plan_tiles
from useg.inference.tta import turns_commute
from useg.nets.checkpoint import model_name
from useg.nets.geometry import (
    conv_macs,
    halo,
    mac_terms,
    min_input_shape,
    output_shape,
    peak_bytes,
    pool_step,
    tile_context,
    tile_margin,
    valid_input_shape,
)
from useg.nets.unet import UNet

__all__ = [
    "default_tile", "keeps_freed_memory", "memory_budget", "tile_dependence", "tile_geometry",
    "tile_notes_said", "whole_image_tile",
]

#: Kept freed memory spares every tile after the first the kernel's zeroing of its fresh
#: activations; measured on the same tile (``bench/predict3d.py --budgets``), that gain is
#: larger than this factor, so tiles for half the budget may cost up to this much more work.
KEPT_WORK_LIMIT = 1.15


def tile_dependence(model: nn.Module) -> str | None:
    """Why a network's output would depend on the tile it sees, or None when it does not.

    A normalisation layer that uses the statistics of its own input when predicting (batch norm
    without running statistics, instance norm) normalises every tile by that tile's content, so
    overlap tiles would not stitch into the whole-image result.

    Examples
    --------
    >>> tile_dependence(UNet("cicek2016", width=2)) is None
    True
    >>> tile_dependence(UNet("cicek2016", width=2, batch_stats=True))
    'batch norm with the statistics of the batch'
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            return "batch norm with the statistics of the batch"
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats:
            return "instance norm"
    return None


def whole_image_tile(model: UNet, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The smallest valid input tile that predicts an image in one pass (one tile per axis).

    The tile covers the image and the mirrored context the overlap-tile plan reads around it.

    Examples
    --------
    >>> whole_image_tile(UNet("ronneberger2015"), (100, 300))
    (284, 492)
    """
    cfg = model.config
    want = [int(n) + 2 * c for n, c in zip(image_shape, tile_context(cfg), strict=True)]
    return valid_input_shape(cfg, want, mode="up")


def default_tile(
    model: UNet, image_shape: Sequence[int], device: torch.device | str = "cpu",
    budget_bytes: float | None = None,
) -> tuple[int, ...]:
    """The valid input tile that predicts an image with the least computation within a memory
    budget.

    Larger tiles waste less of a valid network's border and fewer of them overshoot the image's
    edge, but they cost memory. Every tile shape that changes the number of tiles along some
    axis is scored by the convolutions of all its tiles, counted from the configuration, and the
    cheapest whose peak activation memory (float32, modelled on the forward pass that
    :func:`useg.inference.predict.predict` runs) fits the budget wins.

    The budget defaults, on CPU, to 1 GiB for 1D and 2D networks and to 4 GiB (at most a
    quarter of the machine's memory) for 3D ones, where a tile's border costs far more (the
    work each budget gives is measured by ``bench/predict3d.py --budgets``). On CUDA it is a
    quarter of the free memory.

    A network whose output depends on the tile (:func:`tile_dependence`) gets the tile of one
    pass over the whole image (:func:`whole_image_tile`), whatever the budget: a tile chosen
    from the memory of the machine would make its result depend on the machine.

    Examples
    --------
    >>> default_tile(UNet("ronneberger2015"), (2048, 2048))
    (1212, 1212)
    """
    cfg = model.config
    if tile_dependence(model) is not None:
        return whole_image_tile(model, image_shape)
    return _best_tile(cfg, image_shape, _budget(device, budget_bytes, cfg.ndim), itemsize=4)


def _budget(device: torch.device | str, budget_bytes: float | None, ndim: int) -> float:
    if budget_bytes is not None:
        return float(budget_bytes)
    device = torch.device(device)
    if device.type == "cuda":
        return device_memory(device) / 4
    if ndim < 3:
        return float(1 << 30)
    physical = device_memory(device)
    if math.isinf(physical):  # not a POSIX system
        physical = 16 << 30
    return float(max(1 << 30, min(4 << 30, physical // 4)))


def _tiles_along(cfg, axis: int, size: int, length: int, halo_: int) -> float:
    """Number of tiles of ``size`` input pixels that cover ``length`` pixels along an axis
    (infinite for a size that keeps nothing)."""
    margin = tile_margin(cfg, (size,) * cfg.ndim)[axis]
    try:
        return plan_tiles((length,), size, halo_, margin, pool_step(cfg)[axis]).counts[0]
    except ConfigError:
        return math.inf


def _first(sizes: range, ok: Callable[[int], bool]) -> int:
    """Index of the first size for which ``ok`` holds, ``ok`` being monotone (False then True);
    ``len(sizes)`` when it never does."""
    lo, hi = 0, len(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(sizes[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _axis_options(cfg, axis: int, length: int, budget: float, itemsize: int,
                  limit: int = 32) -> list[tuple[float, int]]:
    """(number of tiles, size) along one axis: for each of the ``limit`` fewest numbers of tiles
    that a size within the memory budget reaches, the smallest size that reaches it."""
    smallest, step, ctx = min_input_shape(cfg), pool_step(cfg)[axis], tile_context(cfg)
    h = halo(cfg)[axis]
    # Valid sizes form an arithmetic sequence; none is needed beyond one tile for the axis.
    beyond = max(0, length + 2 * ctx[axis] - smallest[axis])
    sizes = range(smallest[axis], smallest[axis] + -(-beyond // step) * step + 1, step)

    def too_big(size: int) -> bool:
        probe = list(smallest)
        probe[axis] = size
        return peak_bytes(cfg, probe, itemsize) > budget

    top = _first(sizes, too_big) - 1  # memory only grows with the size
    if top < 0:
        return [(_tiles_along(cfg, axis, sizes[0], length, h), sizes[0])]
    # Same networks stitch exactly only when the margin covers the context: prefer such sizes.
    exact = _first(sizes, lambda t: tile_margin(cfg, (t,) * cfg.ndim)[axis] >= ctx[axis])
    sizes = sizes[: top + 1][exact if exact <= top else 0 :]
    options: dict[float, int] = {}
    fewest = _tiles_along(cfg, axis, sizes[-1], length, h)
    for count in range(int(min(fewest, 1 << 30)), int(min(fewest, 1 << 30)) + limit):
        i = _first(sizes, lambda t, c=count: _tiles_along(cfg, axis, t, length, h) <= c)
        if i < len(sizes):
            options.setdefault(_tiles_along(cfg, axis, sizes[i], length, h), sizes[i])
        if i == 0:
            break
    return sorted(options.items())


def _best_tile(cfg, image_shape: Sequence[int], budget: float, itemsize: int) -> tuple[int, ...]:
    """The tile of least total convolution work whose peak memory fits ``budget`` bytes."""
    smallest = min_input_shape(cfg)
    coeffs = np.array([c for c, _ in mac_terms(cfg, smallest)], dtype=np.float64)
    sizes, counts, lengths = [], [], []
    for axis, n in enumerate(image_shape):
        options = _axis_options(cfg, axis, int(n), budget, itemsize)
        counts.append(np.array([c for c, _ in options], dtype=np.float64))
        sizes.append([t for _, t in options])
        # Each convolution's work is a product of per-axis lengths: tabulate them per option.
        probes = [[t if a == axis else smallest[a] for a in range(cfg.ndim)] for t in sizes[-1]]
        lengths.append(np.array([[s[axis] for _, s in mac_terms(cfg, p)] for p in probes],
                                dtype=np.float64))
    work, tiles = coeffs, np.ones(())
    for axis in range(cfg.ndim):
        work = work[..., None, :] * lengths[axis].reshape((1,) * axis + lengths[axis].shape)
        tiles = tiles[..., None] * counts[axis]
    cost = work.sum(-1) * tiles
    for flat in np.argsort(cost, axis=None, kind="stable"):
        index = np.unravel_index(flat, cost.shape)
        tile = tuple(sizes[a][i] for a, i in enumerate(index))
        if peak_bytes(cfg, tile, itemsize) <= budget:
            return tile
    return smallest


def tile_geometry(
    model: UNet, image_shape: Sequence[int], tile: Sequence[int] | int | None,
    device: torch.device, tta: bool, memory_gib: float | None = None, batch_size: int = 1,
    freed_kept: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | int, tuple[int, ...]]:
    """Tile, halo, margin and pooling step that :func:`useg.inference.predict.predict` uses for
    an image shape: ``tile`` (when None, :func:`default_tile` for a budget of ``memory_gib``
    GiB, or the default budget, shared by the ``batch_size`` tiles of a forward pass) rounded up
    to a valid one, for a same-padding network to one whose discarded margin covers its context
    (so that stitching is exact; :func:`useg.nets.geometry.tile_margin`), and square in the
    (Y, X) plane for test-time augmentation. ``freed_kept``: the prediction keeps freed memory
    (:func:`useg.device.freed_memory_kept`), which about doubles what its tiles hold at the
    peak, so the default budget is halved for them (an asked budget stands as asked).

    A requested tile that had to grow for exactness, or that costs several times the work of
    the default tile, is named in one :class:`~useg.errors.TileWarning` (callers that repeat a
    geometry already named, block by block or slice by slice, use :func:`tile_notes_said`).

    Raises :class:`~useg.errors.ConfigError` for a network whose output depends on the tile
    (:func:`tile_dependence`) when the tile does not cover the image, when a forward pass does
    not fit in the memory of ``device``, for both a tile and a memory budget, and for a budget
    that is not a positive number, exceeds the device's memory or is too small for the
    smallest tile.
    """
    cfg = model.config
    requested = tile
    check_batch_size(batch_size)
    budget = memory_budget(memory_gib, tile, device)
    if tile is None:
        share = _budget(device, budget, cfg.ndim) / batch_size
        if freed_kept and budget is None:
            share /= 2
        tile = _default_tile_within(model, image_shape, device, share, tta)
    asked = valid_input_shape(cfg, tile, mode="up")
    tile, h, margin = _geometry(cfg, asked, tta)
    output_shape(cfg, tile)  # validates the tile
    reason = tile_dependence(model)
    if reason is not None:
        # One tile: the batch holds it alone.
        _check_one_pass(model, reason, image_shape, tile, h, margin, device)
        _check_budget(cfg, tile, budget, 1, "this model predicts in one pass over the whole "
                      f"image ({reason}), with a tile of {tile}, which")
        return tile, h, margin, pool_step(cfg)
    grown = tile != asked and tile != _geometry(cfg, asked, tta, exact=False)[0]
    if grown:
        _refuse_too_large(cfg, tile, device, "this same-padding network stitches tiles exactly "
                          f"(as one whole-image pass) only from a tile of {tile}, which needs",
                          "predict on a device with more memory", batch_size)
    else:
        _refuse_too_large(cfg, tile, device, f"a tile of {tile} needs", "give a smaller tile "
                          "(or none: the default tile fits the memory)", batch_size)
    _check_budget(cfg, tile, budget, batch_size,
                  f"the smallest tile this network can use here, {tile},")
    if requested is not None:
        _note_requested_tile(model, image_shape, asked, (tile, h, margin), grown, device, tta)
    return tile, h, margin, pool_step(cfg)


def keeps_freed_memory(
    model: UNet, image_shape: Sequence[int], device: torch.device, tta: bool,
    tile: Any = None, memory_gib: float | None = None, batch_size: int = 1,
) -> bool:
    """Whether a prediction keeps freed memory (:func:`useg.device.freed_memory_kept`) with
    tiles chosen for half the default budget (``tile_geometry(..., freed_kept=True)``).

    Between two tiles glibc hands their large activations back to the kernel, which zeroes
    them again on first touch, a large share of a 3D tile's time on a CPU. Kept, the same peak
    memory holds only smaller tiles, which compute more context again. So: a 3D network on the
    CPU whose tile useg chooses (a tile or budget the caller gave is left as given), several
    tiles, and the smaller tiles' convolutions at most :data:`KEPT_WORK_LIMIT` times those of
    the default ones. A network that predicts in one pass has no next tile to reuse memory for.
    """
    if (device.type != "cpu" or model.config.ndim != 3 or tile is not None
            or memory_gib is not None or tile_dependence(model) is not None):
        return False
    works = []
    for kept in (False, True):
        tile_, h, margin, step = tile_geometry(model, image_shape, None, device, tta,
                                               batch_size=batch_size, freed_kept=kept)
        tiles = len(plan_tiles(image_shape, tile_, h, margin, step))
        works.append((tiles, tiles * conv_macs(model.config, tile_)))
    (tiles, work), (_, kept_work) = works
    return tiles > 1 and kept_work <= KEPT_WORK_LIMIT * work


def _default_tile_within(model: UNet, image_shape: Sequence[int], device: torch.device,
                         budget: float, tta: bool) -> tuple[int, ...]:
    """:func:`default_tile` for ``budget`` bytes, whose tile for test-time augmentation (square
    in the (Y, X) plane, so larger) fits the budget too: the budget the choice is given shrinks
    until it does, or until the smallest tile."""
    tile = default_tile(model, image_shape, device, budget)
    if not tta or tile_dependence(model) is not None:  # no square, or one pass whatever fits
        return tile
    cfg = model.config
    choice, smallest = budget, min_input_shape(cfg)
    while tile != smallest:
        square = _geometry(cfg, valid_input_shape(cfg, tile, mode="up"), tta)[0]
        if peak_bytes(cfg, square, itemsize=4) <= budget:
            return tile
        choice *= 0.8
        tile = default_tile(model, image_shape, device, choice)
    return tile


def _geometry(cfg, tile: tuple[int, ...], tta: bool, exact: bool = True):
    """The tile that prediction runs for a valid ``tile``, its halo and margin.

    For a same-padding network the output within its context of a tile edge sees the tile's
    zero padding; the margin discards it, and with ``exact`` the tile grows (per axis, by
    pooling steps) until the margin covers the context, so that stitching is exact. Test-time
    augmentation turns the (Y, X) plane of a network that treats Y and X alike, so its tile is
    square there."""
    tile = tuple(tile)
    if exact and cfg.padding == "same":
        grown, ctx, step = list(tile), tile_context(cfg), pool_step(cfg)
        for axis in range(cfg.ndim):
            while tile_margin(cfg, grown)[axis] < ctx[axis]:
                grown[axis] += step[axis]
        tile = valid_input_shape(cfg, grown, mode="up")
    if tta and turns_commute(cfg) and tile[-1] != tile[-2]:
        side = max(tile[-2:])
        tile = valid_input_shape(cfg, (*tile[:-2], side, side), mode="up")
    margin = tile_margin(cfg, tile) if cfg.padding == "same" else 0
    return tile, halo(cfg), margin


@contextlib.contextmanager
def tile_notes_said():
    """Within: no :class:`~useg.errors.TileWarning`, for predictions that repeat a geometry
    whose note was given once (the blocks of a volume, the slices of a stack)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TileWarning)
        yield


# A requested tile that costs this many times the work of the default tile is worth a line.
COSTLY_TILE_FACTOR = 3.0


def _note_requested_tile(
    model: UNet, image_shape: Sequence[int], asked: tuple[int, ...], geometry: tuple,
    grown: bool, device: torch.device, tta: bool,
) -> None:
    """One warning when a requested tile had to grow for exact stitching, or keeps so little of
    its output that the image costs several times the work of the default tile (the result is
    the same, only slower: a small tile of a same-padding network can make thousands of
    passes)."""
    cfg = model.config

    def work(tile_, halo_, margin_) -> tuple[int, tuple[int, ...]]:
        plan = plan_tiles(image_shape, tile_, halo_, margin_, pool_step(cfg))
        return conv_macs(cfg, tile_) * len(plan), plan.kept

    notes = []
    tile = geometry[0]
    if grown:
        notes.append(
            f"a tile of {asked} is too small for this same-padding network to discard the "
            f"context it needs at each tile edge ({tile_context(cfg)} "
            f"{'voxels' if cfg.ndim == 3 else 'pixels'} per side), so "
            f"tiles of {tile} are used (the result equals one whole-image pass)")
    mine, kept = work(*geometry)
    default = work(*_geometry(cfg, default_tile(model, image_shape, device), tta))[0]
    if mine > COSTLY_TILE_FACTOR * default:
        notes.append(
            f"{'they' if grown else f'a tile of {tile}'} keep{'' if grown else 's'} only "
            f"{kept} of {'their' if grown else 'its'} output (the rest is context), so this "
            f"image takes about {mine / default:.0f} times the work of the default tile; give "
            "a larger tile, or none")
    if notes:
        warnings.warn(TileWarning("; ".join(notes)), stacklevel=3)


def _refuse_too_large(cfg, tile: tuple[int, ...], device: torch.device, what: str,
                      advice: str, batch_size: int = 1) -> None:
    """One forward pass of ``batch_size`` tiles must fit in the memory of ``device``."""
    need = peak_bytes(cfg, tile, itemsize=4) * batch_size
    have = device_memory(device)
    if need > have:
        batch = f" of {batch_size} tiles" if batch_size > 1 else ""
        raise ConfigError(f"{what} about {need / 2**30:.1f} GiB for one forward pass{batch}, "
                          f"more than the {have / 2**30:.1f} GiB of {device}; {advice}")


def memory_budget(memory_gib: float | None, tile: Any, device: torch.device) -> float | None:
    """The memory budget ``memory_gib`` asks for, in bytes (None for the default one), checked:
    a positive number of GiB, within the memory of ``device``, and not given beside a ``tile``
    (it chooses the tile). Raises :class:`~useg.errors.ConfigError` otherwise."""
    if memory_gib is None:
        return None
    if tile is not None:
        raise ConfigError("give a tile or a memory budget (--tile or --memory), not both: the "
                          "budget chooses the tile")
    if (isinstance(memory_gib, bool) or not isinstance(memory_gib, numbers.Real)
            or not math.isfinite(memory_gib) or memory_gib <= 0):
        raise ConfigError(f"the memory budget (--memory) must be a positive number of GiB, "
                          f"got {memory_gib!r}")
    budget = float(memory_gib) * 2**30
    have = device_memory(device)
    if budget > have:
        raise ConfigError(f"--memory {memory_gib:g} GiB: more than the {have / 2**30:.1f} GiB "
                          f"of {device}")
    return budget


def _check_budget(cfg, tile: tuple[int, ...], budget: float | None, batch_size: int,
                  what: str) -> None:
    """A forward pass of ``batch_size`` tiles must fit a budget the caller asked for (the
    default one is a preference: the smallest tile is used when none fits it)."""
    if budget is None:
        return
    need = peak_bytes(cfg, tile, itemsize=4) * batch_size
    if need > budget:
        batch = f" ({batch_size} at a time: --batch-size)" if batch_size > 1 else ""
        # Three significant digits: a small network's smallest tile needs a few MiB.
        raise ConfigError(f"--memory {budget / 2**30:g} GiB is too little: {what} needs about "
                          f"{need / 2**30:.3g} GiB{batch}")


def _check_one_pass(
    model: UNet, reason: str, image_shape: Sequence[int], tile: tuple[int, ...],
    h: tuple[int, ...], margin: tuple[int, ...] | int, device: torch.device,
) -> None:
    """Refuse to tile a network whose output depends on the tile (``reason``, from
    :func:`tile_dependence`): one pass only, and one that fits in the memory of the device."""
    cfg = model.config
    name = model_name(model)
    try:
        counts = plan_tiles(image_shape, tile, h, margin, pool_step(cfg)).counts
    except ConfigError:
        counts = (2,)
    if any(c > 1 for c in counts):
        whole = whole_image_tile(model, image_shape)
        raise ConfigError(
            f"{name} normalises with the statistics of its input ({reason}), so tiles of "
            f"{tile} would give a result that depends on the tile; it predicts only in one pass "
            f"over the whole image, with a tile of at least {whole}: predict without a tile, "
            "or retrain with running statistics (useg train --running-stats) to predict in tiles"
        )
    _refuse_too_large(
        cfg, tile, device, f"{name} normalises with the statistics of its input ({reason}) and "
        "predicts only in one pass over the whole image, which needs", "predict a smaller "
        "image, or retrain with running statistics (useg train --running-stats) to predict in "
        "tiles")



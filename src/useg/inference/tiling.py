"""Overlap-tile prediction of images of any size, for any tile-wise predictor, in 1, 2 or 3-D.

The tiler knows nothing of networks: it takes a callable mapping a batch of input tiles
``(B, C, *tile)`` to a batch of outputs ``(B, K, *(tile - 2 * halo))`` and three numbers per axis:

- ``halo``: input lost on each side by the callable (92 for the 2D U-Net, 0 for same padding);
- ``margin``: output discarded on each side of every tile (0 for valid-padding networks; for
  same-padding networks the part of the output that sees the zero padding of the tile edge);
- ``step``: tiles start at multiples of it (the product of the network's pooling factors), so
  every tile sees the same pooling grid as one pass over the whole image would.

Context for a tile comes from the real neighbouring pixels wherever the image has them; only
beyond the image border is it mirrored (``numpy.pad(mode="reflect")`` convention, the edge pixel
is not repeated). With a valid-padding network the stitched output is therefore identical to one
forward pass over the whole mirror-padded image: the paper's seamless overlap-tile strategy.

Same-padding networks (policy): each tile's output loses ``margin`` pixels on every side before
stitching, tiles overlap by twice the margin and write disjoint regions, no blending.
``predict_tiled`` takes ``margin`` as given (default 0); :func:`useg.inference.predict.predict`
passes, per axis, the network's receptive radius rounded up to the pooling step, or, where the
tile is too small for that, the largest multiple of the step that still leaves one step of
output (:func:`useg.nets.geometry.tile_margin`).
The remaining deviation from the whole-image pass is measured in ``tests/test_tiling.py``.

Memory is bounded by a batch of tiles: inputs are read tile by tile from any array-like that
supports slicing (NumPy, memmap, zarr, h5py) and outputs are written with slice assignment into
any preallocated array-like.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from useg.errors import ConfigError
from useg.io import normalize as norm
from useg.io.arrays import read_tile, release_pages

__all__ = ["TilePlan", "plan_tiles", "predict_tiled"]

Predictor = Callable[[np.ndarray], np.ndarray]


def _per_axis(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ConfigError(f"{name} needs {ndim} values, got {value}")
    return value


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image go.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape of the image.
    tile : tuple of int
        Spatial shape of one input tile.
    halo, margin : tuple of int
        Input lost per side by the predictor, and output discarded per side of each tile.
    stride : tuple of int
        Distance between consecutive tiles (a multiple of the pooling step).
    counts : tuple of int
        Number of tiles per axis.
    """

    shape: tuple[int, ...]
    tile: tuple[int, ...]
    halo: tuple[int, ...]
    margin: tuple[int, ...]
    stride: tuple[int, ...]
    counts: tuple[int, ...]

    @property
    def context(self) -> tuple[int, ...]:
        """Input pixels needed on each side of the region a tile writes."""
        return tuple(h + m for h, m in zip(self.halo, self.margin, strict=True))

    @property
    def kept(self) -> tuple[int, ...]:
        """Output pixels a tile keeps per axis."""
        return tuple(t - 2 * c for t, c in zip(self.tile, self.context, strict=True))

    def __len__(self) -> int:
        return math.prod(self.counts)

    def padded_shape(self) -> tuple[int, ...]:
        """Shape of the mirror-padded image that the tiles cover."""
        return tuple(
            (n - 1) * s + t for n, s, t in zip(self.counts, self.stride, self.tile, strict=True)
        )

    def boundaries(self) -> tuple[tuple[int, ...], ...]:
        """Per axis, the positions where one tile's written region ends and the next begins
        (and the image's two ends): the only places a region of the plan can be cut."""
        return tuple(
            (*range(0, n * s, s), size)
            for n, s, size in zip(self.counts, self.stride, self.shape, strict=True)
        )

    def tiles(
        self, ranges: Sequence[range] | None = None
    ) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """Yield (input start in image coordinates, region written in the image, same region in
        the tile's kept output) for every tile, or for the tile indices in ``ranges`` (one range
        per axis), in C order."""
        ctx, kept = self.context, self.kept
        if ranges is None:
            ranges = [range(n) for n in self.counts]
        for idx in itertools.product(*ranges):
            start, dst, src = [], [], []
            for i, n, s, c, k, size in zip(
                idx, self.counts, self.stride, ctx, kept, self.shape, strict=True
            ):
                lo = i * s
                # Tiles overlap when the stride is shorter than what they keep; each writes only
                # up to where the next begins, so every output pixel is written exactly once.
                hi = min(size, lo + k if i == n - 1 else lo + s)
                start.append(lo - c)
                dst.append(slice(lo, hi))
                src.append(slice(0, hi - lo))
            yield tuple(start), tuple(dst), tuple(src)


def plan_tiles(
    shape: Sequence[int],
    tile: Sequence[int] | int,
    halo: Sequence[int] | int = 0,
    margin: Sequence[int] | int = 0,
    step: Sequence[int] | int = 1,
) -> TilePlan:
    """Plan the tiles that cover an image.

    Examples
    --------
    >>> plan = plan_tiles((1000, 700), tile=572, halo=92, step=16)
    >>> plan.kept, plan.stride, plan.counts
    ((388, 388), (384, 384), (3, 2))
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    tile = _per_axis(tile, ndim, "tile")
    halo = _per_axis(halo, ndim, "halo")
    margin = _per_axis(margin, ndim, "margin")
    step = _per_axis(step, ndim, "step")
    if any(s < 1 for s in shape):
        raise ConfigError(f"cannot tile an empty image of shape {shape}")
    stride, counts = [], []
    for size, t, h, m, st in zip(shape, tile, halo, margin, step, strict=True):
        kept = t - 2 * (h + m)
        if kept < 1:
            raise ConfigError(
                f"tile {tile} is too small: it keeps {kept} pixels after the halo {halo} "
                f"and margin {margin}"
            )
        s = (kept // st) * st
        if s < 1:
            raise ConfigError(
                f"tile {tile} keeps {kept} pixels per axis, less than the pooling step {step}; "
                "use a larger tile"
            )
        stride.append(s)
        counts.append(1 if size <= kept else math.ceil((size - kept) / s) + 1)
    return TilePlan(shape, tile, halo, margin, tuple(stride), tuple(counts))


def _region_on_plan(
    plan: TilePlan, region: Sequence[slice] | None
) -> tuple[tuple[int, ...], tuple[int, ...], list[range]]:
    """Origin, extent and tile index ranges of a region cut at the plan's tile boundaries."""
    if region is None:
        return (0,) * len(plan.shape), plan.shape, [range(n) for n in plan.counts]
    if len(region) != len(plan.shape):
        raise ConfigError(f"region needs {len(plan.shape)} slices, got {len(region)}")
    origin, extent, ranges = [], [], []
    for sl, cuts, s, n, size in zip(
        region, plan.boundaries(), plan.stride, plan.counts, plan.shape, strict=True
    ):
        lo, hi, st = sl.indices(size)
        if st != 1 or hi <= lo or lo not in cuts or hi not in cuts:
            raise ConfigError(
                f"region {tuple(region)} must start and end on tile boundaries "
                f"(multiples of the stride {plan.stride} or the image end {plan.shape})"
            )
        origin.append(lo)
        extent.append(hi - lo)
        ranges.append(range(lo // s, n if hi == size else hi // s))
    return tuple(origin), tuple(extent), ranges


def check_batch_size(batch_size: Any) -> None:
    """Raise :class:`~useg.errors.ConfigError` unless ``batch_size`` (tiles per forward pass)
    is a positive integer."""
    if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
            or batch_size < 1):
        raise ConfigError(f"batch_size (--batch-size) must be a positive integer, got "
                          f"{batch_size!r}")


def predict_tiled(
    predictor: Predictor,
    image: Any,
    *,
    tile: Sequence[int] | int,
    out_channels: int,
    halo: Sequence[int] | int = 0,
    margin: Sequence[int] | int = 0,
    step: Sequence[int] | int = 1,
    batch_size: int = 1,
    out: Any = None,
    dtype: Any = np.float32,
    progress: bool | Callable[[int, int], None] = False,
    prefetch: bool = True,
    region: Sequence[slice] | None = None,
) -> Any:
    """Apply a tile-wise predictor to an image of any size and stitch the outputs.

    Parameters
    ----------
    predictor : callable
        Maps a float32 batch ``(B, C, *tile)`` (float64 for an image of values float32
        cannot hold exactly) to ``(B, out_channels, *(tile - 2 * halo))``.
    image : array-like
        ``(C, *spatial)``; anything with ``.shape`` and slicing (NumPy, memmap, zarr, h5py).
    tile : int or tuple
        Input tile shape; see :func:`useg.nets.geometry.valid_input_shape` for a network's
        valid tiles.
    out_channels : int
        Channels of the predictor's output.
    halo, margin, step : int or tuple
        See the module docstring.
    batch_size : int
        Tiles per call of the predictor.
    out : array-like, optional
        Preallocated ``(out_channels, *spatial)`` output with slice assignment (e.g. a memmap or a
        zarr array); a new NumPy array when omitted.
    progress : bool or callable
        A progress bar (tqdm) when True; a callable receives (tiles done, tiles total).
    prefetch : bool
        Read the next batch of tiles in a background thread while the predictor runs.
    region : tuple of slice, optional
        Predict only this box of the image, with the very tiles a whole-image call uses there
        (so the values are the same); its bounds must be among :meth:`TilePlan.boundaries`.
        ``out`` then has the shape ``(out_channels, *box)``. Used to split an image into
        independent blocks (:mod:`useg.inference.blocks`).

    Returns
    -------
    The output array (``out`` when given).

    Examples
    --------
    >>> img = np.arange(2 * 50 * 30, dtype=np.float32).reshape(2, 50, 30)
    >>> crop = lambda x: x[:, :, 4:-4, 4:-4]  # a predictor with a 4-pixel halo
    >>> res = predict_tiled(crop, img, tile=24, halo=4, out_channels=2)
    >>> bool(np.array_equal(res, img))
    True
    """
    if image.ndim < 2:
        raise ConfigError(f"image must be (C, *spatial), got shape {image.shape}")
    check_batch_size(batch_size)
    spatial = tuple(image.shape[1:])
    plan = plan_tiles(spatial, tile, halo, margin, step)
    origin, extent, ranges = _region_on_plan(plan, region)
    out = _output_array(out, (out_channels, *extent), dtype)
    tiles = _tiles_in_box(plan, ranges, origin)
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    shown = _Progress(progress, len(tiles))
    reading = _read_ahead(batches, functools.partial(_gather, image, plan), prefetch)
    try:
        for batch, x in reading:
            _write_batch(out, np.asarray(predictor(x)), batch, plan, out_channels, dtype)
            release_pages(out)
            shown.update(len(batch))
    finally:
        reading.close()  # stops the background read before the caller goes on
        shown.close()
    return out


# A tile to predict: its input start, where its output goes in ``out`` and which part of the
# predictor's output (after the margin) goes there.
_Tile = tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]


def _output_array(out: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``out`` when it has ``shape`` (else :class:`~useg.errors.ConfigError`), or a new array."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape:
        raise ConfigError(f"out has shape {out.shape}, expected {shape}")
    return out


def _tiles_in_box(
    plan: TilePlan, ranges: list[range], origin: tuple[int, ...]
) -> list[_Tile]:
    """The tiles of ``plan`` in ``ranges``, writing relative to the box starting at ``origin``."""
    return [
        (start, tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, origin, strict=True)),
         src)
        for start, dst, src in plan.tiles(ranges)
    ]


class _Progress:
    """Tiles done, on a tqdm bar (``progress=True``) or to a callable (tiles done, total)."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.bar = None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="tile", desc="predict", leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif callable(self.progress):
            self.progress(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_ahead(
    batches: list[list[_Tile]], read: Callable[[list[_Tile]], np.ndarray], prefetch: bool
) -> Iterator[tuple[list[_Tile], np.ndarray]]:
    """Each batch with its input (``read(batch)``); with ``prefetch``, the next batch is read in
    a background thread while the caller predicts the current one."""
    pool = ThreadPoolExecutor(1) if prefetch and len(batches) > 1 else None
    try:
        pending = pool.submit(read, batches[0]) if pool else None
        for bi, batch in enumerate(batches):
            x = pending.result() if pool else read(batch)
            if pool and bi + 1 < len(batches):
                pending = pool.submit(read, batches[bi + 1])
            yield batch, x
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)


def _gather(image: Any, plan: TilePlan, batch: list[_Tile]) -> np.ndarray:
    """The input tiles of ``batch`` as ``(B, C, *tile)``, mirrored beyond the image: float32,
    or float64 for an image whose values float32 cannot hold exactly (float64, 32- and 64-bit
    integers), which the predictor normalises before anything rounds them."""
    # A tile's rows of a wide memmap map far more than the tile (whole pages, and Linux maps up
    # to 64 KiB around each page fault): read a memmap in slabs and unmap each, so that reading
    # the next tile adds little to the memory the predictor holds meanwhile.
    slab = 64 if isinstance(image, np.memmap) else plan.tile[0]
    x = np.empty((len(batch), image.shape[0], *plan.tile), dtype=norm.raw_dtype(image.dtype))
    for k, (start, _, _) in enumerate(batch):
        for lo in range(0, plan.tile[0], slab):
            hi = min(lo + slab, plan.tile[0])
            x[k, :, lo:hi] = read_tile(image, (start[0] + lo, *start[1:]),
                                       (hi - lo, *plan.tile[1:]))
            release_pages(image)
    return x


def _write_batch(
    out: Any, y: np.ndarray, batch: list[_Tile], plan: TilePlan, out_channels: int, dtype: Any
) -> None:
    """Write the predictor's outputs ``y`` of ``batch`` into ``out``, each without its margin;
    raises :class:`~useg.errors.ConfigError` when ``y`` has the wrong shape."""
    expect = tuple(t - 2 * h for t, h in zip(plan.tile, plan.halo, strict=True))
    if y.shape[1:] != (out_channels, *expect):
        raise ConfigError(
            f"predictor returned tiles of shape {y.shape[1:]}, expected "
            f"{(out_channels, *expect)} for input tiles {plan.tile}"
        )
    for k, (_, dst, src) in enumerate(batch):
        region = tuple(
            slice(m + s.start, m + s.stop) for m, s in zip(plan.margin, src, strict=True)
        )
        out[(slice(None), *dst)] = y[(k, slice(None), *region)].astype(dtype, copy=False)

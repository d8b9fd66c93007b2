"""Objects of images larger than memory: :func:`instances_in_blocks`.

Each block is labelled by :func:`useg.postprocess.instances.instances_from_probabilities` from a
window that adds a halo on every side, and only the block itself (its core) is kept. Ids are made
global block by block; an object that continues across a block border carries different ids on
both sides, and these are merged: each block compares its own labels on the one-pixel ring
around its core with the ids already written there by the blocks before it (the ring includes
the diagonal neighbours, so any connectivity is covered), and a union-find over the pairs found
gives every object one id. A second pass writes the final ids, consecutive from 1.

When the halo is at least the extent of every connected piece of the foreground (of the
flooded region) that reaches into a block, plus one pixel, each window sees those pieces whole
and labels them exactly as one pass over the whole image would (the flooding has no ties, see
:mod:`useg.postprocess.instances`): the result is then the same partition as
:func:`~useg.postprocess.instances.instances_from_probabilities` of the whole image, whatever
the block size, blocks smaller than an object included. With a smaller halo, objects cut by a
window's edge may be split or merged differently near block borders. The ``"boundary"`` target
floods the whole image as one piece, so for it the result is exact only as far as the catchment
of each body lies within the halo. Joining across weak boundaries (``merge_below``) is done within
each window, so it is exact as far as every chain of joined pieces lies within the halo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from useg.errors import InputError
from useg.postprocess.agglomerate import component_roots
from useg.postprocess.instances import InstanceParams, instances_from_probabilities

__all__ = ["instances_in_blocks"]


def instances_in_blocks(
    probs: Any,
    out: Any,
    target: str,
    params: InstanceParams,
    block: int | Sequence[int],
    halo: int | Sequence[int],
    spacing: Sequence[float] | None = None,
    on_cut: Callable[[int], None] | None = None,
) -> int:
    """Label the objects of ``probs`` block by block into ``out``; return their number.

    Parameters
    ----------
    probs : array-like, shape (C, *spatial)
        Class probabilities supporting NumPy slicing (NumPy, memmap, zarr, HDF5); read one
        window (block plus halo) at a time.
    out : array-like, shape spatial
        Label store (NumPy, zarr, ...) of an unsigned integer type, uint32 for large images;
        written block by block, twice. It must hold every id before merging (at most the sum
        over blocks of the objects in each block).
    target : {"instances", "three_class", "boundary"}
        As for :func:`~useg.postprocess.instances.instances_from_probabilities`.
    params : InstanceParams
        As for :func:`~useg.postprocess.instances.instances_from_probabilities`.
    block : int or sequence of int
        Block size per spatial axis (one number: all axes); align it with the chunks of ``out``.
    halo : int or sequence of int
        Context added on each side of a block (see the module's note on exactness).
    spacing : sequence of float, optional
        Voxel size per spatial axis (only the ratios count).
    on_cut : callable, optional
        Called once, when some objects reached the edge of a window inside the image (their
        block's context did not hold them whole, so they may be split or joined otherwise
        than in one whole-image pass), with the number of such objects.

    Returns
    -------
    int
        Number of objects; their ids in ``out`` are 1..K, 0 is background.
    """
    shape = tuple(int(n) for n in probs.shape[1:])
    ndim = len(shape)
    if ndim == 0:
        raise InputError(f"probabilities must be (C, [Z,] Y, X), got shape {probs.shape}")
    if tuple(out.shape) != shape:
        raise InputError(f"the label store has shape {tuple(out.shape)}, the probabilities' "
                         f"spatial shape is {shape}")
    dtype = np.dtype(out.dtype)
    if dtype.kind != "u":
        raise InputError(f"the label store must have an unsigned integer type, got {dtype}")
    block = _per_axis(block, ndim, "block", 1)
    halo = _per_axis(halo, ndim, "halo", 0)
    counts = tuple(-(-n // b) for n, b in zip(shape, block, strict=True))
    cores = [
        tuple(slice(i * b, min((i + 1) * b, n))
              for i, b, n in zip(index, block, shape, strict=True))
        for index in np.ndindex(*counts)
    ]
    # Pass 1: label each block, give its objects ids unique in the image, pair them with the
    # ids of the blocks before it across its border.
    ids = 0
    pairs, cut = [], []
    for number, core in enumerate(cores):
        window = tuple(slice(max(c.start - h, 0), min(c.stop + h, n))
                       for c, h, n in zip(core, halo, shape, strict=True))
        labels = instances_from_probabilities(
            np.asarray(probs[(slice(None), *window)]), target, params, spacing=spacing)
        inner = _within(core, window)
        present = np.unique(labels[inner])
        present = present[present > 0]
        if ids + present.size > np.iinfo(dtype).max:
            raise InputError(f"the label store's type {dtype} cannot hold the ids of the blocks "
                             "before they are merged; use uint32 or larger blocks")
        lut = np.zeros(int(labels.max()) + 1, np.int64)
        lut[present] = np.arange(ids + 1, ids + present.size + 1)
        out[core] = lut[labels[inner]].astype(dtype)
        ids += present.size
        cut.append(lut[np.intersect1d(_on_inner_faces(labels, window, shape), present)])
        ring = tuple(slice(max(c.start - 1, 0), min(c.stop + 1, n))
                     for c, n in zip(core, shape, strict=True))
        before = _earlier_blocks(ring, block, counts, number)
        if before.any():
            mine = lut[labels[_within(ring, window)]][before]
            theirs = np.asarray(out[ring]).astype(np.int64)[before]
            both = (mine > 0) & (theirs > 0)
            if both.any():
                pairs.append(np.unique(np.stack([mine[both], theirs[both]], axis=1), axis=0))
    # Pass 2: one id per merged object, consecutive.
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    roots = component_roots(ids + 1, edges)
    _, final = np.unique(roots, return_inverse=True)  # node 0 is its own root: stays 0
    final = final.astype(dtype)
    for core in cores:
        out[core] = final[np.asarray(out[core]).astype(np.int64)]
    n_cut = np.unique(final[np.concatenate(cut)]).size if cut else 0
    if n_cut and on_cut is not None:
        on_cut(int(n_cut))
    return int(final.max()) if final.size else 0


def _on_inner_faces(labels: np.ndarray, window: tuple[slice, ...],
                    shape: tuple[int, ...]) -> np.ndarray:
    """The ids on the faces of ``window`` that lie inside the image (not on its border)."""
    found = [np.zeros(0, labels.dtype)]
    for axis, (w, n) in enumerate(zip(window, shape, strict=True)):
        for index, inside in ((0, w.start > 0), (-1, w.stop < n)):
            if inside:
                found.append(np.unique(np.take(labels, index, axis=axis)))
    ids = np.unique(np.concatenate(found))
    return ids[ids > 0]


def _per_axis(value: int | Sequence[int], ndim: int, name: str, least: int) -> tuple[int, ...]:
    values = (value,) * ndim if np.isscalar(value) else tuple(value)
    if len(values) != ndim:
        raise InputError(f"{name} must have one size per spatial axis ({ndim}), got {values}")
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= least
               for v in values):
        raise InputError(f"{name} must be integers >= {least}, got {values}")
    return tuple(int(v) for v in values)


def _within(box: tuple[slice, ...], window: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box`` (image coordinates) in the coordinates of ``window``, which contains it."""
    return tuple(slice(b.start - w.start, b.stop - w.start)
                 for b, w in zip(box, window, strict=True))


def _earlier_blocks(
    box: tuple[slice, ...], block: tuple[int, ...], counts: tuple[int, ...], number: int,
) -> np.ndarray:
    """True on the pixels of ``box`` that belong to blocks numbered (in raster order) below
    ``number``: those whose ids are written already."""
    index = np.zeros((1,) * len(box), np.int64)
    for axis, (sl, b) in enumerate(zip(box, block, strict=True)):
        along = np.arange(sl.start, sl.stop) // b
        index = index * counts[axis] + along.reshape((-1,) + (1,) * (len(box) - axis - 1))
    return np.broadcast_to(index < number, tuple(s.stop - s.start for s in box))

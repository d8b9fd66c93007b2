"""Blocks of an image cut on its overlap-tile plan, and the prediction of one block on a worker.

Why the result equals :func:`useg.inference.predict.predict` exactly
--------------------------------------------------------------------
The blocks are cut from the overlap-tile plan of the *whole* image
(:func:`useg.inference.tiling.plan_tiles` with the tile, halo, margin and pooling step
:func:`~useg.inference.predict.predict` would use), only at the places where one tile's written
region ends and the next begins (multiples of the tile stride, itself a multiple of the pooling
step). A block is then predicted by ``predict(..., region=block)``, which runs exactly the
whole-image plan's tiles of that block: same positions, same shapes, same input pixels (read
from the neighbouring chunks; mirrored only beyond the volume border), same normalisation
(computed once for the whole image), same predictor. Every output pixel is therefore computed by
the same tile with the same arithmetic as in one single-process call, for valid and
same-padding networks alike, with or without test-time augmentation. (With ``batch_size > 1``
the tiles are batched per block rather than over the image; networks whose output depends on
the batch, such as batch statistics at inference, then differ.)

Blocks, chunks and markers
--------------------------
Block sizes are whole numbers of tile strides; the output arrays are chunked by the block, so no
two blocks write the same chunk (the last block along an axis also covers the partial chunk
after it). Each finished block leaves a marker file in ``<output array>/.useg-run/done/``,
written atomically *after* all its data, so an interrupted block (data partly written, no
marker) is redone by the next run (:mod:`useg.inference.dask`).

Workers receive the model file's path and load it themselves (once per worker process, or per
thread with the threaded scheduler).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, InputError, one_line
from useg.inference.tiling import TilePlan
from useg.io.arrays import mirror_indices
from useg.io.chunked import as_channels_first, open_array
from useg.io.files import make_folder, write_json
from useg.labels import most_likely_class

__all__ = ["BlockPlan", "finished_blocks", "marker_name", "plan_blocks", "predict_block"]

_DEFAULT_BLOCK = {1: 1 << 16, 2: 2048, 3: 256}


# ----------------------------------------------------------------------------------------------
# blocks


@dataclass(frozen=True)
class BlockPlan:
    """Blocks of an image cut on the tile grid of its overlap-tile plan.

    Attributes
    ----------
    tiles : TilePlan
        The whole image's tile plan.
    block : tuple of int
        Block shape (a whole number of tile strides per axis); also the output chunk shape.
    counts : tuple of int
        Blocks per axis.
    """

    tiles: TilePlan
    block: tuple[int, ...]
    counts: tuple[int, ...]

    def __len__(self) -> int:
        return math.prod(self.counts)

    def region(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The box of block ``index``; the last block along an axis runs to the image end."""
        out = []
        for i, b, n, size in zip(index, self.block, self.counts, self.tiles.shape, strict=True):
            out.append(slice(i * b, size if i == n - 1 else (i + 1) * b))
        return tuple(out)

    def indices(self) -> Iterator[tuple[int, ...]]:
        """Block indices in C order."""
        return iter(np.ndindex(*self.counts))

    def input_box(self, index: Sequence[int]) -> tuple[slice, ...]:
        """The box of the image that the block's tiles read (mirrored positions included)."""
        box = []
        for lo_hi, s, n, c, t, size in zip(
            self.region(index), self.tiles.stride, self.tiles.counts, self.tiles.context,
            self.tiles.tile, self.tiles.shape, strict=True,
        ):
            first = lo_hi.start // s
            last = n - 1 if lo_hi.stop == size else lo_hi.stop // s - 1
            idx = mirror_indices(first * s - c, (last - first) * s + t, size)
            box.append(slice(int(idx.min()), int(idx.max()) + 1))
        return tuple(box)


def plan_blocks(tiles: TilePlan, block: Sequence[int] | int | None = None) -> BlockPlan:
    """Cut an image's tile plan into blocks of about ``block`` pixels per axis.

    Each axis's block is rounded up to a whole number of tile strides (at least one), so block
    borders fall where one tile's output ends and the next begins.

    Examples
    --------
    >>> from useg.inference.tiling import plan_tiles
    >>> tp = plan_tiles((100, 300), tile=44, halo=20, step=4)
    >>> tp.stride
    (4, 4)
    >>> bp = plan_blocks(tp, 64)
    >>> bp.block, bp.counts, bp.region((1, 4))
    ((64, 64), (2, 5), (slice(64, 100, None), slice(256, 300, None)))
    """
    nd = len(tiles.shape)
    if block is None:
        block = tuple(min(_DEFAULT_BLOCK[min(nd, 3)], n) for n in tiles.shape)
    elif isinstance(block, (int, np.integer)):
        block = (int(block),) * nd
    block = tuple(int(b) for b in block)
    if len(block) != nd or any(b < 1 for b in block):
        raise ConfigError(f"block needs {nd} positive sizes, got {block}")
    sizes, counts = [], []
    for b, s, n in zip(block, tiles.stride, tiles.counts, strict=True):
        m = min(max(1, math.ceil(b / s)), n)
        sizes.append(m * s)
        counts.append(math.ceil(n / m))
    return BlockPlan(tiles, tuple(sizes), tuple(counts))


# ----------------------------------------------------------------------------------------------
# markers


def marker_name(index: Sequence[int]) -> str:
    """The name of block ``index``'s marker file (``1-0-2``)."""
    return "-".join(str(i) for i in index)


def finished_blocks(done_dir: str | os.PathLike) -> set[str]:
    """Marker names of the blocks done in ``done_dir`` (created when missing). A marker whose
    writer was killed before its rename (a hidden temporary file) is removed."""
    done_dir = make_folder(done_dir)
    finished = set()
    for name in os.listdir(done_dir):
        if name.startswith("."):
            (done_dir / name).unlink(missing_ok=True)
        else:
            finished.add(name)
    return finished


# ----------------------------------------------------------------------------------------------
# worker side


class _Prefetched:
    """The image as an array-like whose reads inside one box come from a copy read in one go
    (the tiles of a block overlap, and chunked stores have no cache)."""

    def __init__(self, image: Any, box: tuple[slice, ...], name: str):
        self.image = image
        self.shape = tuple(image.shape)
        self.ndim = len(self.shape)
        self.dtype = image.dtype
        self.box = box
        try:
            self.data = np.asarray(image[(slice(None), *box)])
        except Exception as exc:  # noqa: BLE001 - the edge: a corrupt chunk, a codec error
            raise InputError(f"{name}: cannot read the block at "
                             f"{[(b.start, b.stop) for b in box]} ({one_line(exc)})") from None

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple) and len(key) == self.ndim and key[0] == slice(None):
            local = []
            for k, b, n in zip(key[1:], self.box, self.shape[1:], strict=True):
                if not isinstance(k, slice):
                    break
                lo, hi, st = k.indices(n)
                if st != 1 or lo < b.start or hi > b.stop:
                    break
                local.append(slice(lo - b.start, hi - b.start))
            else:
                return self.data[(slice(None), *local)]
        return np.asarray(self.image[key])


_LOCAL = threading.local()


def _cache() -> dict[Any, Any]:
    if not hasattr(_LOCAL, "cache"):
        _LOCAL.cache = {}
    return _LOCAL.cache


def _worker_model(path: str, device: Any) -> Any:
    from useg.nets.checkpoint import load_model

    st = os.stat(path)
    key = ("model", path, st.st_mtime_ns, st.st_size, str(device))
    cache = _cache()
    if key not in cache:
        for k in [k for k in cache if k[0] == "model"]:
            del cache[k]
        cache[key] = load_model(path, device=device)
    return cache[key]


def _worker_array(spec: str, mode: str) -> Any:
    key = ("array", spec, mode)
    cache = _cache()
    if key not in cache:
        cache[key] = open_array(spec, mode)[0]
    return cache[key]


def predict_block(job: dict[str, Any], index: tuple[int, ...], image: Any = None) -> dict:
    """Predict one block, write it, then mark it done; a block marked done already is skipped.

    Runs on a worker; ``job`` describes the run (model file, input, outputs, tile, settings),
    as :func:`useg.inference.dask.predict_dask` builds it.
    """
    import torch

    from useg.device import resolve_device
    from useg.inference.predict import predict
    from useg.inference.tile_choice import tile_notes_said

    start, cpu = time.perf_counter(), time.process_time()
    marker = Path(job["done_dir"]) / marker_name(index)
    blocks: BlockPlan = job["blocks"]
    region = blocks.region(index)
    voxels = math.prod(r.stop - r.start for r in region)
    if marker.exists():
        return {"block": index, "skipped": True, "voxels": voxels}
    if job["torch_threads"]:
        torch.set_num_threads(job["torch_threads"])
    device = resolve_device(job["device"])
    model = _worker_model(job["model"], device)
    if image is None:
        image = _worker_array(job["input"], "r")
    image = as_channels_first(image, job["axes"], model.config.ndim)
    source = _Prefetched(image, blocks.input_box(index), job["input"] or "the image")
    # The tile was chosen, and any note on it said, once for the whole volume.
    with tile_notes_said():
        probs = predict(
            model, source, tile=job["tile"], device=device, precision=job["precision"],
            tta=job["tta"], batch_size=job["batch_size"], stats=job["stats"], region=region,
        )
    if job["probabilities"]:
        _worker_array(job["probabilities"], "r+")[(slice(None), *region)] = probs
    if job["labels"]:
        out = _worker_array(job["labels"], "r+")
        out[region] = most_likely_class(probs, out.dtype, threshold=job.get("threshold"))
    seconds = time.perf_counter() - start
    # Process CPU time: that of this block alone when a worker runs one block at a time.
    cpu = time.process_time() - cpu
    where = f"{socket.gethostname()}:{os.getpid()}"
    write_json(marker, {"block": list(index), "seconds": seconds, "worker": where})
    return {"block": index, "skipped": False, "voxels": voxels, "seconds": seconds,
            "cpu_seconds": cpu, "worker": where}

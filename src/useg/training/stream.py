"""Random training tiles for a valid-padding network, drawn from samples without coordination.

:class:`TileStream` yields augmented tiles (input tile with real or mirrored context, target and
weights cropped to the network's output). Randomness is a pure function of (seed, item index):
the tile of training step ``k`` is the same whether the run was interrupted before it or not,
which makes resumed runs match uninterrupted ones, and lets several worker processes draw tiles
without coordination.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from useg.errors import InputError
from useg.io.arrays import read_tile
from useg.labels import IGNORE
from useg.training.samples import Sample

__all__ = ["TileStream", "item_generator"]


# Packed batches from this size on travel from loader workers in shared memory (measured
# crossover on a 2-core machine: below it, pickling through the pipe costs less CPU and latency).
_SHARED_BATCH_BYTES = 1 << 20


def item_generator(seed: int, index: int) -> np.random.Generator:
    """The random generator of training item ``index``: independent of how items are split
    between workers or runs."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


class TileStream(torch.utils.data.IterableDataset):
    """Endless stream of augmented training tiles ``(image, target, weight)``.

    Parameters
    ----------
    samples : list of Sample
    in_shape, out_shape : tuple of int
        Network input tile and output shape (``out = in - 2 * halo`` for valid padding).
    augment : dict or None
        Options for :func:`useg.training.augment.augment_sample` (its ``options``; None disables
        augmentation).
    seed : int
    start : int
        Index of the first item (the step to resume from, times the batch size).
    labelled_fraction : float
        Probability that a tile is centred on a labelled pixel of a sparse annotation (the rest
        are uniform), so sparse slices are seen often enough.
    """

    def __init__(
        self,
        samples: list[Sample],
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        start: int = 0,
        labelled_fraction: float = 0.75,
    ):
        super().__init__()
        if not samples:
            raise InputError("no training samples")
        self.samples = samples
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(out_shape)
        self.augment = augment
        self.seed = seed
        self.start = start
        self.labelled_fraction = labelled_fraction
        sizes = np.array([float((s.weight > 0).sum()) for s in samples])
        self._p = sizes / sizes.sum()

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training tile of item ``index`` (deterministic)."""
        rng = item_generator(self.seed, index)
        sample = self.samples[int(rng.choice(len(self.samples), p=self._p))]
        spatial = sample.target.shape
        if sample.labelled is not None and rng.random() < self.labelled_fraction:
            centre = np.unravel_index(int(rng.choice(sample.labelled)), spatial)
        else:
            centre = tuple(int(rng.integers(0, n)) for n in spatial)
        # Read a window large enough that rotations and deformations pull real pixels in.
        window = self.in_shape
        if self.augment is not None:
            grow = math.sqrt(2.0) if self.augment.get("rotate", True) else 1.0
            window = tuple(int(math.ceil(n * grow)) + 8 for n in self.in_shape)
        start = tuple(c - w // 2 for c, w in zip(centre, window, strict=True))
        image = read_tile(sample.image, start, window)
        # Targets and weights: no label (weight 0) outside, which mirroring would invent.
        target = read_tile(sample.target[np.newaxis], start, window, fill=IGNORE)[0]
        weight = read_tile(sample.weight[np.newaxis], start, window, fill=0.0)[0]
        if self.augment is not None:
            image, target, weight = _augment(image, target, weight, self.in_shape,
                                             self.out_shape, rng, self.augment, sample.spacing)
        image = _center(image, self.in_shape, channels=True)
        target = _center(target, self.out_shape)
        weight = _center(weight, self.out_shape)
        return (np.ascontiguousarray(image, dtype=np.float32),
                np.ascontiguousarray(target, dtype=np.int64),
                np.ascontiguousarray(weight, dtype=np.float32))

    def _layout(self, batch: int) -> list[tuple[torch.dtype, tuple[int, ...], int, int]]:
        """(dtype, batch shape, byte offset, byte size) of the images, targets and weights in a
        packed batch; each part starts on a 64-byte boundary."""
        channels = self.samples[0].image.shape[0]
        parts = [(torch.float32, (batch, channels, *self.in_shape)),
                 (torch.int64, (batch, *self.out_shape)),
                 (torch.float32, (batch, *self.out_shape))]
        layout, offset = [], 0
        for dtype, shape in parts:
            size = math.prod(shape) * dtype.itemsize
            layout.append((dtype, shape, offset, size))
            offset += -(-size // 64) * 64
        return layout

    def collate(
        self, items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
    ) -> np.ndarray | torch.Tensor:
        """Pack items (from :meth:`item`) into one byte array; :meth:`unpack` splits it.

        Used as the loader's ``collate_fn``. The result is a NumPy array, except for batches of
        1 MiB or more inside a loader worker: a shared-memory tensor then. A worker pickles a
        NumPy array through its pipe but hands each tensor over in its own shared-memory
        segment with a socket exchange per file descriptor; for a 2D tile (310 kB) one array
        costs about 0.4 ms of CPU on both sides together where three tensors cost about 3 ms,
        and waits less for the worker to be scheduled on a busy machine. Larger batches are
        cheaper in shared memory, and one segment is still better than three.

        Examples
        --------
        >>> from useg.training.samples import make_sample
        >>> img = np.zeros((1, 12, 12), np.float32)
        >>> s = make_sample(img, np.eye(12, dtype=int), w0=0)
        >>> stream = TileStream([s], (8, 8), (4, 4), augment=None)
        >>> x, y, w = stream.unpack(stream.collate([stream.item(0), stream.item(1)]), 2)
        >>> tuple(x.shape), y.dtype, tuple(w.shape)
        ((2, 1, 8, 8), torch.int64, (2, 4, 4))
        """
        layout = self._layout(len(items))
        nbytes = layout[-1][2] + layout[-1][3]
        shared = nbytes >= _SHARED_BATCH_BYTES and torch.utils.data.get_worker_info() is not None
        if shared:
            buffer = torch.empty(nbytes, dtype=torch.uint8).share_memory_()
        else:
            buffer = torch.from_numpy(np.empty(nbytes, dtype=np.uint8))
        columns = zip(*items, strict=True)  # all images, all targets, all weights
        for (dtype, shape, offset, size), arrays in zip(layout, columns, strict=True):
            part = buffer[offset:offset + size].view(dtype).view(shape)
            for j, array in enumerate(arrays):
                part[j].copy_(torch.from_numpy(array))
        return buffer if shared else buffer.numpy()

    def unpack(
        self, buffer: np.ndarray | torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, *in_shape)``, targets and weights ``(B, *out_shape)`` of a buffer from
        :meth:`collate` (views into it, on its device)."""
        buffer = torch.as_tensor(buffer)
        layout = self._layout(batch)
        if buffer.dtype != torch.uint8 or buffer.numel() != layout[-1][2] + layout[-1][3]:
            raise InputError(
                f"packed batch of {buffer.numel()} bytes does not hold {batch} tile(s) of "
                f"{self.in_shape} -> {self.out_shape}"
            )
        x, y, w = (buffer[offset:offset + size].view(dtype).view(shape)
                   for dtype, shape, offset, size in layout)
        return x, y, w

    def shard(self, rank: int, world: int, batch_size: int) -> TileStream:
        """Make this stream yield process ``rank``'s share of a ``world``-process run.

        Step ``k`` of the whole run uses items ``k * B * world ... (k + 1) * B * world - 1`` (B the
        per-process batch); process ``rank`` takes ``B`` consecutive ones. The union over the
        processes is exactly what one process with a batch of ``B * world`` would see.
        """
        self.rank, self.world, self.batch_size = rank, world, batch_size
        return self

    def global_index(self, position: int) -> int:
        """Item index of the ``position``-th item this process yields (counted from ``start``)."""
        world = getattr(self, "world", 1)
        if world == 1:
            return self.start + position
        b = self.batch_size
        step, j = divmod(position, b)
        return self.start * world + step * b * world + self.rank * b + j

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # A loader takes each batch whole from one worker, the workers in turn: each worker
        # yields the whole batches of its turns, so that batch k holds positions k * B ... (B set
        # by shard) whatever the number of workers, and a run resumed at any step sees the tiles
        # of an uninterrupted one.
        b = getattr(self, "batch_size", 1)
        batch = worker
        while True:
            for j in range(b):
                yield self.item(self.global_index(batch * b + j))
            batch += workers


def _center(x: np.ndarray, shape: Sequence[int], channels: bool = False) -> np.ndarray:
    spatial = x.shape[1:] if channels else x.shape
    index = [slice(None)] if channels else []
    for have, want in zip(spatial, shape, strict=True):
        lo = (have - want) // 2
        index.append(slice(lo, lo + want))
    return x[tuple(index)]


def _augment(image, target, weight, in_shape, out_shape, rng, options, spacing):
    """Deform and gray-value augment a window: the image at the input tile's shape, target and
    weights at the output's (or the input's, which the caller then crops)."""
    from useg.training import augment

    seed = int(rng.integers(0, 2**63 - 1))
    window = image.shape[1:]
    # Resample labels and weights only where the network has outputs: the label crop is then a
    # sub-box of the image's sampling grid, the same values as cropping afterwards. That holds
    # when the two ways of centring agree (they can differ by one for odd size differences).
    same_centre = all(
        (w - o) // 2 - (w - i) // 2 == (i - o) // 2
        for w, i, o in zip(window, in_shape, out_shape, strict=True)
    )
    return augment.augment_sample(image, target, weight, out_shape=in_shape,
                                  label_shape=out_shape if same_centre else None, seed=seed,
                                  options=options, spacing=spacing)

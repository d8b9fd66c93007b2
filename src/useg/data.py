"""Training data: label semantics, weight maps, random tiles for a valid-padding network.

Flow: files -> :func:`load_pairs` -> :class:`Sample` (normalised image, class target with
``IGNORE`` for unlabeled pixels, precomputed weight map) -> :class:`TileStream` (random input tile
with real or mirrored context, augmented, target and weights cropped to the network's output).

Randomness is a pure function of (seed, item index): the tile of training step ``k`` is the same
whether the run was interrupted before it or not, which makes resumed runs match uninterrupted
ones, and lets several worker processes draw tiles without coordination.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from useg import normalize as norm
from useg.errors import ConfigError, InputError
from useg.tiling import read_tile

__all__ = [
    "IGNORE",
    "LABEL_MODES",
    "Sample",
    "TileStream",
    "boundary_target",
    "load_pairs",
    "make_sample",
    "relative_spacing",
    "sparsify",
    "targets_from_labels",
]

IGNORE = -1
LABEL_MODES = ("binary", "instances", "boundary", "classes")


def boundary_target(instances: np.ndarray, width: int = 1, ignore: int | None = None) -> np.ndarray:
    """1 where a pixel's instance id differs from a neighbour's (within ``width`` pixels), else 0.

    Parameters
    ----------
    instances : ndarray of int
        Instance ids, ``(Z,) Y, X``.
    width : int
        Boundary thickness: a pixel is boundary if an id change lies within ``width`` pixels
        (city-block distance) of it... on both sides of the change.
    ignore : int, optional
        Id of unlabeled voxels (e.g. 0 in FlyEM bodies): they become ``IGNORE``, and a change
        of id to or from them does not make a boundary.

    Examples
    --------
    >>> inst = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> boundary_target(inst).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0]]
    """
    instances = np.asarray(instances)
    edge = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        a = [slice(None)] * instances.ndim
        b = [slice(None)] * instances.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = instances[tuple(a)] != instances[tuple(b)]
        if ignore is not None:
            diff &= (instances[tuple(a)] != ignore) & (instances[tuple(b)] != ignore)
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1)
    target = edge.astype(np.int64)
    if ignore is not None:
        target[instances == ignore] = IGNORE
    return target


def targets_from_labels(
    labels: np.ndarray,
    mode: str = "binary",
    *,
    unlabeled: int | None = None,
    boundary_width: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class targets (``IGNORE`` for unlabeled pixels) and the instances for the border weights.

    Modes
    -----
    ``binary``
        Foreground is ``labels > 0`` (ISBI 2012: 255 cell interior, 0 membrane); objects for the
        weight map are the foreground's connected components. Classes: 0 background, 1 foreground.
    ``instances``
        Each id is one object (0 background); one-pixel borders between touching objects become
        background, as in the paper's cell-tracking experiments. Classes as ``binary``.
    ``boundary``
        EM membranes from instance labels: class 1 where the id changes (see
        :func:`boundary_target`), 0 inside objects; ``unlabeled`` ids are ignored.
    ``classes``
        Labels are class ids already; ``unlabeled`` marks pixels without annotation.
    """
    labels = np.asarray(labels)
    if mode not in LABEL_MODES:
        raise ConfigError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        if not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"labels must hold integers, got non-integer values ({labels.dtype})")
        labels = labels.astype(np.int64)
    unl = labels == unlabeled if unlabeled is not None else None
    instances = None
    if mode == "binary":
        from useg.weights import instances_from_binary

        fg = labels > 0
        if unl is not None:
            fg &= ~unl
        target = fg.astype(np.int64)
        instances = instances_from_binary(fg)
    elif mode == "instances":
        instances = labels.astype(np.int64)
        if unl is not None:
            instances = np.where(unl, 0, instances)
        target = ((instances > 0) & ~_touches_other_object(instances)).astype(np.int64)
    elif mode == "boundary":
        target = boundary_target(labels, boundary_width, ignore=unlabeled)
        return target, None
    else:
        target = labels.astype(np.int64)
        if np.any(target[~unl] < 0) if unl is not None else np.any(target < 0):
            raise InputError("class labels must be >= 0 (use --unlabeled for unannotated pixels)")
    if unl is not None:
        target[unl] = IGNORE
    return target, instances


def _touches_other_object(instances: np.ndarray) -> np.ndarray:
    """True on object pixels with a face neighbour that belongs to a different object."""
    touching = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        a = [slice(None)] * instances.ndim
        b = [slice(None)] * instances.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        ia, ib = instances[tuple(a)], instances[tuple(b)]
        contact = (ia != ib) & (ia > 0) & (ib > 0)
        touching[tuple(a)] |= contact
        touching[tuple(b)] |= contact
    return touching


def sparsify(target: np.ndarray, slices: Mapping[int, Sequence[int]]) -> np.ndarray:
    """Keep the target only on the given slices (axis -> indices); ``IGNORE`` elsewhere.

    This turns a dense annotation into the sparse slice annotation of the 3D U-Net paper.

    Examples
    --------
    >>> t = np.ones((3, 4, 4), dtype=np.int64)
    >>> s = sparsify(t, {0: [1], 2: [0]})
    >>> int((s != IGNORE).sum())  # 16 on slice z=1, 12 on x=0, 4 of them on both
    24
    """
    keep = np.zeros(target.shape, dtype=bool)
    for axis, indices in slices.items():
        if not 0 <= axis < target.ndim:
            raise InputError(f"annotated slices name axis {axis}, but the volume has {target.ndim}")
        for i in indices:
            if not 0 <= i < target.shape[axis]:
                raise InputError(
                    f"annotated slice {i} along axis {'ZYX'[3 - target.ndim + axis]} is out of "
                    f"range (size {target.shape[axis]})"
                )
            index = [slice(None)] * target.ndim
            index[axis] = i
            keep[tuple(index)] = True
    return np.where(keep, target, IGNORE)


@dataclass
class Sample:
    """One training image in memory, ready for tile sampling."""

    image: np.ndarray  # (C, *spatial) float32, normalised
    target: np.ndarray  # (*spatial) int64 classes, IGNORE where unlabeled
    weight: np.ndarray  # (*spatial) float32, 0 where unlabeled
    name: str = ""
    spacing: tuple[float, ...] | None = None
    labelled: np.ndarray | None = field(default=None, repr=False)  # flat indices of labelled pixels


def make_sample(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    mode: str = "binary",
    unlabeled: int | None = None,
    slices: Mapping[int, Sequence[int]] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    boundary_width: int = 1,
    spacing: Sequence[float] | None = None,
    normalization: dict[str, Any] | None = None,
    name: str = "",
) -> Sample:
    """Build a :class:`Sample`: normalised image, class target and the paper's weight map.

    The weight map is computed once per image from the un-augmented labels, as in the paper,
    and deformed together with them: ``w_c`` balances the classes over the labelled pixels and
    the border term (``w0``, ``sigma``; 0 disables it) separates touching objects.

    ``sigma`` and the distances of the border term are in pixels of the finest axis: only the
    relative ``spacing`` counts (an axis twice as coarse as the finest has steps of 2), so the
    calibration a file happens to carry (a 72-dpi PNG, a TIFF in nanometres) does not change
    the weights.
    """
    from useg.weights import border_weight_map, class_balance_weights

    if image.shape[1:] != labels.shape:
        raise InputError(
            f"{name}: image of spatial shape {image.shape[1:]} and labels of shape "
            f"{labels.shape} differ"
        )
    target, instances = targets_from_labels(
        labels, mode, unlabeled=unlabeled, boundary_width=boundary_width
    )
    if slices:
        target = sparsify(target, slices)
    labelled = target != IGNORE
    if not labelled.any():
        raise InputError(f"{name}: no labelled pixel (every pixel is unlabeled)")
    if class_balance:
        wc = class_balance_weights(target, ignore_index=IGNORE)
    else:
        wc = labelled.astype(np.float32)
    if instances is not None and w0 > 0:
        weight = border_weight_map(instances, w0=w0, sigma=sigma,
                                   spacing=relative_spacing(spacing), class_weights=wc)
    else:
        weight = wc
    weight = np.where(labelled, weight, 0).astype(np.float32)
    stats = norm.image_stats(image, normalization)
    sparse = labelled.mean() < 0.5
    return Sample(
        image=norm.normalize(image, stats),
        target=target,
        weight=weight,
        name=name,
        spacing=tuple(spacing) if spacing is not None else None,
        labelled=np.flatnonzero(labelled) if sparse else None,
    )


def relative_spacing(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """Pixel size per axis in units of the finest axis, which is 1 (None stays None).

    Training measures distances in pixels whatever the unit of the files' calibration;
    only the anisotropy of a volume survives.

    Examples
    --------
    >>> relative_spacing((0.5, 0.125, 0.125))
    (4.0, 1.0, 1.0)
    """
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.atleast_1d(spacing))
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing must be positive numbers, got {tuple(spacing)}")
    finest = min(values)
    return tuple(s / finest for s in values)


def load_pairs(
    images: str | Path,
    labels: str | Path,
    *,
    ndim: int,
    in_channels: int | None = None,
    spacing: Sequence[float] | None = None,
    **sample_options: Any,
) -> list[Sample]:
    """Read image/label files matched by name and build samples (see :func:`make_sample`).

    A folder of 2D images with a 2D model, a TIFF stack with a 2D model (each slice a sample) or
    with a 3D model (one volume) are all accepted. ``spacing`` ((Z,) Y, X of the files) overrides
    the voxel size the files state.
    """
    from useg import io

    image_files = io.list_images(images)
    label_files = io.list_images(labels)
    if not image_files:
        raise InputError(f"{images}: no PNG or TIFF images found")
    if not label_files:
        raise InputError(f"{labels}: no PNG or TIFF label images found")
    if Path(images).is_file() and Path(labels).is_file():
        pairs = [(Path(images), Path(labels))]
    else:
        pairs = io.pair_by_stem(image_files, label_files)
    samples = []
    for img_path, lab_path in pairs:
        image, meta = io.read_image(img_path)
        lab, _ = io.read_labels(lab_path)
        if in_channels is not None and image.shape[0] != in_channels:
            raise InputError(
                f"{img_path}: image has {image.shape[0]} channel(s), the network expects "
                f"{in_channels}"
            )
        if image.shape[1:] != lab.shape:
            raise InputError(
                f"{lab_path}: labels of shape {lab.shape} do not match image {img_path.name} "
                f"of spatial shape {image.shape[1:]}"
            )
        file_spacing = tuple(spacing) if spacing is not None else meta.get("spacing")
        if file_spacing is not None and len(file_spacing) != image.ndim - 1:
            raise InputError(
                f"{img_path}: spacing {file_spacing} does not have one value per spatial axis "
                f"of the image ({image.ndim - 1})"
            )
        if image.ndim - 1 == ndim:
            samples.append(
                make_sample(image, lab, spacing=file_spacing, name=str(img_path),
                            **sample_options)
            )
        elif image.ndim - 1 == ndim + 1:
            for z in range(image.shape[1]):
                try:
                    samples.append(make_sample(
                        image[:, z], lab[z], name=f"{img_path}[{z}]",
                        spacing=file_spacing[1:] if file_spacing else None, **sample_options,
                    ))
                except InputError as exc:
                    if "no labelled pixel" not in str(exc):
                        raise
        else:
            raise InputError(
                f"{img_path}: a {image.ndim - 1}D image cannot train a {ndim}D network"
            )
    if not samples:
        raise InputError(f"{labels}: no labelled pixel in any label image")
    return samples


def _read_labels_tile(array: np.ndarray, start: Sequence[int], shape: Sequence[int],
                      fill: float) -> np.ndarray:
    """Like :func:`useg.tiling.read_tile` for channel-less arrays, but ``fill`` outside."""
    out = np.full(tuple(shape), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, size in zip(start, shape, array.shape, strict=True):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


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
        Options for :func:`useg.augment.augment_sample` (its ``options``; None disables
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
        target = _read_labels_tile(sample.target, start, window, IGNORE)
        weight = _read_labels_tile(sample.weight, start, window, 0.0)
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
    from useg import augment

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

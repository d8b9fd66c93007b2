"""Built-in synthetic data: touching cells separated by thin dark membranes.

The demo and the tests use this when no real data is present. The images imitate EM or
membrane-stained light microscopy: cells of varied size packed so that most of them touch, separated
by membranes only 1-2 pixels wide (the case the U-Net border weight map exists for), with some
empty background regions, per-cell intensity and texture, small dark organelles, uneven
illumination, blur by a Gaussian point spread function and noise. The same code makes 2D images
and 3D volumes.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from useg.errors import InputError
from useg.io.files import write_json
from useg.io.images import write_image

__all__ = ["make_dataset", "touching_cells"]

# Typical distance between neighbouring cell centres, in pixels (2D) or voxels (3D).
_CELL_SPACING = {2: 24.0, 3: 14.0}


def _as_rng(rng: int | np.random.Generator | np.random.SeedSequence | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field of unit standard deviation and correlation length ``sigma``.

    Made on a coarse grid and interpolated up, which costs little even for large ``sigma``.
    """
    step = max(1, int(sigma // 2))
    small = tuple(math.ceil(s / step) + 2 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma / step, mode="wrap")
    field = (field / (field.std() + 1e-12)).astype(np.float32)
    # Separable linear interpolation: much faster than ndimage.zoom for this one job.
    for axis, size in enumerate(shape):
        pos = np.arange(size, dtype=np.float32) / step
        i0 = pos.astype(np.intp)
        frac = (pos - i0).astype(np.float32).reshape((-1,) + (1,) * (len(shape) - axis - 1))
        low, high = np.take(field, i0, axis=axis), np.take(field, i0 + 1, axis=axis)
        field = low * (1 - frac) + high * frac
    return field


def _seeds(shape: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """About ``n`` points in the box, no two closer than half the mean spacing (dart throwing)."""
    hi = np.asarray(shape, np.float64)
    min_dist = 0.5 * (float(np.prod(hi)) / n) ** (1.0 / len(shape))
    candidates = rng.uniform(0.0, 1.0, (20 * n, len(shape))) * hi
    kept = np.empty((n, len(shape)))
    count = 0
    for c in candidates:
        if count and np.min(np.sum((kept[:count] - c) ** 2, axis=1)) < min_dist**2:
            continue
        kept[count] = c
        count += 1
        if count == n:
            break
    return kept[:count]


def _partition(
    shape: tuple[int, ...], seeds: np.ndarray, weights: np.ndarray, warp: np.ndarray
) -> np.ndarray:
    """Power diagram of the seeds over warped pixel coordinates; labels 1..n (int32).

    The power distance ``|x - s|^2 - w`` is, up to a per-pixel constant, ``-(2 x.s - |s|^2 + w)``,
    so the nearest seed is an argmax of one matrix product. The image is done in blocks, each
    against only the seeds that can win somewhere in it: a seed whose smallest power distance to
    the block's bounding box exceeds the largest of some other seed never wins there.
    """
    ndim = len(shape)
    block = 32 if ndim == 2 else 16
    s32 = seeds.astype(np.float32)
    bias = (weights - np.sum(seeds**2, axis=1)).astype(np.float32)
    out = np.empty(shape, np.int32)
    starts = itertools.product(*[range(0, n, block) for n in shape])
    for start in starts:
        sl = tuple(slice(a, min(a + block, n)) for a, n in zip(start, shape, strict=True))
        grids = np.meshgrid(
            *[np.arange(q.start, q.stop, dtype=np.float32) for q in sl], indexing="ij"
        )
        coords = np.stack([g + w[sl] for g, w in zip(grids, warp, strict=True)], axis=-1)
        coords = coords.reshape(-1, ndim)
        lo, hi = coords.min(axis=0), coords.max(axis=0)
        near = np.sum((seeds - np.clip(seeds, lo, hi)) ** 2, axis=1) - weights
        far = np.sum(np.maximum(np.abs(seeds - lo), np.abs(seeds - hi)) ** 2, axis=1) - weights
        cand = np.flatnonzero(near <= far.min())
        score = 2.0 * (coords @ s32[cand].T) + bias[cand]
        out[sl] = cand[np.argmax(score, axis=1)].reshape(out[sl].shape)
    return out + 1


def _membranes(labels: np.ndarray, thick: np.ndarray) -> np.ndarray:
    """Mark membrane pixels between regions of different label.

    Of every pair of neighbouring pixels (full connectivity: 8 in 2D, 26 in 3D) with different
    labels, the one with the larger label is marked, so no two unmarked pixels of different
    labels touch: the regions stay apart even for 8/26-connected labelling, with a line one pixel
    wide (a 4-connected staircase on oblique borders). A region with ``thick[label]`` also marks
    its own pixels that share a face with another region, adding one pixel to the width.
    """
    ndim = labels.ndim
    mark = np.zeros(labels.shape, bool)
    for off in itertools.product((-1, 0, 1), repeat=ndim):
        # Half of the neighbourhood: each pair is visited once, both of its pixels handled.
        if not any(off) or next(o for o in off if o) < 0:
            continue
        src = tuple(slice(max(0, -o), labels.shape[d] - max(0, o)) for d, o in enumerate(off))
        dst = tuple(slice(max(0, o), labels.shape[d] - max(0, -o)) for d, o in enumerate(off))
        a, b = labels[src], labels[dst]
        diff = a != b
        if sum(map(abs, off)) == 1:
            mark[src] |= diff & ((b < a) | thick[a])
            mark[dst] |= diff & ((a < b) | thick[b])
        else:
            mark[src] |= diff & (b < a)
            mark[dst] |= diff & (a < b)
    return mark


def _thick_flags(membrane_width: int | Sequence[int], n: int, rng: np.random.Generator):
    if isinstance(membrane_width, int | np.integer):
        lo = hi = int(membrane_width)
    else:
        lo, hi = (int(w) for w in membrane_width)
    if not (1 <= lo <= hi <= 2):
        raise InputError(f"membrane_width must be 1, 2 or (1, 2), not {membrane_width!r}")
    thick = np.full(n + 1, lo == 2)
    if lo != hi:
        thick = rng.random(n + 1) < 0.5
    thick[0] = False  # background regions never carry a membrane of their own
    return thick


def touching_cells(
    shape: Sequence[int] = (256, 256),
    *,
    n_cells: int | None = None,
    membrane_width: int | Sequence[int] = (1, 2),
    background: float = 0.1,
    blur: float = 0.8,
    noise: float = 0.05,
    rng: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic image of touching cells separated by thin dark membranes, with its instances.

    Cells are the regions of a power (weighted Voronoi) diagram of randomly spaced seeds with
    random weights, computed on smoothly warped coordinates so that cell sizes vary and borders
    curve. A spatially coherent fraction of the cells becomes empty background. Membranes are
    drawn on the boundaries, 1 or 2 pixels wide, so that neighbouring cells never touch directly
    (not even diagonally). The image is rendered with per-cell brightness and texture, small dark
    organelles, smooth shading, Gaussian blur and Gaussian noise.

    Parameters
    ----------
    shape : sequence of int
        ``(Y, X)`` for an image or ``(Z, Y, X)`` for a volume.
    n_cells : int, optional
        Number of cell seeds (cells that end up too small are dropped, so slightly fewer cells
        may result). Default: one per 24 x 24 pixels in 2D, per 14^3 voxels in 3D.
    membrane_width : 1, 2 or (1, 2)
        Membrane width in pixels; ``(1, 2)`` picks 1 or 2 per cell so both occur.
    background : float
        Fraction of the cells, in clusters, turned into empty background (label 0).
    blur : float
        Standard deviation of the Gaussian point spread function, in pixels (0: none).
    noise : float
        Standard deviation of the additive Gaussian noise.
    rng : int, numpy.random.Generator or None
        Seed or generator; the same seed gives the same result.

    Returns
    -------
    image : ndarray of float32
        ``(1, *shape)`` in [0, 1]; bright cells, dark membranes, grey background.
    instances : ndarray of int32
        ``shape``; cells numbered 1..K, 0 on membranes and background.

    Examples
    --------
    >>> image, instances = touching_cells((64, 64), rng=0)
    >>> image.shape, image.dtype, instances.shape, instances.dtype
    ((1, 64, 64), dtype('float32'), (64, 64), dtype('int32'))
    >>> bool(0.0 <= image.min() and image.max() <= 1.0), int(instances.max()) > 3
    (True, True)
    """
    shape = tuple(int(s) for s in shape)
    _check_cell_settings(shape, background, blur, noise)
    ndim = len(shape)
    rng = _as_rng(rng)
    d = _CELL_SPACING[ndim]
    volume = float(np.prod(shape))
    if n_cells is None:
        n_cells = max(2, round(volume / d**ndim))
    if n_cells < 1:
        raise InputError(f"n_cells must be >= 1, not {n_cells}")
    d = (volume / n_cells) ** (1.0 / ndim)  # actual mean spacing for these many cells

    # The random draws come in a fixed order (seeds, weights, warp, background, membranes,
    # rendering), so that a seed always gives the same image.
    seeds = _seeds(shape, n_cells, rng)
    n = len(seeds)
    weights = (rng.uniform(0.0, 0.55, n) * d) ** 2
    warp = np.stack([_smooth_noise(shape, 0.6 * d, rng) for _ in range(ndim)]) * (0.12 * d)
    regions = _partition(shape, seeds, weights, warp)
    if background > 0 and n > 1:
        _clear_background(regions, seeds, background, d, rng)
    membrane = _membranes(regions, _thick_flags(membrane_width, n, rng))
    instances = _number_cells(np.where(membrane, 0, regions), n, d)
    img = _render(instances, regions, membrane, blur, noise, rng)
    return img[np.newaxis].astype(np.float32, copy=False), instances


def _check_cell_settings(
    shape: tuple[int, ...], background: float, blur: float, noise: float
) -> None:
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InputError(f"shape must be (Y, X) or (Z, Y, X) with positive sizes, not {shape}")
    if not 0.0 <= background < 1.0:
        raise InputError(f"background must be in [0, 1), not {background}")
    if blur < 0 or noise < 0:
        raise InputError(f"blur and noise must be >= 0, not {blur} and {noise}")


def _clear_background(
    regions: np.ndarray, seeds: np.ndarray, background: float, d: float, rng: np.random.Generator
) -> None:
    """Turn the fraction ``background`` of the cells of ``regions`` into background (0), in
    place: those whose seed lies where a smooth field is high, so empty areas cluster."""
    n = len(seeds)
    field = _smooth_noise(regions.shape, 2.0 * d, rng)
    at_seed = field[tuple(np.clip(seeds.astype(int), 0, np.asarray(regions.shape) - 1).T)]
    n_bg = min(n - 1, round(background * n))
    is_bg = np.zeros(n + 1, bool)
    is_bg[1:][np.argsort(-at_seed, kind="stable")[:n_bg]] = True
    regions[is_bg[regions]] = 0


def _number_cells(cells: np.ndarray, n: int, d: float) -> np.ndarray:
    """``cells`` (ids up to ``n``) numbered 1..K without those too small to show an interior
    (slivers at the border, eaten by membranes)."""
    sizes = np.bincount(cells.ravel(), minlength=n + 1)
    keep = sizes >= max(4, 0.05 * d**cells.ndim)
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[cells]


def _render(
    instances: np.ndarray,
    regions: np.ndarray,
    membrane: np.ndarray,
    blur: float,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The image of the cells: per-cell brightness and texture, organelles, dark membranes,
    shading, blur and noise, clipped to [0, 1]."""
    shape = instances.shape
    k = int(instances.max())
    brightness = rng.uniform(0.55, 0.85, k + 1).astype(np.float32)
    brightness[0] = rng.uniform(0.32, 0.45)  # empty background
    img = brightness[instances]
    inside = instances > 0
    texture = _smooth_noise(shape, 1.5, rng)
    img += np.where(inside, 0.06 * texture, 0.03 * texture)
    organelles = (_smooth_noise(shape, 2.0, rng) > 1.8) & inside
    img[organelles] *= 0.6
    img[membrane | ((regions > 0) & ~inside)] = 0.12  # membranes and dropped slivers
    img *= 1.0 + 0.08 * _smooth_noise(shape, max(shape) / 3.0, rng)
    if blur > 0:
        img = ndimage.gaussian_filter(img, blur, mode="reflect")
    if noise > 0:
        img += noise * rng.standard_normal(shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return img


def make_dataset(
    folder: str | os.PathLike,
    n_images: int = 8,
    shape: Sequence[int] = (256, 256),
    seed: int = 0,
    *,
    labels: str = "binary",
    exist_ok: bool = False,
) -> list[tuple[Path, Path]]:
    """Write a synthetic touching-cells dataset as TIFFs in ``folder/images`` and ``folder/labels``.

    Images are uint8 (0-255). Labels are either ``"binary"``, like the ISBI 2012 data: uint8, 255
    inside cells and 0 on membranes and background; or ``"instances"``: cell ids 1..K (uint16),
    0 on membranes and background. Files are named ``synth_000.tif``, ... in both folders, and
    ``folder/synthetic.json`` records how they were made. Image ``i`` depends only on ``seed``
    and ``i``, so a larger dataset extends a smaller one.

    Parameters
    ----------
    folder : str or PathLike
        Created if needed.
    n_images : int
        Number of image/label pairs.
    shape : sequence of int
        ``(Y, X)`` or ``(Z, Y, X)`` of each image.
    seed : int
        Seed of the whole dataset.
    labels : {"binary", "instances"}
        Kind of label files.
    exist_ok : bool
        Allow writing into ``images``/``labels`` folders that already hold files (files of the same
        name are replaced; others are left as they are).

    Returns
    -------
    list of (Path, Path)
        The ``(image, label)`` files.

    Examples
    --------
    >>> import tempfile
    >>> pairs = make_dataset(tempfile.mkdtemp(), n_images=2, shape=(64, 64), seed=1)
    >>> [p.name for p in pairs[1]]
    ['synth_001.tif', 'synth_001.tif']
    """
    if labels not in ("binary", "instances"):
        raise InputError(f"labels must be 'binary' or 'instances', not {labels!r}")
    if n_images < 1:
        raise InputError(f"n_images must be >= 1, not {n_images}")
    folder = Path(folder)
    img_dir, lab_dir = _dataset_folders(folder, exist_ok)
    shape = tuple(int(s) for s in shape)
    axes = "ZYX" if len(shape) == 3 else "YX"
    pairs = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n_images)):
        image, instances = touching_cells(shape, rng=np.random.default_rng(child))
        name = f"synth_{i:03d}.tif"
        img8 = np.round(image[0] * 255.0).astype(np.uint8)
        image_path = write_image(img_dir / name, img8, axes=axes)
        lab = _label_image(instances, labels)
        pairs.append((image_path, write_image(lab_dir / name, lab, axes=axes)))
    write_json(
        folder / "synthetic.json",
        {
            "generator": "useg.workflows.synthetic.touching_cells",
            "n_images": n_images,
            "shape": list(shape),
            "seed": seed,
            "labels": labels,
            "label_values": (
                "255 = cell interior, 0 = membrane or background" if labels == "binary"
                else "cell ids 1..K, 0 = membrane or background"
            ),
        },
    )
    return pairs


def _dataset_folders(folder: Path, exist_ok: bool) -> tuple[Path, Path]:
    """``folder/images`` and ``folder/labels``, created; raises
    :class:`~useg.errors.InputError` for one that holds files, unless ``exist_ok``."""
    img_dir, lab_dir = folder / "images", folder / "labels"
    for sub in (img_dir, lab_dir):
        if sub.is_dir() and any(sub.iterdir()) and not exist_ok:
            raise InputError(f"{sub}: folder is not empty; choose another folder or pass exist_ok")
        sub.mkdir(parents=True, exist_ok=True)
    return img_dir, lab_dir


def _label_image(instances: np.ndarray, labels: str) -> np.ndarray:
    """The label file's pixels: 255 inside cells (``binary``) or the cell ids (``instances``)."""
    if labels == "binary":
        return np.where(instances > 0, 255, 0).astype(np.uint8)
    return instances.astype(np.uint16 if instances.max() < 2**16 else np.int32)

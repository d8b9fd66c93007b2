"""OME-Zarr (NGFF) images that other tools read: pyramids and label images, written with
ome-zarr-py.

The metadata is written by ome-zarr-py's writer (``ome_zarr.writer``), the reference
implementation that napari-ome-zarr and other viewers read: OME-Zarr 0.5 for zarr format 3
(the default of useg's stores), 0.4 for format 2. It is an optional dependency, the ``ome``
extra (``pip install 'useg[ome]'``); reading OME-Zarr (:func:`useg.io.chunked.open_array`) needs
only zarr.

An image written here holds, for the spatial shape and voxel size of level 0:

- levels ``0``, ``1``, ... (:func:`pyramid_factors`): Y and X halved at each level, Z too while
  the voxels of the level before are about isotropic; each level's ``scale`` is the voxel size
  times its factors, and a ``translation`` puts its voxel centres at those of the voxels it
  averages;
- label images in ``labels/<name>`` (:func:`create_array` registers them when the spec's last
  but one component is ``labels``), with ``image-label`` metadata and the same levels as the
  image, which ome-zarr-models requires.

Arrays are created empty and filled by the caller (level 0) and by :func:`fill_levels` (the
others: mean for probabilities, mode of each 2 x 2 (x 2) group for labels).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from useg.errors import ConfigError

__all__ = [
    "EXTRA",
    "downsample",
    "fill_levels",
    "is_label_path",
    "level_shape",
    "pyramid_factors",
    "register_label",
    "require_writer",
    "write_image_metadata",
]

EXTRA = "pip install 'useg[ome]'"
# The smallest level's larger side in Y/X: about one screen tile of a viewer.
SMALLEST = 256
MOST_LEVELS = 8


def require_writer(what: Any) -> Any:
    """ome-zarr-py's writer module, or :class:`~useg.errors.ConfigError` in one line naming
    ``what`` and the extra to install."""
    try:
        with warnings.catch_warnings():
            # ome-zarr-py 0.18 warns of its own deprecated Scaler when the writer is imported.
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr import writer
    except ImportError:
        raise ConfigError(
            f"{what}: writing an OME-Zarr image needs ome-zarr-py; install it with {EXTRA}"
        ) from None
    return writer


def _format(zarr_format: int) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if zarr_format == 2 else FormatV05()


def is_label_path(inner: str) -> bool:
    """Whether a path inside an OME-Zarr store names a label image (``labels/<name>``).

    Examples
    --------
    >>> is_label_path("labels/classes"), is_label_path("probs"), is_label_path("labels")
    (True, False, False)
    """
    parts = [p for p in inner.split("/") if p]
    return len(parts) >= 2 and parts[-2] == "labels"


def pyramid_factors(
    spatial: Sequence[int], spacing: Sequence[float] | None = None, *, smallest: int = SMALLEST,
    most: int = MOST_LEVELS,
) -> list[tuple[int, ...]]:
    """Downsampling factors of each level against level 0, per spatial axis (``(Z,) Y, X``).

    Y and X are halved at each level until the larger of them is at most ``smallest`` (but at
    least once: two levels or more, as long as Y or X exceeds 1 pixel); Z is halved with them
    when the level before has a Z voxel size at most sqrt(2) times its Y/X size (an unknown
    voxel size counts as isotropic), so anisotropic volumes keep their Z until Y/X catch up.

    Examples
    --------
    >>> pyramid_factors((1000, 600))
    [(1, 1), (2, 2), (4, 4)]
    >>> pyramid_factors((40, 2048, 2048), (2.0, 0.5, 0.5))
    [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)]
    """
    spatial = tuple(int(s) for s in spatial)
    sp = [1.0] * len(spatial) if spacing is None else [float(s) for s in spacing]
    factors = [(1,) * len(spatial)]
    while len(factors) < most:
        f = factors[-1]
        yx = [math.ceil(n / k) for n, k in zip(spatial[-2:], f[-2:], strict=True)]
        if max(yx) <= 1 or (len(factors) > 1 and max(yx) <= smallest):
            break
        nxt = [*f[:-2], f[-2] * 2, f[-1] * 2]
        if len(spatial) == 3:
            z_now, yx_now = sp[0] * f[0], min(sp[1] * f[1], sp[2] * f[2])
            if z_now <= math.sqrt(2) * yx_now and math.ceil(spatial[0] / f[0]) > 1:
                nxt[0] = f[0] * 2
        factors.append(tuple(nxt))
    return factors


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """Shape of a level: ``shape`` divided by the factors of the trailing axes, rounded up."""
    lead = len(shape) - len(factors)
    return (*shape[:lead], *(math.ceil(n / k) for n, k in
                             zip(shape[lead:], factors, strict=True)))


def write_image_metadata(
    group: Any, axes: str, spacing: Sequence[float] | None, unit: str | None,
    factors: Sequence[Sequence[int]], name: str | None = None,
    origin: Sequence[float] | None = None,
) -> None:
    """The ``multiscales`` metadata of ``group`` (levels ``0``, ``1``, ...) by ome-zarr-py.

    ``spacing`` is the voxel size of level 0 along the spatial axes of ``axes`` (1 when None),
    in ``unit`` (a UDUNITS-2 name such as ``micrometer``; None writes no unit: the scale is then
    in pixels of level 0 or in the input's own, unnamed unit). ``origin`` is where voxel 0 of
    level 0 lies (0 when None), in the same unit: every level's translation starts from it.
    """
    writer = require_writer(group.store_path)
    space = [a in "ZYX" for a in axes]
    n_space = sum(space)
    sp = [1.0] * n_space if spacing is None else [float(s) for s in spacing]
    from ome_zarr.axes import KNOWN_SPATIAL_UNITS

    units = None
    if unit is not None and unit in KNOWN_SPATIAL_UNITS:
        units = {a.lower(): unit for a in axes if a in "ZYX"}
    at = [0.0] * n_space if origin is None else [float(o) for o in origin]
    datasets = []
    for level, f in enumerate(factors):
        it_s, it_f, it_o = iter(sp), iter(f), iter(at)
        scale, shift = [], []
        for is_space in space:
            s, k, o = (next(it_s), next(it_f), next(it_o)) if is_space else (1.0, 1, 0.0)
            scale.append(s * k)
            shift.append(o + s * (k - 1) / 2)
        transforms = [{"type": "scale", "scale": scale}]
        if any(shift):
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    writer.write_multiscales_metadata(
        group, datasets, fmt=_format(group.metadata.zarr_format),
        axes=[a.lower() for a in axes], axes_units=units, name=name,
    )


def register_label(labels_group: Any, name: str) -> None:
    """List the label image ``name`` in ``labels_group`` (the image's ``labels`` group) and give
    it ``image-label`` metadata, by ome-zarr-py; listed once however often it is rewritten."""
    writer = require_writer(labels_group.store_path)
    fmt = _format(labels_group.metadata.zarr_format)
    listed = writer.get_metadata(labels_group).get("labels", [])
    source = {"image": "../../"}  # the image the labels belong to, for readers to find it
    if name in listed:
        writer.add_metadata(labels_group[name], {
            "image-label": {"version": fmt.version, "source": source}}, fmt=fmt)
    else:
        writer.write_label_metadata(labels_group, name, fmt=fmt, source=source)
    if fmt.zarr_format == 3 and "version" not in writer.get_metadata(labels_group):
        # OME-Zarr 0.5 wants the version in every group's "ome" attributes; ome-zarr-py 0.18
        # leaves it out of the labels group, which ome-zarr-models then refuses.
        writer.add_metadata(labels_group, {"version": fmt.version}, fmt=fmt)


# ----------------------------------------------------------------------------------------------
# filling the levels


def downsample(data: np.ndarray, factors: Sequence[int], method: str) -> np.ndarray:
    """Reduce groups of ``factors`` voxels (trailing axes) to one: ``mean`` or ``mode``.

    An incomplete group at the far border is completed by repeating its last voxel. The mode
    takes, of the values most frequent in a group, the first in the group's raster order, so a
    group of all-different labels keeps its first voxel (nearest-neighbour sampling).

    Examples
    --------
    >>> downsample(np.array([[1, 2, 7], [2, 2, 5]]), (2, 2), "mode").tolist()
    [[2, 7]]
    >>> downsample(np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32), (2, 2), "mean")
    array([[1.5]], dtype=float32)
    """
    lead = data.ndim - len(factors)
    f = (1,) * lead + tuple(int(k) for k in factors)
    pad = [(0, -n % k) for n, k in zip(data.shape, f, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    grouped = data.reshape([v for n, k in zip(data.shape, f, strict=True) for v in (n // k, k)])
    inner = tuple(range(1, 2 * data.ndim, 2))
    if method == "mean":
        return grouped.mean(axis=inner, dtype=np.float64).astype(data.dtype)
    if method != "mode":
        raise ConfigError(f"downsampling method must be mean or mode, got {method!r}")
    out_shape = tuple(n // k for n, k in zip(data.shape, f, strict=True))
    flat = np.moveaxis(grouped, inner, range(data.ndim, 2 * data.ndim)).reshape(*out_shape, -1)
    counts = np.stack([(flat == flat[..., j:j + 1]).sum(axis=-1)
                       for j in range(flat.shape[-1])], axis=-1)
    return np.take_along_axis(flat, counts.argmax(axis=-1)[..., None], axis=-1)[..., 0]


def _chunk_regions(shape: Sequence[int], chunks: Sequence[int]) -> list[tuple[slice, ...]]:
    grids = [range(0, n, c) for n, c in zip(shape, chunks, strict=True)]
    import itertools

    return [tuple(slice(a, min(a + c, n)) for a, c, n in zip(corner, chunks, shape, strict=True))
            for corner in itertools.product(*grids)]


def _fill_region(src: Any, dst: Any, region: tuple[slice, ...], step: Sequence[int],
                 method: str, budget: int = 1 << 22) -> None:
    """Write one chunk of ``dst`` (whole, so that no two tasks share a chunk), reading ``src``
    in slabs along the first axis of at most about ``budget`` voxels."""
    out = np.empty([r.stop - r.start for r in region], dtype=dst.dtype)
    per_row = math.prod((r.stop - r.start) * k for r, k in zip(region[1:], step[1:], strict=True))
    rows = max(1, budget // max(1, per_row * step[0]))
    for a in range(region[0].start, region[0].stop, rows):
        b = min(a + rows, region[0].stop)
        box = tuple(slice(r.start * k, min(r.stop * k, n))
                    for r, k, n in zip((slice(a, b), *region[1:]), step, src.shape, strict=True))
        out[a - region[0].start:b - region[0].start] = downsample(np.asarray(src[box]), step,
                                                                   method)
    dst[region] = out


def fill_levels(spec: str | os.PathLike, method: str, threads: int | None = None) -> int:
    """Compute levels ``1, 2, ...`` of an OME-Zarr image from the level before, chunk by chunk
    (``mean`` for intensities and probabilities, ``mode`` for labels); returns the number of
    levels filled. Level 0 must be complete."""
    from useg.io.chunked import open_array, parse_spec

    _, meta = open_array(spec, "r+")
    ome = meta.get("ome")
    if not ome or len(ome["levels"]) < 2:
        return 0
    import zarr

    sp = parse_spec(spec)
    group = zarr.open_group(str(sp.container), mode="r+", path=sp.inner or None)
    scales = ome["scales"]
    threads = threads or min(4, os.cpu_count() or 1)
    for k in range(1, len(ome["levels"])):
        src, dst = group[ome["levels"][k - 1]], group[ome["levels"][k]]
        step = [max(1, round(b / a)) if a > 0 else 1
                for a, b in zip(scales[k - 1], scales[k], strict=True)]
        regions = _chunk_regions(dst.shape, dst.chunks)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda r, s=src, d=dst, st=step: _fill_region(s, d, r, st, method),
                          regions))
    return len(ome["levels"]) - 1

"""Chunked arrays on disk: zarr (formats 2 and 3), OME-Zarr images and HDF5, named by one path.

Array specs
-----------
One string names a file or folder and the array inside it:

- ``volume.zarr`` -- the array at the root of a zarr store (format 2 or 3, detected);
- ``volume.zarr/raw`` or ``volume.zarr:raw`` -- the array ``raw`` inside the store (nested
  paths such as ``volume.zarr/s0/raw`` work); the store is the first path component ending in
  ``.zarr``, and a folder without that suffix is taken as a store root;
- ``image.ome.zarr`` (or any group holding OME-Zarr ``multiscales`` metadata) -- the image's
  highest resolution; ``image.ome.zarr/1`` (or ``image.ome.zarr:1``) -- its level ``1``, with
  that level's voxel size; ``image.ome.zarr/labels/cells`` -- a label image, ``.../cells/1``
  its level ``1``;
- ``file.h5:/raw`` (also ``.hdf5``, ``.hdf``, ``.he5``) -- the dataset ``/raw`` of an HDF5 file;
  ``file.h5`` alone when the file holds exactly one dataset.

N5 containers (``.n5``) are recognised but not supported: zarr 3 no longer reads them.

Metadata
--------
:func:`open_array` returns the array (not read: slicing reads only the chunks needed) and a
dict with ``format`` (``zarr2``, ``zarr3`` or ``hdf5``), ``axes`` (letters of ``TCZYX``, or None
when the file does not say), ``spacing`` (voxel size of the spatial axes in micrometres when
the file states a unit, else in the file's unit; None when absent), ``unit`` (``micrometer``
when the spacing is in micrometres, the file's unit when useg does not know it, None when the
file names none), ``origin`` (where voxel 0 of an OME-Zarr level lies, from its translations,
in the spacing's unit; None when at 0 or unknown) and ``ome`` (level paths and scales of an
OME-Zarr image, else None). Plain
zarr arrays and HDF5 datasets keep the axes in an ``axes`` attribute (or xarray's
``_ARRAY_DIMENSIONS``, or zarr 3's dimension names) and the spacing in ``element_size_um`` (the
ilastik / Fiji convention), or, in another unit or none, in ``spacing`` and ``unit``.
:func:`create_array` writes these, or an
OME-Zarr image (0.4 for zarr format 2, 0.5 for format 3; metadata by ome-zarr-py, the ``ome``
extra: :mod:`useg.io.ome`) with axes, units, scale, optionally a pyramid of levels, and label
images in ``image.ome.zarr/labels/<name>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, InputError, one_line, require

__all__ = [
    "ArraySpec",
    "AxesView",
    "as_channels_first",
    "create_array",
    "is_array_spec",
    "open_array",
    "parse_spec",
]

_HDF5_RE = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|he5))(?::(?P<inner>.*))?$", re.IGNORECASE)
_ZARR_RE = re.compile(r"^(?P<file>.*?\.(?P<ext>zarr|n5))(?:[/:](?P<inner>.*))?$", re.IGNORECASE)
_AXIS_ORDER = "TCZYX"
# OME-Zarr length units (UDUNITS-2 names) in micrometres.
_OME_UNITS_UM = {
    "angstrom": 1e-4,
    "picometer": 1e-6,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


# ----------------------------------------------------------------------------------------------
# specs


@dataclass(frozen=True)
class ArraySpec:
    """A parsed array spec: container ``kind`` (``zarr``, ``hdf5`` or ``n5``), the file or
    folder, and the path of the array inside it (``""`` for the root)."""

    kind: str
    container: Path
    inner: str
    text: str

    def __str__(self) -> str:
        return self.text

    def child(self, name: str) -> ArraySpec:
        """The spec of a node below this one."""
        inner = "/".join(p for p in (self.inner, name) if p)
        sep = ":/" if self.kind == "hdf5" else "/"
        return ArraySpec(self.kind, self.container, inner, f"{self.container}{sep}{inner}")


def _clean_inner(inner: str | None) -> str:
    return "/".join(p for p in (inner or "").replace("\\", "/").split("/") if p)


def parse_spec(spec: str | os.PathLike | ArraySpec) -> ArraySpec:
    """Split an array spec into its container and the array's path inside it.

    Examples
    --------
    >>> parse_spec("data/volume.zarr/raw").inner
    'raw'
    >>> s = parse_spec("scan.h5:/volumes/raw")
    >>> s.kind, s.container.name, s.inner
    ('hdf5', 'scan.h5', 'volumes/raw')
    """
    if isinstance(spec, ArraySpec):
        return spec
    text = os.fspath(spec)
    if not text:
        raise InputError("empty array path")
    m = _HDF5_RE.match(text)
    if m:
        return ArraySpec("hdf5", Path(m["file"]), _clean_inner(m["inner"]), text)
    m = _ZARR_RE.match(text)
    if m:
        kind = "n5" if m["ext"].lower() == "n5" else "zarr"
        return ArraySpec(kind, Path(m["file"]), _clean_inner(m["inner"]), text)
    return ArraySpec("zarr", Path(text), "", text)


def is_array_spec(spec: str | os.PathLike) -> bool:
    """True when ``spec`` names a chunked container (``.zarr``, ``.n5``, HDF5, or a folder
    holding zarr metadata) rather than an ordinary image file.

    Examples
    --------
    >>> is_array_spec("a.zarr/raw"), is_array_spec("b.h5:/x"), is_array_spec("c.tif")
    (True, True, False)
    """
    text = os.fspath(spec)
    if _HDF5_RE.match(text) or _ZARR_RE.match(text):
        return True
    p = Path(text)
    return p.is_dir() and any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


# ----------------------------------------------------------------------------------------------
# OME-Zarr metadata (read here; written by ome-zarr-py through useg.io.ome)


def _ome_multiscale(attrs: dict[str, Any]) -> tuple[str | None, dict[str, Any]] | None:
    """(version, first multiscale) of OME-Zarr group attributes, or None."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list) and ome["multiscales"]:
        return ome.get("version"), ome["multiscales"][0]
    ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], dict):
        return ms[0].get("version"), ms[0]
    return None


def _transform_vectors(transforms: Any, kind: str, ndim: int, where: Any) -> list[list[float]]:
    """The vectors of the ``kind`` (``scale`` or ``translation``) coordinate transforms, each
    refused unless ``ndim`` finite numbers (a scale: positive ones); read as 1 or 0 instead, a
    malformed one would invent a voxel size or a position."""
    vectors = []
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == kind:
            try:
                values = [float(v) for v in t.get(kind)]
            except (TypeError, ValueError):
                values = []
            if len(values) != ndim or not all(
                    np.isfinite(v) and (v > 0 or kind != "scale") for v in values):
                raise InputError(f"{where}: OME-Zarr {kind} {t.get(kind)!r} is not {ndim} "
                                 f"{'positive ' if kind == 'scale' else ''}numbers, one per "
                                 "axis")
            vectors.append(values)
    return vectors


def _scale_of(transforms: Any, ndim: int, where: Any) -> list[float] | None:
    """The product of the ``scale`` transforms, None when there is none."""
    scales = _transform_vectors(transforms, "scale", ndim, where)
    return [float(np.prod(v)) for v in zip(*scales, strict=True)] if scales else None


def _ome_level_meta(spec: ArraySpec, version: str | None, ms: dict[str, Any], path: str) -> dict:
    """Axes, spacing and levels of level ``path`` of an OME-Zarr multiscale."""
    axes_in = ms.get("axes") or []
    ndim = len(axes_in)
    letters, units, space = [], [], []
    for a in axes_in:
        if isinstance(a, str):  # OME-Zarr 0.3 lists axis names only
            a = {"name": a}
        name = str(a.get("name", "")).upper()
        kind = a.get("type")
        if name not in _AXIS_ORDER:
            name = {"channel": "C", "time": "T"}.get(kind, "?")
        letters.append(name)
        units.append(a.get("unit"))
        space.append(kind == "space" if kind else name in ("Z", "Y", "X"))
    datasets = ms.get("datasets") or []
    paths = [str(d.get("path")) for d in datasets]
    if path not in paths:
        raise InputError(f"{spec}: OME-Zarr level {path!r} not in its multiscales ({paths})")
    outer = _scale_of(ms.get("coordinateTransformations"), ndim, spec)
    own = [_scale_of(d.get("coordinateTransformations"), ndim, spec) for d in datasets]
    scales = [
        [a * b for a, b in zip(level_scale or [1.0] * ndim, outer or [1.0] * ndim, strict=True)]
        for level_scale in own
    ]
    level = paths.index(path)
    def spatial_in_um(values: Sequence[float]) -> tuple[float, ...]:
        # The spatial axes' values, in micrometres where the axis names a unit useg knows.
        return tuple(v * _OME_UNITS_UM.get(str(u).lower(), 1.0) if u else v
                     for v, u, is_space in zip(values, units, space, strict=True) if is_space)

    spacing = spatial_in_um(scales[level])
    space_units = {str(u).lower() if u else None for u, is_space in zip(units, space,
                                                                         strict=True) if is_space}
    unit = None  # no unit, or several unknown ones: the scale is in the file's own terms
    if space_units and space_units <= set(_OME_UNITS_UM):
        unit = "micrometer"
    elif len(space_units) == 1 and None not in space_units:
        unit = space_units.pop()
    if own[level] is None and outer is None:
        spacing = ()  # no scale at all: the voxel size is unknown, not 1 in the axes' unit
    # Where voxel 0 of the level lies: its translation, then the multiscale's scale and
    # translation (each applied after the ones before it).
    shift = _translation_of(datasets[level].get("coordinateTransformations"), ndim, spec)
    outer_shift = _translation_of(ms.get("coordinateTransformations"), ndim, spec)
    position = [a * b + c for a, b, c in zip(shift, outer or [1.0] * ndim, outer_shift,
                                              strict=True)]
    origin = spatial_in_um(position)
    axes = "".join(letters)
    return {
        "axes": axes if "?" not in axes else None,
        "spacing": spacing or None,
        "unit": unit if spacing else None,
        "origin": origin if spacing and any(origin) else None,
        "ome": {"version": version, "levels": paths, "level": level, "scales": scales},
    }


def _translation_of(transforms: Any, ndim: int, where: Any) -> list[float]:
    """The sum of the ``translation`` transforms (0 without one)."""
    shifts = _transform_vectors(transforms, "translation", ndim, where)
    return [float(sum(v)) for v in zip(*shifts, strict=True)] if shifts else [0.0] * ndim


# ----------------------------------------------------------------------------------------------
# opening


def _plain_meta(attrs: Any, dimension_names: Any = None) -> dict[str, Any]:
    axes = attrs.get("axes")
    if isinstance(axes, bytes):
        axes = axes.decode()
    if not isinstance(axes, str) and dimension_names and all(dimension_names):
        axes = "".join(str(d) for d in dimension_names)
    xarray = attrs.get("_ARRAY_DIMENSIONS")  # xarray's names of a zarr v2 array's axes
    if not isinstance(axes, str) and isinstance(xarray, list) and xarray and all(
            isinstance(d, str) and len(d) == 1 for d in xarray):
        axes = "".join(xarray)
    axes = axes.upper() if isinstance(axes, str) else None
    if axes is not None and (len(set(axes)) != len(axes) or not set(axes) <= set(_AXIS_ORDER)):
        axes = None
    # element_size_um (ilastik, Fiji) is in micrometres; spacing with its unit, what useg
    # writes for a voxel size in another unit or none.
    spacing = attrs.get("element_size_um")
    unit = "micrometer"
    if spacing is None:
        spacing, unit = attrs.get("spacing"), attrs.get("unit")
        unit = unit.decode() if isinstance(unit, bytes) else unit
        unit = unit if isinstance(unit, str) and unit else None
    if spacing is not None:
        try:
            spacing = tuple(float(s) for s in np.ravel(spacing))
        except (TypeError, ValueError):
            spacing = None
    return {"axes": axes, "spacing": spacing or None, "unit": unit if spacing else None,
            "origin": None, "ome": None}


def _zarr_format(array: Any) -> str:
    return f"zarr{array.metadata.zarr_format}"


def _levels_beside(spec: ArraySpec) -> list[str] | None:
    """The level paths of the OME-Zarr image that holds ``spec.inner``'s parent, or None."""
    import zarr

    if not spec.inner:
        return None
    parent = spec.inner.rpartition("/")[0]
    try:
        group = zarr.open_group(str(spec.container), mode="r", path=parent or None)
    except (FileNotFoundError, KeyError, ValueError, TypeError, zarr.errors.BaseZarrError):
        return None
    found = _ome_multiscale(group.attrs.asdict())
    return None if found is None else [str(d.get("path")) for d in found[1].get("datasets") or []]


def _open_zarr(spec: ArraySpec, mode: str) -> tuple[Any, dict[str, Any]]:
    zarr = require("zarr", "scale", "reading and writing zarr stores")

    if not spec.container.exists():
        raise InputError(f"{spec}: no such file or folder")
    try:
        node = zarr.open(store=str(spec.container), mode=mode, path=spec.inner or None)
    except (FileNotFoundError, KeyError, ValueError, TypeError, zarr.errors.BaseZarrError) as exc:
        where = repr(spec.inner) if spec.inner else "the root"
        levels = _levels_beside(spec)
        if levels is not None:  # image.ome.zarr/7 of an image with levels 0 to 2
            raise InputError(f"{spec}: no level {spec.inner.rpartition('/')[2]!r} in this "
                             f"OME-Zarr image (its levels: {', '.join(levels)})") from None
        raise InputError(f"{spec}: no zarr array or group at {where} ({one_line(exc)})") from None
    if isinstance(node, zarr.Group):
        found = _ome_multiscale(node.attrs.asdict())
        if found is None:
            names = sorted(k for k, _ in node.arrays())
            hint = f"; its arrays: {', '.join(names)}" if names else " and holds no array"
            raise InputError(f"{spec}: is a zarr group, not an array{hint}")
        version, ms = found
        level = str((ms.get("datasets") or [{}])[0].get("path"))
        meta = _ome_level_meta(spec, version, ms, level)
        try:
            array = node[level]
        except KeyError:
            raise InputError(f"{spec}: OME-Zarr level {level!r} is missing") from None
    else:
        array = node
        meta = _plain_meta(node.attrs.asdict(), getattr(node.metadata, "dimension_names", None))
        if spec.inner:
            # A level of an OME-Zarr image takes its axes and voxel size from the parent group.
            parent, _, leaf = spec.inner.rpartition("/")
            try:
                group = zarr.open_group(str(spec.container), mode="r", path=parent or None)
                found = _ome_multiscale(group.attrs.asdict())
            except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
                found = None
            if found is not None and leaf in [
                str(d.get("path")) for d in found[1].get("datasets") or []
            ]:
                meta = _ome_level_meta(spec, found[0], found[1], leaf)
    meta.update(format=_zarr_format(array), chunks=tuple(array.chunks))
    return array, meta


def _hdf5_datasets(group: Any) -> list[str]:
    import h5py

    names: list[str] = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def _open_hdf5(spec: ArraySpec, mode: str) -> tuple[Any, dict[str, Any]]:
    h5py = require("h5py", "scale", "reading and writing HDF5 files")

    if not spec.container.is_file():
        raise InputError(f"{spec}: no such file")
    try:
        f = h5py.File(spec.container, mode)
    except OSError as exc:
        raise InputError(f"{spec}: not a readable HDF5 file ({one_line(exc)})") from None
    node = f[spec.inner] if spec.inner and spec.inner in f else None
    if spec.inner and node is None:
        f.close()
        raise InputError(f"{spec}: no dataset {spec.inner!r} in this file")
    if node is None or isinstance(node, h5py.Group):
        names = _hdf5_datasets(node if node is not None else f)
        if len(names) != 1:
            f.close()
            listing = ", ".join(names[:8]) if names else "none"
            raise InputError(
                f"{spec}: name one dataset with file.h5:/path (datasets here: {listing})"
            )
        node = (node if node is not None else f)[names[0]]
    meta = _plain_meta(dict(node.attrs))
    meta.update(format="hdf5", chunks=tuple(node.chunks) if node.chunks else tuple(node.shape))
    return node, meta


def open_array(spec: str | os.PathLike | ArraySpec, mode: str = "r") -> tuple[Any, dict[str, Any]]:
    """Open an array named by a spec (see the module docstring) without reading it.

    Parameters
    ----------
    spec : str or path
        ``volume.zarr/raw``, ``image.ome.zarr``, ``file.h5:/raw``...
    mode : {"r", "r+"}
        Read only, or read and write.

    Returns
    -------
    array : zarr.Array or h5py.Dataset
        Sliced like a NumPy array; only the chunks a slice touches are read.
    meta : dict
        ``spec``, ``format``, ``shape``, ``dtype``, ``chunks``, ``axes``, ``spacing``, ``ome``.

    Raises
    ------
    InputError
        One line naming the spec, when it is missing, not an array or unreadable.

    Examples
    --------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "v.zarr") + "/raw"
    >>> a = create_array(p, (4, 6), np.uint8, (2, 3), spacing=(0.5, 0.5))
    >>> a[:] = 7
    >>> arr, meta = open_array(p)
    >>> arr.shape, meta["spacing"], int(arr[1, 2])
    ((4, 6), (0.5, 0.5), 7)
    """
    sp = parse_spec(spec)
    if mode not in ("r", "r+"):
        raise ConfigError(f"mode must be 'r' or 'r+', got {mode!r}")
    if sp.kind == "n5":
        raise InputError(f"{sp}: N5 is not supported (zarr 3 dropped it); convert it to zarr")
    array, meta = _open_hdf5(sp, mode) if sp.kind == "hdf5" else _open_zarr(sp, mode)
    if meta["axes"] is not None and len(meta["axes"]) != array.ndim:
        meta["axes"] = None
    meta.update(spec=str(sp), shape=tuple(array.shape), dtype=np.dtype(array.dtype))
    return array, meta


# ----------------------------------------------------------------------------------------------
# creating


def _check_axes_letters(axes: str, ndim: int | None) -> str:
    axes = axes.upper()
    order = [_AXIS_ORDER.find(a) for a in axes]
    if (
        -1 in order
        or order != sorted(set(order))
        or not 2 <= sum(a in "ZYX" for a in axes) <= 3
        or (ndim is not None and len(axes) != ndim)
    ):
        raise ConfigError(
            f"axes {axes!r} must be letters of TCZYX in that order with 2 or 3 spatial axes"
            + (f", one per dimension of a {ndim}-D array" if ndim is not None else "")
        )
    return axes


def _default_axes(ndim: int, spacing: Sequence[float] | None) -> str | None:
    if spacing is not None and len(spacing) in (ndim, ndim - 1) and len(spacing) in (2, 3):
        spatial = "ZYX"[3 - len(spacing):]
        return spatial if len(spacing) == ndim else "C" + spatial
    return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim)


def _existing_zarr_format(container: Path) -> int | None:
    if (container / "zarr.json").is_file():
        return 3
    if (container / ".zgroup").is_file() or (container / ".zarray").is_file():
        return 2
    return None


def create_array(
    spec: str | os.PathLike | ArraySpec,
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    spacing: Sequence[float] | None = None,
    *,
    axes: str | None = None,
    fill_value: Any = 0,
    zarr_format: int | None = None,
    ome: bool | None = None,
    unit: str | None = "micrometer",
    pyramid: bool = False,
    overwrite: bool = False,
    origin: Sequence[float] | None = None,
) -> Any:
    """Create an empty chunked array (zarr, OME-Zarr image or HDF5 dataset) and return it.

    Parameters
    ----------
    spec : str or path
        Where, in the syntax of the module docstring; parent groups are created.
    shape, dtype, chunks
        Of the array; chunks are clipped to the shape.
    spacing : sequence of float, optional
        Voxel size of the spatial axes, in ``unit``.
    axes : str, optional
        Letters of ``TCZYX`` (default: from the number of dimensions and of spacings, e.g.
        ``CZYX`` for a 4-D array).
    fill_value
        Value of never-written chunks.
    zarr_format : {2, 3}, optional
        For a new zarr store (default 3); an existing store keeps its own format.
    ome : bool, optional
        Write an OME-Zarr image (needs the ``ome`` extra): the spec names the image group and
        the array is its level ``0`` (default: when the store's name ends in ``.ome.zarr`` and
        the inner path is empty or ``labels/<name>``, a label image of the image above, listed
        in its ``labels`` group with ``image-label`` metadata).
    unit : str or None
        Unit of ``spacing`` (None: unknown, no unit is written): on the axes of an OME-Zarr
        image; a plain array stores ``element_size_um`` for micrometres, else ``spacing`` and
        ``unit`` (what :func:`open_array` reads back).
    origin : sequence of float, optional
        For an OME-Zarr image: the position of voxel 0 along the spatial axes, in ``unit``
        (``meta["origin"]`` of :func:`open_array`), written as each level's translation.
    pyramid : bool
        For an OME-Zarr image, also create the lower levels of
        :func:`useg.io.ome.pyramid_factors` (empty: :func:`useg.io.ome.fill_levels` fills them).
    overwrite : bool
        Replace an existing array; otherwise an existing one is an error.

    Returns
    -------
    zarr.Array or h5py.Dataset

    Examples
    --------
    >>> import tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "img.ome.zarr")
    >>> a = create_array(p, (1, 8, 8), np.float32, (1, 4, 4), spacing=(0.2, 0.2))
    >>> open_array(p)[1]["axes"], open_array(p)[1]["spacing"]
    ('CYX', (0.2, 0.2))
    """
    sp = parse_spec(spec)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ConfigError(f"{sp}: invalid shape {shape}")
    chunks = tuple(max(1, min(int(c), max(s, 1))) for c, s in zip(chunks, shape, strict=True))
    if axes is not None:
        axes = _check_axes_letters(axes, len(shape))
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        n_space = sum(a in "ZYX" for a in axes) if axes else None
        if not all(np.isfinite(s) and s > 0 for s in spacing) or (
            n_space is not None and len(spacing) != n_space
        ) or len(spacing) > len(shape):
            raise ConfigError(f"{sp}: spacing {spacing} does not fit shape {shape} axes {axes}")
    if sp.kind == "n5":
        raise InputError(f"{sp}: N5 is not supported (zarr 3 dropped it); write zarr instead")
    if sp.kind == "hdf5":
        return _create_hdf5(sp, shape, dtype, chunks, spacing, axes, fill_value, overwrite,
                            unit)
    return _create_zarr(sp, shape, dtype, chunks, spacing, axes, fill_value, zarr_format,
                        (ome, unit, pyramid, origin), overwrite)


def _create_zarr(sp, shape, dtype, chunks, spacing, axes, fill_value, zarr_format, ome_options,
                 overwrite):
    zarr = require("zarr", "scale", "reading and writing zarr stores")

    from useg.io import ome as ngff

    ome, unit, pyramid, origin = ome_options

    existing = _existing_zarr_format(sp.container)
    if zarr_format is None:
        zarr_format = existing or 3
    elif existing is not None and existing != zarr_format and not (overwrite and not sp.inner):
        raise InputError(f"{sp}: the store is zarr format {existing}, not {zarr_format}")
    if zarr_format not in (2, 3):
        raise ConfigError(f"zarr_format must be 2 or 3, got {zarr_format}")
    if ome is None:
        ome = sp.container.name.lower().endswith(".ome.zarr") and (
            not sp.inner or ngff.is_label_path(sp.inner))
    if ome:
        ngff.require_writer(sp)
        axes = axes or _default_axes(len(shape), spacing)
        if axes is None:
            raise ConfigError(f"{sp}: give axes for an OME-Zarr image of shape {shape}")
    attrs: dict[str, Any] = {}
    if axes and not ome:
        attrs["axes"] = axes
    if spacing is not None and not ome:
        attrs.update(_spacing_attrs(spacing, unit))
    kwargs: dict[str, Any] = dict(
        shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value, attributes=attrs,
        overwrite=overwrite,
    )
    if axes and zarr_format == 3:
        kwargs["dimension_names"] = [a.lower() for a in axes]
    exists_error = InputError(f"{sp}: already exists (overwrite it or choose another path)")
    try:
        if ome:
            root_mode = "w" if overwrite and not sp.inner else "a"
            root = zarr.open_group(str(sp.container), mode=root_mode, zarr_format=zarr_format)
            group = root
            parts = sp.inner.split("/") if sp.inner else []
            for i, part in enumerate(parts):  # explicit groups all the way down
                group = group.require_group(part, overwrite=overwrite and i == len(parts) - 1)
            spatial = [n for n, a in zip(shape, axes, strict=True) if a in "ZYX"]
            factors = (ngff.pyramid_factors(spatial, spacing) if pyramid
                       else [(1,) * len(spatial)])
            levels = []
            for level, f in enumerate(factors):
                fk = [next(it) if a in "ZYX" else 1 for it in [iter(f)] for a in axes]
                level_shape = ngff.level_shape(shape, fk)
                level_chunks = tuple(min(c, max(n, 1)) for c, n in
                                     zip(chunks, level_shape, strict=True))
                levels.append(group.create_array(
                    str(level), **{**kwargs, "shape": level_shape, "chunks": level_chunks}))
            ngff.write_image_metadata(group, axes, spacing, unit, factors, origin=origin,
                                      name=sp.inner.rpartition("/")[2] or sp.container.name)
            if sp.inner and ngff.is_label_path(sp.inner):
                parent, _, name = sp.inner.rpartition("/")
                ngff.register_label(root[parent], name)
            return levels[0]
        if not sp.inner:
            if existing is not None and not overwrite:
                raise exists_error
            return zarr.create_array(str(sp.container), zarr_format=zarr_format, **kwargs)
        root = zarr.open_group(str(sp.container), mode="a", zarr_format=zarr_format)
        parent, _, leaf = sp.inner.rpartition("/")
        group = root.require_group(parent) if parent else root
        return group.create_array(leaf, **kwargs)
    except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError,
            zarr.errors.ContainsArrayAndGroupError, FileExistsError):
        raise exists_error from None
    except (zarr.errors.BaseZarrError, TypeError) as exc:
        raise InputError(f"{sp}: cannot create a zarr array here ({one_line(exc)})") from None


def _spacing_attrs(spacing: Sequence[float], unit: str | None) -> dict[str, Any]:
    """The attributes of a plain array's voxel size: ``element_size_um`` when it is in
    micrometres, else ``spacing`` with its ``unit`` (none when unknown), never micrometres
    claimed for a voxel size in another unit."""
    if unit == "micrometer":
        return {"element_size_um": list(spacing)}
    return {"spacing": list(spacing), **({"unit": unit} if unit else {})}


def _create_hdf5(sp, shape, dtype, chunks, spacing, axes, fill_value, overwrite, unit):
    h5py = require("h5py", "scale", "reading and writing HDF5 files")

    inner = sp.inner or "data"
    try:
        sp.container.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(sp.container, "a")
    except OSError as exc:
        raise InputError(f"{sp}: cannot open for writing ({one_line(exc)})") from None
    if inner in f:
        if not overwrite:
            f.close()
            raise InputError(f"{sp}: already exists (overwrite it or choose another path)")
        del f[inner]
    ds = f.create_dataset(inner, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill_value,
                          compression="gzip", compression_opts=1)
    if axes:
        ds.attrs["axes"] = axes
    for key, value in (_spacing_attrs(spacing, unit) if spacing is not None else {}).items():
        ds.attrs[key] = np.asarray(value, dtype=np.float64) if key != "unit" else value
    return ds


# ----------------------------------------------------------------------------------------------
# axis views


def _expand_key(key: Any, ndim: int) -> tuple[Any, ...]:
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    key = key + (slice(None),) * (ndim - len(key))
    if len(key) != ndim or not all(isinstance(k, (slice, int, np.integer)) for k in key):
        raise TypeError(f"only integers and slices index this view, got {key}")
    return key


class AxesView:
    """A lazy view of an array with some size-1 axes removed and a size-1 channel axis put in
    front; slicing it reads only the needed part of the array.

    Examples
    --------
    >>> v = AxesView(np.arange(24).reshape(1, 4, 6), drop=(0,), add_channel=True)
    >>> v.shape, v[:, 1:3, 0].tolist()
    ((1, 4, 6), [[6, 12]])
    """

    def __init__(self, array: Any, drop: Sequence[int] = (), add_channel: bool = False):
        if any(array.shape[d] != 1 for d in drop):
            raise ConfigError(f"can only drop axes of size 1, not {drop} of shape {array.shape}")
        self.array = array
        self.drop = tuple(drop)
        self.add_channel = add_channel
        kept = tuple(n for i, n in enumerate(array.shape) if i not in self.drop)
        self.shape = ((1,) if add_channel else ()) + kept
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, self.ndim)
        lead, rest = (key[0], key[1:]) if self.add_channel else (None, key)
        it = iter(rest)
        src = tuple(0 if i in self.drop else next(it) for i in range(self.array.ndim))
        data = np.asarray(self.array[src])
        if not self.add_channel:
            return data
        if isinstance(lead, slice):
            return data[np.newaxis][lead]
        if int(lead) not in (0, -1):
            raise IndexError(f"index {lead} is out of bounds for the channel axis of size 1")
        return data


def as_channels_first(array: Any, axes: str | None = None, spatial_ndim: int | None = None) -> Any:
    """Present an array in the library's order ``(C, *spatial)`` without reading it.

    Parameters
    ----------
    array : array-like
        Anything with ``shape`` and slicing (zarr, h5py, NumPy).
    axes : str, optional
        Its axes as letters of ``TCZYX`` (from :func:`open_array`); a ``T`` axis must have size 1.
        When None, an array with ``spatial_ndim`` dimensions gets a channel axis and one with
        ``spatial_ndim + 1`` is taken as channels first.
    spatial_ndim : int, optional
        Spatial dimensions expected (e.g. a model's); checked against ``axes`` when both given.

    Examples
    --------
    >>> as_channels_first(np.zeros((5, 6, 7)), "ZYX").shape
    (1, 5, 6, 7)
    >>> as_channels_first(np.zeros((3, 6, 7)), None, spatial_ndim=2).shape
    (3, 6, 7)
    """
    shape = tuple(array.shape)
    if axes is None:
        if spatial_ndim is None:
            raise ConfigError("give the axes or the number of spatial dimensions")
        if len(shape) == spatial_ndim:
            return AxesView(array, add_channel=True)
        if len(shape) == spatial_ndim + 1:
            return array
        raise InputError(
            f"an array of shape {shape} is neither {spatial_ndim}-D nor channels plus "
            f"{spatial_ndim}-D"
        )
    axes = _check_axes_letters(axes, len(shape))
    n_space = sum(a in "ZYX" for a in axes)
    if spatial_ndim is not None and n_space != spatial_ndim:
        raise InputError(
            f"an array with axes {axes} has {n_space} spatial axes, expected {spatial_ndim}"
        )
    drop = tuple(i for i, a in enumerate(axes) if a == "T")
    if any(shape[i] != 1 for i in drop):
        raise InputError(f"an array with axes {axes} and shape {shape} has several time points")
    if not drop and "C" in axes:
        return array
    return AxesView(array, drop=drop, add_channel="C" not in axes)

"""Reading and writing microscopy images (PNG, TIFF, NIfTI) in the library's axis order.

Images come back as ``(C, Y, X)`` or ``(C, Z, Y, X)`` arrays with the channel axis always present;
label images as ``(Y, X)`` or ``(Z, Y, X)``. Every problem with a file a user gave becomes one
:class:`useg.errors.InputError` naming the file. Writers are atomic
(:func:`useg.io.files.atomic_write`).

Voxel spacing is reported in micrometres when the file states a unit (``meta["unit"]`` is then
``"micrometer"``), otherwise as the file's ratios in no named unit (``meta["unit"]`` None), or as
``None`` when the file holds no spacing. Writers keep that distinction: a spacing of unknown unit
is written without one, so a result never claims micrometres its input did not state.

NIfTI (``.nii``, ``.nii.gz``; needs nibabel: ``pip install useg[nifti]``) stores its voxels in
X, Y, Z order (then time and channels); they are read into useg's order (C, Z, Y, X), the
fourth axis being channels, with the spacing from the voxel sizes (``pixdim``) in the unit of
the header. ``meta["nifti"]`` holds the file's header (affine included), which
:func:`write_image` takes as ``reference`` to write results in the input's space.
"""

from __future__ import annotations

import gzip
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, InputError, input_error, one_line, require
from useg.io.files import IMAGE_EXTS, NIFTI_EXTS, SOFTWARE, atomic_write, image_ext

__all__ = ["UNIT", "read_image", "read_labels", "write_image"]

# The unit of every spacing useg reports or writes when the file states one (a UDUNITS-2 name,
# as OME-Zarr spells it); ``None`` stands for an unknown unit.
UNIT = "micrometer"
# How a plain TIFF written here marks a spacing of unknown unit in its description.
_NO_UNIT = "none"

# Length units found in OME-XML and ImageJ metadata, in micrometres.
_UNIT_UM = {
    "m": 1e6,
    "cm": 1e4,
    "mm": 1e3,
    "um": 1.0,
    "µm": 1.0,  # micro sign U+00B5
    "μm": 1.0,  # Greek mu U+03BC
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
}
# TIFF ResolutionUnit tag values -> micrometres per unit (4 and 5 are a common extension).
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


# --------------------------------------------------------------------------------------------
# reading


def _check_readable(path: Path, exts: Sequence[str] = IMAGE_EXTS) -> None:
    if not path.exists():
        raise input_error(path, "file not found")
    if path.is_dir():
        raise input_error(path, "is a folder, not an image file")
    if image_ext(path) not in exts:
        raise input_error(
            path,
            f"unsupported format {path.suffix or '(no extension)'!r}; use PNG, TIFF or NIfTI"
        )


def _nibabel(path: Path) -> Any:
    """The nibabel module, or one line saying how to install it."""
    try:
        return require("nibabel", "nifti", "reading and writing NIfTI")
    except ConfigError as exc:
        raise input_error(path, str(exc)) from None


# NIfTI xyzt spatial units -> micrometres (an unknown unit is kept as it is).
_NIFTI_UNIT_UM = {"meter": 1e6, "mm": 1e3, "micron": 1.0}


def _read_nifti(path: Path) -> tuple[np.ndarray, str, dict[str, float], bool, str, Any]:
    """Return (array in the file's X, Y, Z, T, C order, axes letters, spacing by axis letter,
    whether its unit is known, original dtype name, header)."""
    nib = _nibabel(path)
    img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise input_error(path, f"not a single-file NIfTI image ({type(img).__name__})")
    header = img.header
    arr = np.asanyarray(img.dataobj)  # scaled by scl_slope / scl_inter when the file has them
    if arr.ndim > 5:
        raise input_error(path, f"NIfTI image of {arr.ndim} dimensions {arr.shape}; at most "
                          "X, Y, Z, time and channels are read")
    # The fourth axis of a 4D file is read as channels (a volume per channel or class); a 5D
    # file is (X, Y, Z, time, vector), whose vector axis (dim 5) holds channels.
    axes = ("XYZC" if arr.ndim == 4 else "XYZTC")[: arr.ndim]
    zooms = [float(z) for z in header.get_zooms()[: min(arr.ndim, 3)]]
    space_unit = header.get_xyzt_units()[0]
    known = space_unit in _NIFTI_UNIT_UM
    factor = _NIFTI_UNIT_UM.get(space_unit, 1.0)
    spacing: dict[str, float] = {}
    if all(np.isfinite(z) and z > 0 for z in zooms):
        spacing = {a: z * factor for a, z in zip("XYZ", zooms, strict=False)}
    dtype = str(np.dtype(header.get_data_dtype()).newbyteorder("="))
    return arr, axes, spacing, known, dtype, header.copy()


def _read_png(path: Path, *, labels: bool
              ) -> tuple[np.ndarray, str, dict[str, float], bool, str]:
    """Return (array, axes letters, spacing by axis letter, whether its unit is known (always:
    Pillow reads only a pHYs chunk in metres), original dtype name)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise input_error(path, f"not a PNG file (it holds {im.format} data)")
        im.load()
        mode = im.mode
        info = dict(im.info)
        if mode == "1":
            # Bilevel: 0/255 intensities for images, 0/1 classes for labels.
            arr = np.asarray(im.convert("L")) if not labels else np.asarray(im).astype(np.uint8)
            dtype = "bool"
        elif labels and mode in ("P", "PA"):
            # Palette PNG labels store the class or instance index; the colours are only display.
            arr = np.asarray(im)
            arr = arr[..., 0] if arr.ndim == 3 else arr
            dtype = str(arr.dtype)
        elif mode in ("L", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(im)
            dtype = str(arr.dtype)
        elif mode in ("LA", "La"):
            arr = np.asarray(im)[..., 0]
            dtype = str(arr.dtype)
        elif mode in ("P", "PA") and _gray_palette(im):
            # A palette of grays (image editors save grayscale this way): one channel.
            arr = np.asarray(im.convert("L"))
            dtype = str(arr.dtype)
        else:
            # RGB(A) and everything else (palette, CMYK, YCbCr): RGB, alpha dropped.
            if mode not in ("RGB", "RGBA", "RGBa", "RGBX"):
                im = im.convert("RGBA" if "transparency" in info or mode.endswith("A") else "RGB")
            arr = np.asarray(im)[..., :3]
            dtype = str(arr.dtype)
    axes = "YXS" if arr.ndim == 3 else "YX"
    spacing: dict[str, float] = {}
    dpi = info.get("dpi")  # Pillow reports pHYs only when its unit is the metre
    if dpi and len(dpi) == 2 and min(dpi) > 0:
        spacing = {"X": 25400.0 / float(dpi[0]), "Y": 25400.0 / float(dpi[1])}
    return arr, axes, spacing, True, dtype


def _gray_palette(im: Any) -> bool:
    """Whether the colours of palette image ``im`` that its pixels use are all grays."""
    palette = np.asarray(im.getpalette() or [], dtype=np.int64)
    colours = palette[: len(palette) // 3 * 3].reshape(-1, 3)
    used = np.unique(np.asarray(im))
    used = used[used < len(colours)]
    return bool(len(used)) and bool((colours[used] == colours[used][:, :1]).all())


def _unit_factor(unit: Any) -> float | None:
    if not isinstance(unit, str):
        return None
    u = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _UNIT_UM.get(u)


def _ome_spacing(xml: str) -> tuple[dict[str, float], bool]:
    """Spacing by axis letter in an OME-XML description, and whether every unit is known."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}, True
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}, True
    out, known = {}, True
    for ax in "XYZ":
        value = pixels.get(f"PhysicalSize{ax}")
        if value is None:
            continue
        factor = _unit_factor(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
        try:
            v = float(value)
        except ValueError:
            continue
        if v > 0 and np.isfinite(v):
            out[ax] = v * (factor if factor is not None else 1.0)
            known = known and factor is not None
    return out, known


def _resolution(page: Any) -> tuple[float, float] | None:
    """Pixels per unit along X and Y from the TIFF tags, or None."""
    tags = page.tags
    xr, yr = tags.get("XResolution"), tags.get("YResolution")
    if xr is None or yr is None:
        return None
    try:
        x = xr.value[0] / xr.value[1]
        y = yr.value[0] / yr.value[1]
    except (TypeError, IndexError, ZeroDivisionError):
        return None
    if not (x > 0 and y > 0 and np.isfinite(x) and np.isfinite(y)):
        return None
    return float(x), float(y)


def _tiff_spacing(tif: Any, page: Any) -> tuple[dict[str, float], bool]:
    """Spacing by axis letter, and whether its unit is known (else the file's bare ratios)."""
    if tif.is_ome and tif.ome_metadata:
        found, known = _ome_spacing(tif.ome_metadata)
        if found:
            return found, known
    res = _resolution(page)
    unit_tag = page.tags.get("ResolutionUnit")
    res_unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij is not None:
        factor = _unit_factor(ij.get("unit"))
        out: dict[str, float] = {}
        if res is not None and (factor is not None or res != (1.0, 1.0)):
            f = factor if factor is not None else 1.0
            out = {"X": f / res[0], "Y": f / res[1]}
        if "spacing" in ij:
            out["Z"] = float(ij["spacing"]) * (factor if factor is not None else 1.0)
        elif factor is not None and out:
            out["Z"] = factor  # ImageJ leaves out spacing=1 (one unit per slice)
        return out, factor is not None
    for meta in tif.shaped_metadata or ():
        # Written by write_image: the exact spacing of every spatial axis, in micrometres
        # unless its unit is marked unknown.
        sp, axes = meta.get("spacing"), meta.get("axes")
        if isinstance(sp, list) and isinstance(axes, str):
            spatial = [a for a in axes if a in "ZYX"]
            if len(sp) == len(spatial):
                return ({a: float(v) for a, v in zip(spatial, sp, strict=True)},
                        meta.get("unit") != _NO_UNIT)
    if res is None:
        return {}, True
    if res_unit in _RESUNIT_UM:
        f = _RESUNIT_UM[res_unit]
        return {"X": f / res[0], "Y": f / res[1]}, True
    if res != (1.0, 1.0):  # unit "none" but a real ratio: keep it, unit unknown
        return {"X": 1.0 / res[0], "Y": 1.0 / res[1]}, False
    return {}, True


def _read_tiff(path: Path) -> tuple[np.ndarray, str, dict[str, float], bool, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise input_error(path, "the TIFF file holds no image")
        full = [s for s in tif.series if not s.keyframe.is_reduced]  # not thumbnails
        if len(full) > 1:
            # Reading the first alone would drop the others' planes or positions silently.
            shapes = ", ".join(str(tuple(s.shape)) for s in full[:3])
            raise input_error(path, f"holds {len(full)} separate images (TIFF series) of shapes "
                              f"{shapes}{', ...' if len(full) > 3 else ''}; useg reads one "
                              "image per file: save them as one stack, or each in a file "
                              "of its own")
        series = full[0] if full else tif.series[0]
        page = series.keyframe
        arr = series.asarray()
        axes = series.axes
        if len(axes) != arr.ndim:
            raise input_error(path, f"cannot interpret TIFF axes {axes!r} for shape {arr.shape}")
        extras = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        n_alpha = sum(1 for e in extras if e in (1, 2))  # associated / unassociated alpha
        if n_alpha and "S" in axes:
            s = axes.index("S")
            arr = np.take(arr, np.arange(arr.shape[s] - n_alpha), axis=s)
        spacing, known = _tiff_spacing(tif, page)
    return arr, axes, spacing, known, str(arr.dtype)


def _read_any(path: Path, *, labels: bool
              ) -> tuple[np.ndarray, str, dict[str, float], str, dict[str, Any]]:
    """Return (array, axes letters, spacing by axis letter, original dtype name, extras of the
    meta dictionary: ``unit`` of the spacing, the header of a NIfTI file)."""
    _check_readable(path)
    ext = image_ext(path)
    extras: dict[str, Any] = {}
    if ext in NIFTI_EXTS:
        _nibabel(path)  # a missing nibabel is one line of its own, not a "corrupt" file
    try:
        if ext == ".png":
            arr, axes, spacing, known, dtype = _read_png(path, labels=labels)
        elif ext in NIFTI_EXTS:
            arr, axes, spacing, known, dtype, extras["nifti"] = _read_nifti(path)
        else:
            arr, axes, spacing, known, dtype = _read_tiff(path)
    except InputError:
        raise
    except MemoryError:
        raise input_error(path, "image too large to fit in memory") from None
    except Exception as exc:  # decoders raise many types; to the user they all mean "corrupt"
        kind = {".png": "PNG", ".nii": "NIfTI", ".nii.gz": "NIfTI"}.get(ext, "TIFF")
        raise input_error(
            path, f"not a readable {kind} image or corrupt ({one_line(exc)})"
        ) from None
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind not in "biuf":
        raise input_error(path, f"unsupported pixel type {arr.dtype}")
    if arr.size == 0:
        raise input_error(path, f"empty image (shape {tuple(arr.shape)})")
    extras["unit"] = UNIT if known else None
    return arr, axes, spacing, dtype, extras


def _normalise_axes(
    path: Path,
    arr: np.ndarray,
    axes: str,
    *,
    channel_axis: int | None,
    ndim: int | None,
) -> tuple[np.ndarray, bool]:
    """Reorder a file's array to (C, [Z,] Y, X); return it and whether it has a Z axis."""
    letters = list(axes)
    if channel_axis is not None:
        if not -arr.ndim <= channel_axis < arr.ndim:
            raise input_error(
                path, f"channel_axis={channel_axis} is out of range for an array of shape "
                f"{arr.shape}"
            )
        ca = channel_axis % arr.ndim
        # The user's choice wins; other channel-like letters become unnamed stack axes.
        letters = ["Q" if a in "CS" else a for a in letters]
        letters[ca] = "C"
    else:
        channel_like = [i for i, a in enumerate(letters) if a in "CS" and arr.shape[i] > 1]
        if len(channel_like) > 1:
            raise input_error(
                path, f"has {len(channel_like)} channel axes (axes {axes!r}, shape "
                f"{arr.shape}); pass channel_axis to choose one"
            )
        ca = channel_like[0] if channel_like else None
        letters = ["C" if i == ca else ("Q" if a in "CS" else a) for i, a in enumerate(letters)]

    # Y and X by name when the file names them (they are kept even when of size 1), else the
    # last two non-channel axes; of the rest, size-1 axes are dropped and one may be Z.
    others = [i for i in range(arr.ndim) if i != ca]
    if len(others) < 2:
        raise input_error(path, f"cannot find Y and X axes in an array of shape {arr.shape}")
    if letters.count("Y") == 1 and letters.count("X") == 1:
        yx = [letters.index("Y"), letters.index("X")]
    else:
        yx = others[-2:]
    rest = [i for i in others if i not in yx]
    stack = [i for i in rest if arr.shape[i] > 1]
    dropped = [i for i in rest if arr.shape[i] == 1]
    if len(stack) > 1:
        desc = ", ".join(f"{letters[i]}={arr.shape[i]}" for i in stack)
        raise input_error(
            path, f"has more axes than (C, Z, Y, X) can hold ({desc}; file axes {axes!r}); "
            "save one volume per file"
        )
    if stack and ndim == 2:
        if ca is None and letters[stack[0]] != "Z":
            ca = stack[0]  # an unnamed stack of 2D planes: read it as channels
            stack = []
        else:
            raise input_error(
                path, f"holds a 3D volume of shape {arr.shape} (axes {axes!r}) but a 2D image "
                "was expected"
            )
    if not stack and ndim == 3:
        raise input_error(
            path, f"holds a 2D image of shape {arr.shape} but a 3D volume was expected"
        )

    order = ([ca] if ca is not None else []) + stack + yx
    arr = np.squeeze(arr, axis=tuple(dropped)) if dropped else arr
    # Recompute positions after squeezing the size-1 axes away.
    remap = {old: new for new, old in enumerate(i for i in range(len(letters)) if i not in dropped)}
    arr = np.transpose(arr, [remap[i] for i in order])
    if ca is None:
        arr = arr[np.newaxis]
    return np.ascontiguousarray(arr), bool(stack)


def _calibration(found: dict[str, float], has_z: bool, unit: str | None) -> dict[str, Any]:
    """``spacing`` (per spatial axis, or None unless the file gives every one) and its ``unit``
    (None without a spacing) for the meta dictionary."""
    keys = "ZYX" if has_z else "YX"
    if not all(k in found for k in keys):
        return {"spacing": None, "unit": None}
    return {"spacing": tuple(float(found[k]) for k in keys), "unit": unit}


def read_image(
    path: str | os.PathLike, *, channel_axis: int | None = None, ndim: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a PNG or TIFF image as a ``(C, Y, X)`` or ``(C, Z, Y, X)`` array.

    The channel axis is always present: grayscale gives ``C = 1``, RGB gives ``C = 3`` and an
    alpha channel (RGBA PNG, TIFF extra samples marked alpha) is dropped, since transparency
    carries no signal for segmentation. The pixel type is kept (a bilevel image becomes uint8).

    Axes are taken from ImageJ or OME metadata when the file has them; otherwise a plain
    multi-page TIFF is a Z stack, so a ``(5, 20, 30)`` stack reads as ``(1, 5, 20, 30)``. Pass
    ``ndim=2`` to read such a stack as channels of one 2D image instead, or ``channel_axis`` (an
    axis of the array as stored in the file) to name the channel axis yourself. Size-1 axes such
    as a single time point are dropped; a time axis with no Z axis is read as Z. 16-bit RGB PNGs
    are reduced to 8 bits by Pillow; use TIFF to keep them.

    Parameters
    ----------
    path : str or PathLike
        A ``.png``, ``.tif``, ``.tiff``, ``.nii`` or ``.nii.gz`` file. For TIFFs holding several
        series (pyramids, thumbnails), the first series is read. A NIfTI file's X, Y, Z axes
        become Z, Y, X; its fourth axis is the channel axis.
    channel_axis : int, optional
        Axis of the stored array that holds channels (negative counts from the end).
    ndim : {2, 3}, optional
        Expected number of spatial axes; a file with another number raises InputError.

    Returns
    -------
    image : ndarray
        ``(C, Y, X)`` or ``(C, Z, Y, X)``, C-contiguous, native byte order.
    meta : dict
        ``spacing`` (tuple of floats per spatial axis Z, Y, X in micrometres when the file states
        a unit, or None when the file holds no spacing), ``unit`` (``"micrometer"``, or None when
        the file states no unit: the spacing is then its bare ratios), ``axes`` (``"CYX"`` or
        ``"CZYX"``),
        ``dtype`` (the file's pixel type) and ``path``; for NIfTI also ``nifti``, the file's
        header (its affine: ``meta["nifti"].get_best_affine()``).

    Raises
    ------
    InputError
        Missing file, unsupported extension, unreadable or corrupt file, empty image, NaN or
        infinite values, or axes that cannot be interpreted.

    Examples
    --------
    >>> import tempfile
    >>> p = write_image(Path(tempfile.mkdtemp()) / "a.tif", np.zeros((5, 20, 30), np.uint8),
    ...                 axes="ZYX", spacing=(2.0, 0.5, 0.5))
    >>> img, meta = read_image(p)
    >>> img.shape, meta["axes"], meta["spacing"]
    ((1, 5, 20, 30), 'CZYX', (2.0, 0.5, 0.5))
    """
    path = Path(path)
    if ndim not in (None, 2, 3):
        raise InputError(f"ndim must be 2, 3 or None, not {ndim!r}")
    arr, axes, found, dtype, extras = _read_any(path, labels=False)
    arr, has_z = _normalise_axes(path, arr, axes, channel_axis=channel_axis, ndim=ndim)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise input_error(path, f"{bad} pixels are NaN or infinite")
    meta = {
        "axes": "CZYX" if has_z else "CYX",
        "dtype": dtype,
        "path": str(path),
        **extras,
        **_calibration(found, has_z, extras["unit"]),
    }
    return arr, meta


def read_labels(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a label image as a ``(Y, X)`` or ``(Z, Y, X)`` integer array (no channel axis).

    Integer pixel types are kept; bilevel images become uint8 0/1; palette PNGs give their
    indices; float files are accepted only when every value is an integer (converted to int32,
    or int64 when needed). An RGB(A) label image is accepted only when all colour channels are
    equal (a grayscale image saved as RGB).

    Parameters
    ----------
    path : str or PathLike
        A ``.png``, ``.tif``, ``.tiff``, ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    labels : ndarray
        ``(Y, X)`` or ``(Z, Y, X)``.
    meta : dict
        ``spacing`` (per spatial axis or None), ``unit`` (as for :func:`read_image`), ``axes``
        (``"YX"`` or ``"ZYX"``), ``dtype`` (the
        file's pixel type) and ``path`` (and ``nifti`` as for :func:`read_image`).

    Raises
    ------
    InputError
        As for :func:`read_image`, and for differing colour channels or non-integer values.

    Examples
    --------
    >>> import tempfile
    >>> lab = np.array([[0, 1], [2, 2]], np.uint16)
    >>> out, meta = read_labels(write_image(Path(tempfile.mkdtemp()) / "l.tif", lab))
    >>> out.dtype, meta["axes"], bool((out == lab).all())
    (dtype('uint16'), 'YX', True)
    """
    path = Path(path)
    arr, axes, found, dtype, extras = _read_any(path, labels=True)
    arr, has_z = _normalise_axes(path, arr, axes, channel_axis=None, ndim=None)
    if arr.shape[0] > 1:
        if not (arr == arr[:1]).all():
            raise input_error(
                path, f"label image has {arr.shape[0]} channels that differ (a colour image?); "
                "expected one integer label per pixel"
            )
    arr = arr[0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise input_error(path, "label image holds NaN or infinite values")
        if not (arr == np.round(arr)).all():
            raise input_error(path, "label image holds non-integer values; expected integer labels")
        big = max(abs(float(arr.min())), abs(float(arr.max())))
        arr = arr.astype(np.int32 if big < 2**31 else np.int64)
    meta = {
        "axes": "ZYX" if has_z else "YX",
        "dtype": dtype,
        "path": str(path),
        **extras,
        **_calibration(found, has_z, extras["unit"]),
    }
    return np.ascontiguousarray(arr), meta


# --------------------------------------------------------------------------------------------
# writing


def _check_axes(axes: str | None, arr: np.ndarray, path: Path) -> str:
    if axes is None:
        if arr.ndim == 2:
            return "YX"
        if arr.ndim == 4:
            return "CZYX"
        raise input_error(
            path, f"an array of shape {arr.shape} is ambiguous; pass axes='CYX' (channels) or "
            "axes='ZYX' (a volume)"
        )
    axes = axes.upper()
    valid = {"YX", "CYX", "ZYX", "CZYX"}
    if axes not in valid:
        raise input_error(path, f"axes must be one of {sorted(valid)}, not {axes!r}")
    if len(axes) != arr.ndim:
        raise input_error(path, f"axes {axes!r} do not match an array of shape {arr.shape}")
    return axes


def _check_spacing(spacing: Sequence[float] | None, n_spatial: int, path: Path) -> list[float]:
    if spacing is None:
        return []
    try:
        sp = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise input_error(path, f"spacing must be a sequence of numbers, not {spacing!r}") from None
    if len(sp) != n_spatial or not all(np.isfinite(s) and s > 0 for s in sp):
        raise input_error(
            path, f"spacing must hold {n_spatial} positive numbers (one per spatial axis), "
            f"not {spacing!r}"
        )
    return sp


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    axes: str | None = None,
    compress: bool = True,
    software: str = SOFTWARE,
    reference: Any = None,
    unit: str | None = UNIT,
) -> Path:
    """Write an image or label array to TIFF, PNG or NIfTI, atomically.

    TIFF: uint8, uint16 and float32 arrays are written as ImageJ hyperstacks (Fiji opens them with
    their axes and calibration); other pixel types as plain TIFFs whose description holds the axes
    and spacing, which :func:`read_image` restores. The Software tag is ``software``. Spacing
    also goes into the resolution tags. ``compress`` uses lossless zlib (deflate).

    PNG: only 2D uint8 or uint16 arrays (a leading channel axis of size 1 is allowed); the XY
    spacing is stored in the pHYs chunk.

    NIfTI (``.nii``, ``.nii.gz``; needs nibabel): the array is stored as X, Y, Z with channels
    as the fourth axis. With a ``reference`` header (``meta["nifti"]`` of :func:`read_image`)
    the file keeps its affine, voxel sizes and units (``spacing`` is then not used); without
    one the affine is the diagonal of ``spacing`` in micrometres. The description (``descrip``)
    is ``software``.

    The file is written to a temporary name first and moved into place only when complete (see
    :func:`atomic_write`). Boolean arrays are written as uint8 0/1.

    Parameters
    ----------
    path : str or PathLike
        Destination, ending in ``.tif``, ``.tiff``, ``.png``, ``.nii`` or ``.nii.gz``.
    array : ndarray
        In the library's axis order, described by ``axes``.
    spacing : sequence of float, optional
        Spacing of each spatial axis ((Z,) Y, X) in ``unit``.
    axes : {"YX", "CYX", "ZYX", "CZYX"}, optional
        Axes of ``array``; required for 3D arrays, where channels and Z cannot be told apart.
    compress : bool
        Compress losslessly (TIFF: zlib; PNG: zlib level 6 instead of 0).
    software : str
        The TIFF Software tag: ``useg``, or for results :data:`useg.io.files.RESULT_SOFTWARE`
        (:func:`useg.io.files.is_result_file`); NIfTI: the header's ``descrip``.
    reference : nibabel NIfTI header, optional
        NIfTI only: the header whose affine, voxel sizes and units the file takes (of the
        image the array was computed from; its spatial shape must match). Ignored for the
        other formats.
    unit : {"micrometer", None}
        The unit of ``spacing``; None when it is unknown (``meta["unit"]`` of a file that
        states none): the file then stores the ratios without a unit (a PNG stores none, since
        its pHYs chunk names metres or nothing).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        For an unsupported extension, pixel type (PNG) or axes, or invalid spacing.

    Examples
    --------
    >>> import tempfile
    >>> p = write_image(Path(tempfile.mkdtemp()) / "a.png", np.full((4, 6), 7, np.uint8))
    >>> read_image(p)[0].shape
    (1, 4, 6)
    """
    path = Path(path)
    ext = image_ext(path)
    if ext not in IMAGE_EXTS:
        raise input_error(
            path,
            f"unsupported format {path.suffix or '(no extension)'!r}; use PNG, TIFF or NIfTI"
        )
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise input_error(path, f"cannot write pixel type {arr.dtype}")
    if arr.size == 0:
        raise input_error(path, f"cannot write an empty array of shape {arr.shape}")
    if unit not in (UNIT, None):
        raise input_error(path, f"unit must be {UNIT!r} or None (unknown), not {unit!r}")
    axes = _check_axes(axes, arr, path)
    sp = _check_spacing(spacing, sum(a in "ZYX" for a in axes), path)
    known = unit is not None
    if ext == ".png":
        _write_png(path, arr, axes, sp if known else [], compress)
    elif ext in NIFTI_EXTS:
        _write_nifti(path, arr, axes, sp, compress, software, reference, known)
    else:
        _write_tiff(path, arr, axes, sp, compress, software, known)
    return path


def _write_png(path: Path, arr: np.ndarray, axes: str, sp: list[float], compress: bool) -> None:
    from PIL import Image

    if axes == "CYX" and arr.shape[0] == 1:
        arr, axes = arr[0], "YX"
    if axes != "YX":
        raise input_error(
            path, f"PNG holds only 2D grayscale images; got axes {axes!r} shape {arr.shape} "
            "(use .tif)"
        )
    if arr.dtype not in (np.uint8, np.uint16):
        raise input_error(
            path, f"PNG holds only uint8 or uint16 pixels, not {arr.dtype} (use .tif)"
        )
    im = Image.fromarray(np.ascontiguousarray(arr))
    kwargs: dict[str, Any] = {"format": "PNG", "compress_level": 6 if compress else 0}
    if sp:
        kwargs["dpi"] = (25400.0 / sp[-1], 25400.0 / sp[-2])
    with atomic_write(path) as tmp:
        im.save(tmp, **kwargs)


def _write_tiff(path: Path, arr: np.ndarray, axes: str, sp: list[float], compress: bool,
                software: str = SOFTWARE, known: bool = True) -> None:
    import tifffile

    arr = np.ascontiguousarray(arr)
    kwargs: dict[str, Any] = {
        "photometric": "minisblack",
        "compression": "zlib" if compress else None,
        "ome": False,
        # Tells useg's own results from images (useg.io.files.is_result_file).
        "software": software,
    }
    if arr.dtype in (np.uint8, np.uint16, np.float32):
        # ImageJ orders hyperstacks (T)ZC YX.
        if axes == "CZYX":
            arr, ij_axes = np.moveaxis(arr, 0, 1), "ZCYX"
        else:
            ij_axes = axes
        meta: dict[str, Any] = {"axes": ij_axes}
        if sp:
            kwargs["resolution"] = (1.0 / sp[-1], 1.0 / sp[-2])
            if known:  # without a unit, ImageJ shows the ratios in pixels
                meta["unit"] = "micron"
            if "Z" in axes:
                meta["spacing"] = sp[0]
        kwargs.update(imagej=True, metadata=meta)
    else:
        meta = {"axes": axes}
        if sp:
            meta["spacing"] = sp
            if known:
                # Pixels per centimetre, so other software shows the XY calibration too.
                kwargs["resolution"] = (1e4 / sp[-1], 1e4 / sp[-2])
                kwargs["resolutionunit"] = "CENTIMETER"
            else:
                meta["unit"] = _NO_UNIT
                kwargs["resolution"] = (1.0 / sp[-1], 1.0 / sp[-2])
                kwargs["resolutionunit"] = "NONE"
        kwargs.update(metadata=meta)
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(arr), **kwargs)


def _write_nifti(path: Path, arr: np.ndarray, axes: str, sp: list[float], compress: bool,
                 software: str, reference: Any, known: bool = True) -> None:
    nib = _nibabel(path)
    # useg's (C,) (Z,) Y, X -> NIfTI's X, Y, Z (, C).
    spatial = arr if "C" not in axes else np.moveaxis(arr, 0, -1)
    n = len(axes) - ("C" in axes)
    order = [*reversed(range(n)), *([n] if "C" in axes else [])]
    data = np.transpose(spatial, order)
    if n == 2 and "C" in axes:
        data = data[:, :, np.newaxis]  # (X, Y, 1, C): the channels stay the fourth axis
    if reference is not None:
        ref_shape = tuple(int(v) for v in reference.get_data_shape()[:3])
        ref_shape += (1,) * (3 - len(ref_shape))
        have = tuple(data.shape[:3]) + (1,) * (3 - min(data.ndim, 3))
        if have != ref_shape:
            raise input_error(path, f"array of spatial shape (X, Y, Z) {have} does not match "
                              f"its reference NIfTI header's {ref_shape}")
        kind = nib.Nifti2Image if isinstance(reference, nib.Nifti2Header) else nib.Nifti1Image
        img = kind(data, reference.get_best_affine(), header=reference.copy())
        img.header["cal_min"], img.header["cal_max"] = 0, 0  # the input's display range
    else:
        img = nib.Nifti1Image(data, np.diag([*(reversed(sp) if sp else [1.0] * n),
                                             *([1.0] * (3 - n)), 1.0]))
        img.header.set_xyzt_units("micron" if sp and known else "unknown")
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = software.encode()[:79]
    with atomic_write(path) as tmp, open(tmp, "wb") as raw:
        if path.name.lower().endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6 if compress else 1,
                               mtime=0) as stream:
                img.to_stream(stream)
        else:
            img.to_stream(raw)

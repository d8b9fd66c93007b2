"""Reading and writing microscopy images (PNG, TIFF) in the library's axis order.

Images come back as ``(C, Y, X)`` or ``(C, Z, Y, X)`` arrays with the channel axis always present;
label images as ``(Y, X)`` or ``(Z, Y, X)``. Every problem with a file a user gave becomes one
:class:`useg.errors.InputError` naming the file. Writers are atomic: a file is either the complete
old one or the complete new one, never half written.

Voxel spacing is reported in micrometres when the file states a unit, otherwise in whatever unit
the file holds (often none, in which case the spacing is ``None``).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import secrets
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import InputError

__all__ = [
    "IMAGE_EXTS",
    "atomic_write",
    "list_images",
    "natural_key",
    "pair_by_stem",
    "plan_results",
    "read_image",
    "read_json",
    "read_labels",
    "result_paths",
    "write_image",
    "write_json",
]

IMAGE_EXTS = (".png", ".tif", ".tiff")
_TIFF_EXTS = (".tif", ".tiff")

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
# errors


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(path: str | os.PathLike, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


# --------------------------------------------------------------------------------------------
# atomic writing


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path beside ``path``, then move it into place.

    The body writes the complete file to the yielded path. On normal exit the temporary file is
    flushed to disk and renamed over ``path`` with :func:`os.replace` (atomic on one file system),
    so readers see either the old file or the new one. If the body raises, the temporary file is
    removed and ``path`` is left untouched.

    The temporary name starts with a dot and keeps the final extension of ``path``, so writers that
    pick a format from the extension (Pillow, tifffile) behave as for ``path``.

    Parameters
    ----------
    path : str or PathLike
        The file to create or replace. Its folder must exist.

    Yields
    ------
    Path
        Where the body must write.

    Raises
    ------
    InputError
        When the folder of ``path`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_write(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (folder / "a.txt").read_text()
    'hello'
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise _fail(path, f"cannot write: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: nothing was written to the temporary file {tmp.name}")
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    # Without this a crash soon after the rename can leave an empty file under the final name.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) on Windows.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON, atomically (see :func:`atomic_write`).

    NumPy scalars and arrays, paths and sets are converted to plain JSON values.

    Parameters
    ----------
    path : str or PathLike
        Destination file.
    obj : object
        Anything :func:`json.dumps` accepts, plus the types above.
    indent : int
        Indentation of the output.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> p = write_json(Path(tempfile.mkdtemp()) / "m.json", {"dice": np.float32(0.5)})
    >>> read_json(p)
    {'dice': 0.5}
    """
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising :class:`InputError` naming the file when it is missing or invalid.

    Examples
    --------
    >>> import tempfile
    >>> read_json(write_json(Path(tempfile.mkdtemp()) / "a.json", [1, 2]))
    [1, 2]
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not a valid JSON file ({_one_line(exc)})") from None


# --------------------------------------------------------------------------------------------
# listing and pairing files


def natural_key(name: str | os.PathLike) -> tuple:
    """Sort key putting ``img2`` before ``img10`` (case-insensitive, on the file name).

    Examples
    --------
    >>> sorted(["b10.tif", "b2.tif", "a.tif"], key=natural_key)
    ['a.tif', 'b2.tif', 'b10.tif']
    """
    path = Path(name)
    parts = re.split(r"(\d+)", path.stem.lower())
    # split() alternates text and digit runs starting with text, so equal positions compare
    # equal types. The stem comes first so "img.tif" sorts before "img1.png"; the whole name
    # breaks ties between names equal up to case or leading zeros.
    key = tuple(int(p) if i % 2 else p for i, p in enumerate(parts))
    return key, path.suffix.lower(), path.name


def list_images(
    folder_or_file: str | os.PathLike, exts: Sequence[str] = IMAGE_EXTS
) -> list[Path]:
    """List the image files of a folder in natural order (``2.png`` before ``10.png``).

    Hidden files (names starting with a dot, such as unfinished temporary files) are skipped, and
    sub-folders are not searched. Extensions are compared case-insensitively.

    Parameters
    ----------
    folder_or_file : str or PathLike
        A folder, or a single image file (returned alone).
    exts : sequence of str
        Accepted extensions, with the dot.

    Returns
    -------
    list of Path

    Raises
    ------
    InputError
        When the path does not exist, a single file has another extension, or the folder holds
        no image file.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ["10.png", "2.png", "notes.txt"]:
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in list_images(folder)]
    ['2.png', '10.png']
    """
    path = Path(folder_or_file)
    exts = tuple(e.lower() for e in exts)
    if not path.exists():
        raise _fail(path, "no such file or folder")
    if path.is_file():
        if path.suffix.lower() not in exts:
            raise _fail(path, f"not an image file (expected {', '.join(exts)})")
        return [path]
    files = [
        p
        for p in path.iterdir()
        if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise _fail(path, f"no image files ({', '.join(exts)}) in this folder")
    return sorted(files, key=natural_key)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def pair_by_stem(
    images: Iterable[str | os.PathLike], labels: Iterable[str | os.PathLike]
) -> list[tuple[Path, Path]]:
    """Pair image files with label files of the same name stem (``a.png`` with ``a.tif``).

    Parameters
    ----------
    images, labels : iterable of paths
        For example the results of :func:`list_images` on two folders.

    Returns
    -------
    list of (Path, Path)
        One ``(image, label)`` pair per image, in the order of ``images``.

    Raises
    ------
    InputError
        Naming the first file that has no partner, or two files of one list sharing a stem.

    Examples
    --------
    >>> [(a.name, b.name) for a, b in pair_by_stem(["im/1.png"], ["lab/1.tif"])]
    [('1.png', '1.tif')]
    """
    images = [Path(p) for p in images]
    labels = [Path(p) for p in labels]

    def by_stem(paths: list[Path]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in paths:
            s = _stem(p)
            if s in out:
                raise _fail(p, f"has the same name stem {s!r} as {out[s]}; cannot pair them")
            out[s] = p
        return out

    image_by = by_stem(images)
    label_by = by_stem(labels)
    for s, p in image_by.items():
        if s not in label_by:
            raise _fail(p, f"no label file with the name stem {s!r}")
    for s, p in label_by.items():
        if s not in image_by:
            raise _fail(p, f"no image file with the name stem {s!r}")
    return [(p, label_by[_stem(p)]) for p in images]


def result_paths(
    out: str | os.PathLike, name: str | os.PathLike | None = None, *,
    probabilities: bool = True, labels: bool = True,
) -> dict[str, Path]:
    """Where ``useg predict`` writes the results of one input (the one naming scheme of both the
    file and the ``--dask`` path).

    Parameters
    ----------
    out : str or PathLike
        The output folder, or with ``name=None`` a zarr store.
    name : str or PathLike, optional
        The input's path relative to the folder it was listed from (its file name when it was
        given as a file): results go to ``out/<sub-folders>/<stem>_probs.tif`` and
        ``..._labels.tif``, mirroring the input tree. None names the arrays ``out/probs`` and
        ``out/labels`` of a store.
    probabilities, labels : bool
        Which results are written.

    Returns
    -------
    dict
        ``"probabilities"`` and/or ``"labels"`` -> path.

    Examples
    --------
    >>> [p.as_posix() for p in result_paths("out", "day1/cell.png").values()]
    ['out/day1/cell_probs.tif', 'out/day1/cell_labels.tif']
    >>> [p.as_posix() for p in result_paths("out.zarr", labels=False).values()]
    ['out.zarr/probs']
    """
    out = Path(out)
    wanted = {"probabilities": ("probs", probabilities), "labels": ("labels", labels)}
    if name is None:
        return {kind: out / suffix for kind, (suffix, keep) in wanted.items() if keep}
    name = Path(name)
    return {kind: out / name.parent / f"{name.stem}_{suffix}.tif"
            for kind, (suffix, keep) in wanted.items() if keep}


def _same_file_key(path: Path) -> str:
    # Case is folded: on the file systems of macOS and Windows (and folders copied there)
    # "X_probs.tif" and "x_probs.tif" are one file.
    return str(path.resolve()).casefold()


def plan_results(
    inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
    probabilities: bool = True, labels: bool = True, overwrite: bool = False,
) -> list[tuple[Path, Path, dict[str, Path]]]:
    """The image files that ``inputs`` name and the results each of them writes under ``out``,
    checked before anything is predicted, so that no result of the run replaces another.

    A file found in a folder keeps its path relative to that folder under ``out``; a file given
    by itself writes into ``out``. Names are those of :func:`result_paths`.

    Parameters
    ----------
    inputs : iterable of paths
        Image files and folders (see :func:`list_images`).
    out : str or PathLike
        The output folder.
    probabilities, labels : bool
        Which results are written.
    overwrite : bool
        Replace results that exist already (refused otherwise).

    Returns
    -------
    list of (Path, Path, dict)
        Each input file, its name relative to its folder, and its :func:`result_paths`, in the
        order of ``inputs``.

    Raises
    ------
    InputError
        For a missing input or a folder without images; naming both inputs when two of them
        would write the same file (say ``a/x.png`` and ``b/x.tif`` given as two folders); when a
        result would replace one of the inputs.
    ConfigError
        Naming the first result that exists already, unless ``overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["a/x.png", "b/x.png"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     _ = (root / name).write_bytes(b"")
    >>> plan_results([root / "a", root / "b"], root / "out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    useg.errors.InputError: .../a/x.png and .../b/x.png: would both write .../out/x_probs.tif; ...
    """
    from useg.errors import ConfigError

    plan: list[tuple[Path, Path, dict[str, Path]]] = []
    for item in map(Path, inputs):
        for path in list_images(item):
            name = path.relative_to(item) if item.is_dir() else Path(path.name)
            plan.append(
                (path, name, result_paths(out, name, probabilities=probabilities, labels=labels))
            )
    given = {_same_file_key(path): path for path, _, _ in plan}
    writer: dict[str, Path] = {}
    for path, _, results in plan:
        for target in results.values():
            key = _same_file_key(target)
            if key in writer:
                raise _fail(
                    f"{writer[key]} and {path}",
                    f"would both write {target}; predict them into different --out folders",
                )
            if key in given:
                raise _fail(path, f"its result {target} would replace the input {given[key]}; "
                            "choose another --out")
            writer[key] = path
    if not overwrite:
        for path, _, results in plan:
            for target in results.values():
                if target.exists():
                    raise ConfigError(
                        f"{target}: already exists (the result for {path}); pass --overwrite "
                        "to replace it, or choose another --out"
                    )
    return plan


# --------------------------------------------------------------------------------------------
# reading


def _check_readable(path: Path, exts: Sequence[str] = IMAGE_EXTS) -> None:
    if not path.exists():
        raise _fail(path, "file not found")
    if path.is_dir():
        raise _fail(path, "is a folder, not an image file")
    if path.suffix.lower() not in exts:
        raise _fail(
            path, f"unsupported format {path.suffix or '(no extension)'!r}; use PNG or TIFF"
        )


def _read_png(path: Path, *, labels: bool) -> tuple[np.ndarray, str, dict[str, float], str]:
    """Return (array, axes letters, spacing by axis letter, original dtype name)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.format != "PNG":
            raise _fail(path, f"not a PNG file (it holds {im.format} data)")
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
    return arr, axes, spacing, dtype


def _unit_factor(unit: Any) -> float | None:
    if not isinstance(unit, str):
        return None
    u = unit.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ").lower()
    return _UNIT_UM.get(u)


def _ome_spacing(xml: str) -> dict[str, float]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    out = {}
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
    return out


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


def _tiff_spacing(tif: Any, page: Any) -> dict[str, float]:
    if tif.is_ome and tif.ome_metadata:
        found = _ome_spacing(tif.ome_metadata)
        if found:
            return found
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
        return out
    for meta in tif.shaped_metadata or ():
        # Written by write_image: the exact spacing of every spatial axis, in micrometres.
        sp, axes = meta.get("spacing"), meta.get("axes")
        if isinstance(sp, list) and isinstance(axes, str):
            spatial = [a for a in axes if a in "ZYX"]
            if len(sp) == len(spatial):
                return {a: float(v) for a, v in zip(spatial, sp, strict=True)}
    if res is None:
        return {}
    if res_unit in _RESUNIT_UM:
        f = _RESUNIT_UM[res_unit]
        return {"X": f / res[0], "Y": f / res[1]}
    if res != (1.0, 1.0):  # unit "none" but a real ratio: keep it, unit unknown
        return {"X": 1.0 / res[0], "Y": 1.0 / res[1]}
    return {}


def _read_tiff(path: Path) -> tuple[np.ndarray, str, dict[str, float], str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _fail(path, "the TIFF file holds no image")
        series = tif.series[0]
        page = series.keyframe
        arr = series.asarray()
        axes = series.axes
        if len(axes) != arr.ndim:
            raise _fail(path, f"cannot interpret TIFF axes {axes!r} for shape {arr.shape}")
        extras = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
        n_alpha = sum(1 for e in extras if e in (1, 2))  # associated / unassociated alpha
        if n_alpha and "S" in axes:
            s = axes.index("S")
            arr = np.take(arr, np.arange(arr.shape[s] - n_alpha), axis=s)
        spacing = _tiff_spacing(tif, page)
    return arr, axes, spacing, str(arr.dtype)


def _read_any(path: Path, *, labels: bool) -> tuple[np.ndarray, str, dict[str, float], str]:
    _check_readable(path)
    try:
        if path.suffix.lower() == ".png":
            arr, axes, spacing, dtype = _read_png(path, labels=labels)
        else:
            arr, axes, spacing, dtype = _read_tiff(path)
    except InputError:
        raise
    except MemoryError:
        raise _fail(path, "image too large to fit in memory") from None
    except Exception as exc:  # decoders raise many types; to the user they all mean "corrupt"
        kind = "PNG" if path.suffix.lower() == ".png" else "TIFF"
        raise _fail(path, f"not a readable {kind} image or corrupt ({_one_line(exc)})") from None
    arr = np.asarray(arr)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype.kind not in "biuf":
        raise _fail(path, f"unsupported pixel type {arr.dtype}")
    if arr.size == 0:
        raise _fail(path, f"empty image (shape {tuple(arr.shape)})")
    return arr, axes, spacing, dtype


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
            raise _fail(
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
            raise _fail(
                path, f"has {len(channel_like)} channel axes (axes {axes!r}, shape "
                f"{arr.shape}); pass channel_axis to choose one"
            )
        ca = channel_like[0] if channel_like else None
        letters = ["C" if i == ca else ("Q" if a in "CS" else a) for i, a in enumerate(letters)]

    # Y and X by name when the file names them (they are kept even when of size 1), else the
    # last two non-channel axes; of the rest, size-1 axes are dropped and one may be Z.
    others = [i for i in range(arr.ndim) if i != ca]
    if len(others) < 2:
        raise _fail(path, f"cannot find Y and X axes in an array of shape {arr.shape}")
    if letters.count("Y") == 1 and letters.count("X") == 1:
        yx = [letters.index("Y"), letters.index("X")]
    else:
        yx = others[-2:]
    rest = [i for i in others if i not in yx]
    stack = [i for i in rest if arr.shape[i] > 1]
    dropped = [i for i in rest if arr.shape[i] == 1]
    if len(stack) > 1:
        desc = ", ".join(f"{letters[i]}={arr.shape[i]}" for i in stack)
        raise _fail(
            path, f"has more axes than (C, Z, Y, X) can hold ({desc}; file axes {axes!r}); "
            "save one volume per file"
        )
    if stack and ndim == 2:
        if ca is None and letters[stack[0]] != "Z":
            ca = stack[0]  # an unnamed stack of 2D planes: read it as channels
            stack = []
        else:
            raise _fail(
                path, f"holds a 3D volume of shape {arr.shape} (axes {axes!r}) but a 2D image "
                "was expected"
            )
    if not stack and ndim == 3:
        raise _fail(path, f"holds a 2D image of shape {arr.shape} but a 3D volume was expected")

    order = ([ca] if ca is not None else []) + stack + yx
    arr = np.squeeze(arr, axis=tuple(dropped)) if dropped else arr
    # Recompute positions after squeezing the size-1 axes away.
    remap = {old: new for new, old in enumerate(i for i in range(len(letters)) if i not in dropped)}
    arr = np.transpose(arr, [remap[i] for i in order])
    if ca is None:
        arr = arr[np.newaxis]
    return np.ascontiguousarray(arr), bool(stack)


def _spacing_tuple(found: dict[str, float], has_z: bool) -> tuple[float, ...] | None:
    keys = "ZYX" if has_z else "YX"
    if all(k in found for k in keys):
        return tuple(float(found[k]) for k in keys)
    return None


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
        A ``.png``, ``.tif`` or ``.tiff`` file. For TIFFs holding several series (pyramids,
        thumbnails), the first series is read.
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
        a unit, or None when the file holds no spacing), ``axes`` (``"CYX"`` or ``"CZYX"``),
        ``dtype`` (the file's pixel type) and ``path``.

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
    arr, axes, found, dtype = _read_any(path, labels=False)
    arr, has_z = _normalise_axes(path, arr, axes, channel_axis=channel_axis, ndim=ndim)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise _fail(path, f"{bad} pixels are NaN or infinite")
    meta = {
        "spacing": _spacing_tuple(found, has_z),
        "axes": "CZYX" if has_z else "CYX",
        "dtype": dtype,
        "path": str(path),
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
        A ``.png``, ``.tif`` or ``.tiff`` file.

    Returns
    -------
    labels : ndarray
        ``(Y, X)`` or ``(Z, Y, X)``.
    meta : dict
        ``spacing`` (per spatial axis or None), ``axes`` (``"YX"`` or ``"ZYX"``), ``dtype`` (the
        file's pixel type) and ``path``.

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
    arr, axes, found, dtype = _read_any(path, labels=True)
    arr, has_z = _normalise_axes(path, arr, axes, channel_axis=None, ndim=None)
    if arr.shape[0] > 1:
        if not (arr == arr[:1]).all():
            raise _fail(
                path, f"label image has {arr.shape[0]} channels that differ (a colour image?); "
                "expected one integer label per pixel"
            )
    arr = arr[0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise _fail(path, "label image holds NaN or infinite values")
        if not (arr == np.round(arr)).all():
            raise _fail(path, "label image holds non-integer values; expected integer labels")
        big = max(abs(float(arr.min())), abs(float(arr.max())))
        arr = arr.astype(np.int32 if big < 2**31 else np.int64)
    meta = {
        "spacing": _spacing_tuple(found, has_z),
        "axes": "ZYX" if has_z else "YX",
        "dtype": dtype,
        "path": str(path),
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
        raise _fail(
            path, f"an array of shape {arr.shape} is ambiguous; pass axes='CYX' (channels) or "
            "axes='ZYX' (a volume)"
        )
    axes = axes.upper()
    valid = {"YX", "CYX", "ZYX", "CZYX"}
    if axes not in valid:
        raise _fail(path, f"axes must be one of {sorted(valid)}, not {axes!r}")
    if len(axes) != arr.ndim:
        raise _fail(path, f"axes {axes!r} do not match an array of shape {arr.shape}")
    return axes


def _check_spacing(spacing: Sequence[float] | None, n_spatial: int, path: Path) -> list[float]:
    if spacing is None:
        return []
    try:
        sp = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise _fail(path, f"spacing must be a sequence of numbers, not {spacing!r}") from None
    if len(sp) != n_spatial or not all(np.isfinite(s) and s > 0 for s in sp):
        raise _fail(
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
) -> Path:
    """Write an image or label array to TIFF or PNG, atomically.

    TIFF: uint8, uint16 and float32 arrays are written as ImageJ hyperstacks (Fiji opens them with
    their axes and calibration); other pixel types as plain TIFFs whose description holds the axes
    and spacing, which :func:`read_image` restores. Spacing (micrometres) also goes into the
    resolution tags. ``compress`` uses lossless zlib (deflate).

    PNG: only 2D uint8 or uint16 arrays (a leading channel axis of size 1 is allowed); the XY
    spacing is stored in the pHYs chunk.

    The file is written to a temporary name first and moved into place only when complete (see
    :func:`atomic_write`). Boolean arrays are written as uint8 0/1.

    Parameters
    ----------
    path : str or PathLike
        Destination, ending in ``.tif``, ``.tiff`` or ``.png``.
    array : ndarray
        In the library's axis order, described by ``axes``.
    spacing : sequence of float, optional
        Spacing of each spatial axis ((Z,) Y, X) in micrometres.
    axes : {"YX", "CYX", "ZYX", "CZYX"}, optional
        Axes of ``array``; required for 3D arrays, where channels and Z cannot be told apart.
    compress : bool
        Compress losslessly (TIFF: zlib; PNG: zlib level 6 instead of 0).

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
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTS:
        raise _fail(
            path, f"unsupported format {path.suffix or '(no extension)'!r}; use PNG or TIFF"
        )
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise _fail(path, f"cannot write pixel type {arr.dtype}")
    if arr.size == 0:
        raise _fail(path, f"cannot write an empty array of shape {arr.shape}")
    axes = _check_axes(axes, arr, path)
    sp = _check_spacing(spacing, sum(a in "ZYX" for a in axes), path)
    if ext == ".png":
        _write_png(path, arr, axes, sp, compress)
    else:
        _write_tiff(path, arr, axes, sp, compress)
    return path


def _write_png(path: Path, arr: np.ndarray, axes: str, sp: list[float], compress: bool) -> None:
    from PIL import Image

    if axes == "CYX" and arr.shape[0] == 1:
        arr, axes = arr[0], "YX"
    if axes != "YX":
        raise _fail(
            path, f"PNG holds only 2D grayscale images; got axes {axes!r} shape {arr.shape} "
            "(use .tif)"
        )
    if arr.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"PNG holds only uint8 or uint16 pixels, not {arr.dtype} (use .tif)")
    im = Image.fromarray(np.ascontiguousarray(arr))
    kwargs: dict[str, Any] = {"format": "PNG", "compress_level": 6 if compress else 0}
    if sp:
        kwargs["dpi"] = (25400.0 / sp[-1], 25400.0 / sp[-2])
    with atomic_write(path) as tmp:
        im.save(tmp, **kwargs)


def _write_tiff(path: Path, arr: np.ndarray, axes: str, sp: list[float], compress: bool) -> None:
    import tifffile

    arr = np.ascontiguousarray(arr)
    kwargs: dict[str, Any] = {
        "photometric": "minisblack",
        "compression": "zlib" if compress else None,
        "ome": False,
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
            meta["unit"] = "micron"
            if "Z" in axes:
                meta["spacing"] = sp[0]
        kwargs.update(imagej=True, metadata=meta)
    else:
        meta = {"axes": axes}
        if sp:
            meta["spacing"] = sp
            # Pixels per centimetre, so other software shows the XY calibration too.
            kwargs["resolution"] = (1e4 / sp[-1], 1e4 / sp[-2])
            kwargs["resolutionunit"] = "CENTIMETER"
        kwargs.update(metadata=meta)
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(arr), **kwargs)


def release_pages(array: Any) -> None:
    """Drop the pages of a file-backed NumPy memmap from this process's resident memory.

    Linux counts every mapped page of a file that has been touched as resident, so reading or
    writing a huge memmap tile by tile would grow the resident memory to the file's size. The
    pages stay in the kernel's page cache (dirty ones are still written back: the mapping is
    shared), so this costs at most a soft page fault when one is touched again. Copy-on-write
    memmaps (mode ``c``) are left alone: dropping their pages would drop the private changes.
    Only on Linux, whose semantics of ``MADV_DONTNEED`` on shared file mappings this relies on.
    """
    handle = getattr(array, "_mmap", None)  # np.memmap keeps its mmap.mmap here
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if (not sys.platform.startswith("linux") or not isinstance(array, np.memmap)
            or handle is None or advice is None or array.mode == "c"):
        return
    try:
        handle.madvise(advice)
    except (OSError, ValueError):  # a closed mapping, or a platform without madvise
        pass

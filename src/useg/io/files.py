"""Files: the one atomic writer, JSON, listing image files, pairing them, naming results.

Every problem with a file a user gave becomes one :class:`useg.errors.InputError` naming the
file. Writers are atomic (:func:`atomic_write`): a file is either the complete old one or the
complete new one, never half written, also after a crash (the file and its folder are synced).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, OutputError, UsegWarning, input_error, one_line

__all__ = [
    "IMAGE_EXTS",
    "NIFTI_EXTS",
    "RESULT_SOFTWARE",
    "RESULT_SUFFIXES",
    "SOFTWARE",
    "atomic_write",
    "check_output_file",
    "check_output_folder",
    "file_stem",
    "image_ext",
    "is_result_file",
    "list_images",
    "make_folder",
    "natural_key",
    "pair_by_stem",
    "pair_files",
    "plan_results",
    "read_json",
    "remove_stale_temporaries",
    "result_paths",
    "write_error",
    "write_json",
]

IMAGE_EXTS = (".png", ".tif", ".tiff", ".nii", ".nii.gz")
#: NIfTI-1/2 volumes (read and written with nibabel: ``pip install useg[nifti]``).
NIFTI_EXTS = (".nii", ".nii.gz")


def image_ext(path: str | os.PathLike) -> str:
    """The extension of an image file, lower case, ``.nii.gz`` counting as one.

    Examples
    --------
    >>> image_ext("a/brain.NII.GZ"), image_ext("cell.tif"), image_ext("x.gz")
    ('.nii.gz', '.tif', '.gz')
    """
    path = Path(path)
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


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
    pick a format from the extension (Pillow, tifffile) behave as for ``path``; it also holds the
    writer's process id, so that a temporary file left by a killed process can be recognised
    and removed (:func:`remove_stale_temporaries`).

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
    OutputError
        When ``path`` is a folder or another file that is not a regular file (a device such as
        ``/dev/null``), and for an :class:`OSError` while writing (a full disk, no permission):
        one line naming ``path`` and the reason; the temporary file is removed.

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
        raise input_error(path, f"cannot write: folder {path.parent} does not exist")
    _refuse_non_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    _WRITING.add(os.path.abspath(tmp))
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: nothing was written to the temporary file {tmp.name}")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise write_error(path, exc) from exc
        raise
    finally:
        _WRITING.discard(os.path.abspath(tmp))
    _fsync(path.parent)


def _refuse_non_file(path: Path) -> None:
    """Refuse to write ``path`` when it is a folder or anything but a regular file."""
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the name of a file to write")
    if path.exists() and not path.is_file():
        # Replacing a device such as /dev/null by a file would be a disaster for root.
        raise OutputError(f"{path}: not a regular file ({_kind(path)}); cannot write it")


# The temporary files this process is writing now, which remove_stale_temporaries leaves alone
# even when a killed process of the same id (a container restarted) left others.
_WRITING: set[str] = set()
# The name atomic_write gives a temporary file: .<name>.<pid>-<8 hex digits>.tmp<extension>
_TEMPORARY = re.compile(r"\..+\.(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp(\.[^./]*)?")


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The :class:`OutputError` for an :class:`OSError` while writing ``path``: one line with
    the reason (``no space left on device``, ``permission denied``...).

    Examples
    --------
    >>> import errno
    >>> str(write_error("out/a.tif", OSError(errno.ENOSPC, "No space left on device")))
    'out/a.tif: cannot write (no space left on device)'
    """
    reason = os.strerror(exc.errno).lower() if exc.errno else one_line(exc)
    return OutputError(f"{path}: cannot write ({reason})")


def _kind(path: Path) -> str:
    """What a path that exists is, in words (``a file``, ``a device``...)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "unreadable"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    return "not a folder nor a regular file"


def _not_writable(folder: Path) -> str | None:
    """Why this process cannot create files in the existing folder ``folder``, or None."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    return "permission denied"


def check_output_folder(path: str | os.PathLike) -> Path:
    """Check, without creating anything, that results can be written into the folder ``path``
    (it may not exist yet): called before a command does any work, so that an output folder
    that is a file, a device such as ``/dev/null``, below a file, or not writable is refused at
    once, in one line. Returns ``path``.

    Raises
    ------
    OutputError
        Naming ``path`` and the problem.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> check_output_folder(root / "new" / "folder") == root / "new" / "folder"
    True
    >>> _ = (root / "a.txt").write_text("")
    >>> check_output_folder(root / "a.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    useg.errors.OutputError: .../a.txt: is a file, not a folder; results go into a folder
    """
    if not os.fspath(path).strip():
        # Path("") is "."; an empty name is a mistake (an unset variable), not a choice.
        raise OutputError("an empty output path; name a folder (e.g. --out results)")
    path = Path(path)
    try:
        existing = next(p for p in (path, *path.parents) if p.exists())
    except OSError as exc:  # a name too long, a loop of links...
        raise write_error(path, exc) from None
    except StopIteration:  # nothing of the path exists: a relative path's "." always does
        existing = Path.cwd()
    if not existing.is_dir():
        if existing == path:
            raise OutputError(f"{path}: is {_kind(path)}, not a folder; results go into a folder")
        raise OutputError(f"{path}: cannot create this folder, {existing} is {_kind(existing)}")
    why = _not_writable(existing)
    if why is not None:
        where = "" if existing == path else f" in {existing}"
        raise OutputError(f"{path}: cannot write ({why}{where})")
    return path


def check_output_file(
    path: str | os.PathLike, *, overwrite: bool = False, new_folder: bool = True,
    option: str = "--out", inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """Check, without creating anything, that the file ``path`` can be written: called before
    a command does any work, so that a bad place is refused at once, in one line, and no file
    that exists is replaced unless asked. Returns ``path``.

    Its folder is checked as :func:`check_output_folder` checks an output folder (with
    ``new_folder`` it may not exist yet, for a writer that makes it; without, it must exist, as
    :func:`atomic_write` requires); ``path`` itself must not be a folder or anything but a
    regular file (a device such as ``/dev/null``), and a file that exists already is refused
    unless ``overwrite``.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    overwrite : bool
        Whether a file that exists may be replaced (``--overwrite``).
    new_folder : bool
        Whether the folder of ``path`` may be created by the writer.
    option : str
        The option that named ``path``, for the message.
    inputs : sequence of paths
        The files the command reads: ``path`` is never one of them (by any name: links
        included), ``overwrite`` or not.

    Raises
    ------
    OutputError
        Naming ``path`` and the problem with its place.
    InputError
        Without ``new_folder``, when the folder of ``path`` does not exist.
    ConfigError
        When ``path`` exists already, unless ``overwrite``: naming ``--overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> check_output_file(root / "new" / "model.onnx") == root / "new" / "model.onnx"
    True
    >>> _ = (root / "keep.png").write_text("")
    >>> check_output_file(root / "keep.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    useg.errors.ConfigError: .../keep.png: already exists; pass --overwrite to replace it, or ...
    """
    path = Path(path)
    check_output_folder(path.parent)
    if not new_folder and not path.parent.is_dir():
        raise input_error(path, f"cannot write: folder {path.parent} does not exist")
    _refuse_non_file(path)
    for given in inputs:
        if path.exists() and Path(given).exists() and os.path.samefile(path, given):
            raise OutputError(f"{option} {path}: is the input {given}; the result would "
                              "replace it, choose another file")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; pass --overwrite to replace it, or choose "
                          f"another {option}")
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) if needed, refusing what
    :func:`check_output_folder` refuses and turning any :class:`OSError` into one line
    (:func:`write_error`). Returns ``path``."""
    path = check_output_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def _writer_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs on this machine (True when that cannot be known)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would interrupt the process on Windows
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def remove_stale_temporaries(
    folders: Iterable[str | os.PathLike], *, min_age: float = 60.0
) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left in ``folders`` when its process
    was killed (SIGKILL, a power cut): those of its name pattern whose writer is no longer
    running on this machine and that nobody has modified for ``min_age`` seconds (a writer on
    another machine of a shared file system keeps its file fresh while it writes). Other files,
    and folders that do not exist, are left alone. Returns the files removed.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> left = folder / ".a.tif.999999999-0123abcd.tmp.tif"  # no process has this id
    >>> _ = left.write_bytes(b"")
    >>> [p.name for p in remove_stale_temporaries([folder], min_age=0)]
    ['.a.tif.999999999-0123abcd.tmp.tif']
    """
    removed = []
    now = time.time()
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match is None or os.path.abspath(entry.path) in _WRITING:
                continue
            pid = int(match["pid"])
            try:
                info = entry.stat(follow_symlinks=False)
                if (not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age
                        or (pid != os.getpid() and _writer_alive(pid))):
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            removed.append(Path(entry.path))
    return removed


def _fsync(path: Path) -> None:
    # Syncing the file: without it a crash soon after the rename can leave an empty file under
    # the final name. Syncing its folder makes the rename itself durable on POSIX (not possible,
    # nor needed, on Windows).
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
        raise input_error(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise input_error(path, f"not a valid JSON file ({one_line(exc)})") from None


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
        raise input_error(path, "no such file or folder")
    if path.is_file():
        if image_ext(path) not in exts:
            raise input_error(path, f"not an image file (expected {', '.join(exts)})")
        return [path]
    files = [
        p
        for p in path.iterdir()
        if image_ext(p) in exts and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise input_error(path, f"no image files ({', '.join(exts)}) in this folder")
    return sorted(files, key=natural_key)


def file_stem(path: str | os.PathLike) -> str:
    """The name a file is paired by: its name without the extension (``.ome.tif`` and
    ``.nii.gz`` count as one).

    Examples
    --------
    >>> file_stem("a/cell.ome.tif"), file_stem("cell.png"), file_stem("brain.nii.gz")
    ('cell', 'cell', 'brain')
    """
    path = Path(path)
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".nii.gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _by_stem(paths: list[Path]) -> dict[str, Path]:
    """The files by name stem, refusing two of one stem."""
    out: dict[str, Path] = {}
    for p in paths:
        s = file_stem(p)
        if s in out:
            raise input_error(p, f"has the same name stem {s!r} as {out[s]}; cannot pair them")
        out[s] = p
    return out


def pair_by_stem(
    first: Iterable[str | os.PathLike],
    second: Iterable[str | os.PathLike],
    *,
    names: tuple[str, str] = ("image", "label"),
    partial: tuple[bool, bool] = (False, False),
) -> list[tuple[Path, Path]]:
    """Pair the files of two lists by name stem (``a.png`` with ``a.tif``).

    Parameters
    ----------
    first, second : iterable of paths
        For example the results of :func:`list_images` on two folders (images and labels).
    names : (str, str)
        What the files of each list are, for the messages ("no label file with ...").
    partial : (bool, bool)
        Whether files of ``first`` (``second``) without a partner are left out; by default
        every file needs one.

    Returns
    -------
    list of (Path, Path)
        One pair per paired file of ``first``, in the order of ``first``.

    Raises
    ------
    InputError
        Naming the first file that has no partner (unless ``partial`` leaves it out), or two
        files of one list sharing a stem.

    Examples
    --------
    >>> [(a.name, b.name) for a, b in pair_by_stem(["im/1.png"], ["lab/1.tif"])]
    [('1.png', '1.tif')]
    """
    by_first = _by_stem([Path(p) for p in first])
    by_second = _by_stem([Path(p) for p in second])
    sides = ((by_first, by_second, names[1], partial[0]),
             (by_second, by_first, names[0], partial[1]))
    for own, other, other_name, leave_out in sides:
        for s, p in own.items():
            if s not in other and not leave_out:
                raise input_error(p, f"no {other_name} file with the name stem {s!r}")
    return [(p, by_second[s]) for s, p in by_first.items() if s in by_second]


def pair_files(
    first: str | os.PathLike,
    second: str | os.PathLike,
    *,
    names: tuple[str, str] = ("image", "label"),
    one_file_picks: bool = False,
) -> list[tuple[Path, Path]]:
    """Pair the image files of two files or folders (see :func:`list_images`) by name stem
    (:func:`pair_by_stem`); two files are one pair whatever their names.

    With ``one_file_picks``, a file on one side is paired with its partner in the folder on the
    other side (the folder's other files are left out).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["im/2.png", "im/10.png", "lab/10.tif", "lab/2.tif"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     _ = (root / name).write_bytes(b"")
    >>> [(a.name, b.name) for a, b in pair_files(root / "im", root / "lab")]
    [('2.png', '2.tif'), ('10.png', '10.tif')]
    >>> [(a.name, b.name) for a, b in pair_files(root / "im/2.png", root / "lab",
    ...                                         one_file_picks=True)]
    [('2.png', '2.tif')]
    """
    first_files, second_files = list_images(first), list_images(second)
    first, second = Path(first), Path(second)
    if first.is_file() and second.is_file():
        pairs = [(first, second)]
    else:
        partial = (second.is_file(), first.is_file()) if one_file_picks else (False, False)
        pairs = pair_by_stem(first_files, second_files, names=names, partial=partial)
    for a, b in pairs:
        # One file on both sides (the same folder given twice) would train an image on
        # itself as labels, or score a prediction against itself.
        if os.path.samefile(a, b):
            raise input_error(a, f"given as both the {names[0]} and the {names[1]} file")
    return pairs


#: The Software tag of the TIFF files useg writes (:func:`useg.io.images.write_image`)...
SOFTWARE = "useg"
#: ... and of its results (``useg predict``, ``useg densify``: :func:`is_result_file`).
RESULT_SOFTWARE = "useg result"
#: The name endings of result files (:func:`result_paths`), before the extension.
RESULT_SUFFIXES = ("_probs", "_labels", "_instances")


def is_result_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a result useg wrote: a TIFF named like one (``<stem>_probs.tif``,
    ``_labels``, ``_instances``) whose Software tag says so (:data:`RESULT_SOFTWARE`, written
    by :func:`useg.inference.files.write_results`), or a NIfTI file named like one whose header
    description (``descrip``) says so. Both are needed, so that an image named
    ``x_labels.tif`` (by a user, or by useg's :func:`~useg.io.images.write_image`) is not taken
    for a result.

    Examples
    --------
    >>> import tempfile
    >>> from useg.io.images import write_image
    >>> folder = Path(tempfile.mkdtemp())
    >>> image = np.zeros((4, 4), np.float32)
    >>> is_result_file(write_image(folder / "a_probs.tif", image, software=RESULT_SOFTWARE))
    True
    >>> is_result_file(write_image(folder / "b_probs.tif", image))
    False
    """
    path = Path(path)
    if image_ext(path) in NIFTI_EXTS and file_stem(path).endswith(RESULT_SUFFIXES):
        try:
            import nibabel

            descrip = nibabel.load(path).header["descrip"]
            return descrip.item().decode(errors="replace") == RESULT_SOFTWARE
        except Exception:  # unreadable or no nibabel: not ours; the reader says why
            return False
    if path.suffix.lower() not in (".tif", ".tiff") or not file_stem(path).endswith(
            RESULT_SUFFIXES):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            software = tif.pages.first.software
    except Exception:  # unreadable: not ours, and the reader says why when it is read
        return False
    return software == RESULT_SOFTWARE


def result_paths(
    out: str | os.PathLike, name: str | os.PathLike | None = None, *,
    probabilities: bool = True, labels: bool = True, extra: Sequence[str] = (),
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
        ``..._labels.tif``, mirroring the input tree; the results of a NIfTI input are NIfTI
        files with its extension (``<stem>_probs.nii.gz`` for ``<stem>.nii.gz``). None names
        the arrays ``out/probs`` and ``out/labels`` of a store; of an OME-Zarr store
        (``*.ome.zarr``) the probabilities are the image itself, the others its label images
        ``out/labels/classes`` and ``out/labels/<kind>``.
    probabilities, labels : bool
        Which results are written.
    extra : sequence of str
        Further results derived from the probabilities, each named by its kind (``"instances"``
        writes ``<stem>_instances.tif``, or the array ``instances`` of a store).

    Returns
    -------
    dict
        ``"probabilities"`` and/or ``"labels"`` and the ``extra`` kinds -> path.

    Examples
    --------
    >>> [p.as_posix() for p in result_paths("out", "day1/cell.png").values()]
    ['out/day1/cell_probs.tif', 'out/day1/cell_labels.tif']
    >>> [p.as_posix() for p in result_paths("out.zarr", labels=False).values()]
    ['out.zarr/probs']
    >>> [p.name for p in result_paths("out", "brain.nii.gz").values()]
    ['brain_probs.nii.gz', 'brain_labels.nii.gz']
    >>> [p.name for p in result_paths("out", "cell.ome.tif", labels=False).values()]
    ['cell_probs.tif']
    >>> [p.as_posix() for p in result_paths("r.ome.zarr", extra=("instances",)).values()]
    ['r.ome.zarr', 'r.ome.zarr/labels/classes', 'r.ome.zarr/labels/instances']
    """
    out = Path(out)
    wanted = {"probabilities": ("probs", probabilities), "labels": ("labels", labels),
              **{kind: (kind, True) for kind in extra}}
    if name is None and out.name.lower().endswith(".ome.zarr"):
        where = {"probabilities": out, "labels": out / "labels" / "classes"}
        return {kind: where.get(kind, out / "labels" / suffix)
                for kind, (suffix, keep) in wanted.items() if keep}
    if name is None:
        return {kind: out / suffix for kind, (suffix, keep) in wanted.items() if keep}
    name = Path(name)
    ext = image_ext(name)
    # A NIfTI input gives NIfTI results (with its affine: useg.inference.files.write_results).
    stem, ext = file_stem(name), (ext if ext in NIFTI_EXTS else ".tif")
    return {kind: out / name.parent / f"{stem}_{suffix}{ext}"
            for kind, (suffix, keep) in wanted.items() if keep}


def _same_file_key(path: Path) -> str:
    # Case is folded: on the file systems of macOS and Windows (and folders copied there)
    # "X_probs.tif" and "x_probs.tif" are one file.
    return str(path.resolve()).casefold()


def plan_results(
    inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
    probabilities: bool = True, labels: bool = True, extra: Sequence[str] = (),
    overwrite: bool = False,
) -> list[tuple[Path, Path, dict[str, Path]]]:
    """The image files that ``inputs`` name and the results each of them writes under ``out``,
    checked before anything is predicted, so that no result of the run replaces another.

    A file found in a folder keeps its path relative to that folder under ``out``; a file given
    by itself writes into ``out``. Names are those of :func:`result_paths`. Results of an earlier
    run found in a folder (:func:`is_result_file`: an ``--out`` inside or equal to an input
    folder) are skipped with a warning, never predicted as images; given by name, they are.

    Parameters
    ----------
    inputs : iterable of paths
        Image files and folders (see :func:`list_images`).
    out : str or PathLike
        The output folder.
    probabilities, labels, extra
        Which results are written (:func:`result_paths`).
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
        For an ``out`` named as an image file (``res.tif``) that is not a folder; a missing
        input or a folder without images; naming both inputs when two of them
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
    if image_ext(out) in IMAGE_EXTS and not Path(out).is_dir():
        # Taken for a folder, it would hold the results under the image name it was meant as.
        raise input_error(out, "--out names the folder for the results (<name>_probs.tif, "
                          "<name>_labels.tif), not an image file; give a folder")
    plan: list[tuple[Path, Path, dict[str, Path]]] = []
    skipped: dict[Path, list[Path]] = {}
    for item in map(Path, inputs):
        for path in list_images(item):
            if item.is_dir() and is_result_file(path):
                skipped.setdefault(item, []).append(path)
                continue
            name = path.relative_to(item) if item.is_dir() else Path(path.name)
            plan.append(
                (path, name, result_paths(out, name, probabilities=probabilities, labels=labels,
                                       extra=extra))
            )
    _refuse_collisions(plan)
    if not overwrite:
        _refuse_existing(plan)
    for item, paths in skipped.items():  # after the refusals: a refusal is one line
        names = ", ".join(p.name for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        warnings.warn(UsegWarning(
            f"{item}: skipped {len(paths)} result file(s) of an earlier useg run ({names}); "
            "name a file to predict it anyway"), stacklevel=2)
    return plan


def _refuse_collisions(plan: list[tuple[Path, Path, dict[str, Path]]]) -> None:
    """Refuse two inputs writing one result, and a result replacing an input."""
    given = {_same_file_key(path): path for path, _, _ in plan}
    writer: dict[str, Path] = {}
    for path, _, results in plan:
        for target in results.values():
            key = _same_file_key(target)
            if key in writer:
                raise input_error(
                    f"{writer[key]} and {path}",
                    f"would both write {target}; predict them into different --out folders",
                )
            if key in given:
                raise input_error(path, f"its result {target} would replace the input "
                                  f"{given[key]}; choose another --out")
            writer[key] = path


def _refuse_existing(plan: list[tuple[Path, Path, dict[str, Path]]]) -> None:
    for path, _, results in plan:
        for target in results.values():
            if target.exists():
                raise ConfigError(
                    f"{target}: already exists (the result for {path}); pass --overwrite "
                    "to replace it, or choose another --out"
                )

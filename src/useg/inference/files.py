"""Prediction of image files into result files: the engine of ``useg predict``.

:func:`predict_files` names every result of a run and checks them against each other, the
inputs and what exists (:func:`useg.io.files.plan_results`) before the first image is
predicted; :func:`predict_file` predicts one file and writes ``<stem>_probs.tif`` (class
probabilities) and ``<stem>_labels.tif`` (most likely class, or class 1 above a two-class
model's operating point) with :func:`write_results`, and
results derived from the probabilities by functions the caller passes (``derive``: the
instances of :mod:`useg.workflows.segment`), so that prediction knows nothing of what comes
after it.
:func:`predict_paths` is ``useg predict``: :func:`predict_files`, or with ``--dask``
:func:`useg.inference.dask.predict_to_store`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.device import check_precision, resolve_device, resolve_precision
from useg.errors import ConfigError, InputError, ModelFileError, UsegWarning
from useg.inference.predict import check_spatial_axes, predict
from useg.inference.tile_choice import memory_budget, tile_notes_said
from useg.inference.tiling import check_batch_size
from useg.labels import class_dtype, most_likely_class
from useg.nets.checkpoint import load_model, operating_threshold
from useg.nets.unet import UNet

__all__ = ["Derive", "predict_file", "predict_files", "predict_image", "predict_paths",
           "write_results"]

# A result computed from the class probabilities ``(C, *spatial)`` and the image's calibration
# (or None), written as ``<stem>_<kind>.tif`` beside the probabilities.
Derive = Callable[[np.ndarray, Sequence[float] | None], np.ndarray]


def predict_file(
    model: UNet,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    write_probabilities: bool = True,
    write_labels: bool = True,
    name: str | os.PathLike | None = None,
    derive: Mapping[str, Derive] | None = None,
    **kwargs: Any,
) -> dict[str, Path]:
    """Predict one image file and write ``<stem>_probs.tif`` and ``<stem>_labels.tif``, and
    ``<stem>_<kind>.tif`` for each function of ``derive`` (called with the probabilities and
    the file's calibration).

    A 2D model applied to a 3D stack predicts slice by slice. Outputs are written to temporary
    files and renamed when complete, so an interrupted run leaves no half-written file. ``name``
    is the file's path relative to the folder it was listed from (default: its file name); its
    sub-folders are kept under ``out_dir`` (:func:`useg.io.files.result_paths`, which
    :func:`useg.io.files.plan_results` checks for collisions before a run). ``kwargs`` go to
    :func:`useg.inference.predict.predict`.
    """
    path = Path(path)
    derive = dict(derive or {})
    targets = io.result_paths(out_dir, path.name if name is None else name,
                              probabilities=write_probabilities, labels=write_labels,
                              extra=tuple(derive))
    image, meta = io.read_image(path)
    try:
        probs = predict_image(model, image, **kwargs)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except ModelFileError as exc:
        raise ModelFileError(f"{getattr(model, 'path', 'model')} on {path}: {exc}") from None
    spacing = meta.get("spacing")
    derived = {kind: fn(probs, spacing) for kind, fn in derive.items()}
    return write_results(targets, probs, spacing, derived=derived, nifti=meta.get("nifti"),
                         unit=meta.get("unit"),
                         threshold=operating_threshold(getattr(model, "meta", {})))


def predict_image(
    model: UNet,
    image: np.ndarray,
    *,
    progress: bool | Callable[[int, int], None] = False,
    **kwargs: Any,
) -> np.ndarray:
    """Class probabilities of an image ``(C, *spatial)`` as ``useg predict`` computes them: a 2D
    model applied to a 3D stack ``(C, Z, Y, X)`` predicts slice by slice; a 3D model refuses a
    2D image.

    ``progress`` is as for :func:`useg.inference.predict.predict`; a callable receives the tiles
    done and their total over all slices. ``kwargs`` go to
    :func:`useg.inference.predict.predict`.
    """
    # A 2D image's channels must not be taken for slices (predict adds a channel axis to an
    # image with as many axes as the model has spatial ones).
    check_spatial_axes(model.config.ndim, image.shape[1:], slice_by_slice=True)
    if not (model.config.ndim == 2 and image.ndim == 4):
        return predict(model, image, progress=progress, **kwargs)
    depth = image.shape[1]
    slices = []
    for z in range(depth):
        shown = progress
        if callable(progress):
            # The tiler counts the tiles of one slice; every slice has as many.
            shown = lambda done, total, z=z: progress(z * total + done, depth * total)  # noqa: E731
        # Every slice has the first one's tile: a note on it is said once.
        with tile_notes_said() if z else contextlib.nullcontext():
            slices.append(predict(model, image[:, z], progress=shown, **kwargs))
    return np.stack(slices, axis=1)


def write_results(
    targets: Mapping[str, Path], probs: np.ndarray, spacing: Sequence[float] | None = None, *,
    labels: np.ndarray | None = None, derived: Mapping[str, np.ndarray] | None = None,
    nifti: Any = None,
    unit: str | None = io.UNIT,
    threshold: float | None = None,
) -> dict[str, Path]:
    """Write class probabilities ``(C, *spatial)`` and/or their most likely class into the
    result files ``targets`` (``"probabilities"``, ``"labels"``: see
    :func:`useg.io.files.result_paths`), with the calibration ``spacing`` in ``unit`` (None:
    unknown, as ``meta["unit"]`` of :func:`useg.io.images.read_image` says of a file that
    states none).

    ``threshold``: a two-class model's operating point
    (:func:`useg.nets.checkpoint.operating_threshold`); the labels are then class 1 where its
    probability exceeds it (:func:`useg.labels.most_likely_class`).

    ``labels`` are the most likely classes when the caller has them already; ``derived`` are
    further label images by kind (written where ``targets`` names them). ``nifti`` is the
    header of a NIfTI input (``meta["nifti"]`` of :func:`useg.io.images.read_image`): NIfTI
    targets (``.nii.gz``, named so for NIfTI inputs) take its affine. Returns the files
    written, by kind; missing folders are created. The files are marked as results
    (:data:`useg.io.files.RESULT_SOFTWARE`), so that a later run listing their folder as input
    skips them (:func:`useg.io.files.is_result_file`).
    """
    for target in targets.values():
        io.make_folder(target.parent)
    axes = "ZYX"[3 - (probs.ndim - 1):]
    written: dict[str, Path] = {}
    if "probabilities" in targets:
        target = targets["probabilities"]
        io.write_image(target, probs.astype(np.float32, copy=False), spacing=spacing,
                       axes="C" + axes, software=io.RESULT_SOFTWARE, reference=nifti, unit=unit)
        written["probabilities"] = target
    if "labels" in targets:
        if labels is None:
            labels = np.empty(probs.shape[1:], dtype=class_dtype(probs.shape[0]))
            most_likely_class(probs, out=labels, threshold=threshold)
        target = targets["labels"]
        io.write_image(target, labels, spacing=spacing, axes=axes, software=io.RESULT_SOFTWARE,
                       reference=nifti, unit=unit)
        written["labels"] = target
    for kind, array in (derived or {}).items():
        io.write_image(targets[kind], array, spacing=spacing, axes=axes,
                       software=io.RESULT_SOFTWARE, reference=nifti, unit=unit)
        written[kind] = targets[kind]
    _remove_stale_results(written)
    return written


def _remove_stale_results(written: Mapping[str, Path]) -> None:
    """Remove the results of the same image that an earlier run wrote and this one did not
    (``x_probs.tif`` beside new ``x_labels.tif`` of a run with ``--no-probs``): left there, they
    would pass for results of the same model. Only files marked as useg results
    (:func:`useg.io.files.is_result_file`) are removed, each with a warning."""
    some_kind, some = next(iter(written.items()))
    ending = "_probs" if some_kind == "probabilities" else f"_{some_kind}"
    stem = io.file_stem(some)
    if not stem.endswith(ending):
        return
    base, ext = stem[: -len(ending)], some.name[len(stem):]
    done = {path.name for path in written.values()}
    for suffix in io.RESULT_SUFFIXES:
        stale = some.parent / f"{base}{suffix}{ext}"
        if stale.name not in done and stale.is_file() and io.is_result_file(stale):
            stale.unlink()
            warnings.warn(UsegWarning(
                f"{stale}: removed, a result of an earlier run that this one does not write "
                f"(it would not match {some.name})"), stacklevel=3)


def predict_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    device: str = "auto",
    tile: Sequence[int] | int | None = None,
    memory_gib: float | None = None,
    batch_size: int = 1,
    tta: bool = False,
    precision: str = "auto",
    write_probabilities: bool = True,
    overwrite: bool = False,
    torch_threads: int | None = None,
    progress: bool = True,
    on_written: Callable[[Path, dict[str, Path]], None] | None = None,
    derive: Mapping[str, Derive] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> list[tuple[Path, dict[str, Path]]]:
    """Predict image files and folders of them into ``out_dir`` (``useg predict``).

    Every result is named and checked (:func:`useg.io.files.plan_results`) before the first
    image is predicted, so a refusal costs nothing; images found in a folder keep their path
    relative to it. The model file is loaded once and the precision resolved once. The output
    folder is checked first (:func:`useg.io.files.check_output_folder`), and the temporary files
    that a killed run left in the folders written to are removed
    (:func:`useg.io.files.remove_stale_temporaries`).

    Parameters
    ----------
    inputs : sequence of paths
        Image files and folders.
    out_dir : path
        Output folder.
    model : path or str
        Model file, run folder or packaged model name (:func:`useg.nets.checkpoint.resolve_model`).
    device, tile, memory_gib, batch_size, tta, precision
        As for :func:`useg.inference.predict.predict`; a ``tile`` needs 1 or ``ndim`` sizes.
    write_probabilities : bool
        Write ``<stem>_probs.tif`` besides the label images.
    overwrite : bool
        Replace results that exist already (refused otherwise).
    torch_threads : int, optional
        ``torch.set_num_threads`` for the prediction.
    progress : bool
        Progress bars (per image; a bar over the images too when there are several and stderr
        is a terminal).
    on_written : callable, optional
        Called with each input file and its written results, as soon as they are written.
    derive : mapping of str to callable, optional
        Results derived from each image's probabilities, by kind (:func:`predict_file`).
    on_ready : callable, optional
        Called once when the inputs, the results' names and the model have been checked, before
        the first image is predicted (for notes that should not precede a refusal).

    Returns
    -------
    list of (Path, dict)
        Each input file and its written results (:func:`predict_file`).
    """
    from tqdm.auto import tqdm

    io.check_output_folder(out_dir)
    device = resolve_device(device)
    memory_budget(memory_gib, tile, device)  # checked before anything is read
    derive = dict(derive or {})
    plan = _planned_results(inputs, out_dir, write_probabilities, overwrite, tuple(derive))
    # Temporary files of a run killed earlier (kill -9), in the folders this run writes to.
    io.remove_stale_temporaries({Path(out_dir), *(t.parent for *_, r in plan for t in r.values())})
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    precision = resolve_precision(precision, device)  # once, not per image
    net = load_model(model, device=device)
    tile = _tile_for(tile, net.config.ndim)
    if on_ready is not None:
        on_ready()
    show = progress and sys.stderr.isatty()
    outer = tqdm(plan, unit="image", desc="images", disable=not show or len(plan) == 1)
    done = []
    for path, name, _ in outer:
        written = predict_file(
            net, path, out_dir, write_probabilities=write_probabilities, tile=tile,
            memory_gib=memory_gib, device=device, precision=precision, tta=tta,
            batch_size=batch_size, progress=progress, name=name, derive=derive,
        )
        done.append((path, written))
        if on_written is not None:
            on_written(path, written)
    return done


def _planned_results(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    write_probabilities: bool,
    overwrite: bool,
    extra: Sequence[str] = (),
) -> list:
    """The images found in ``inputs`` with their result names
    (:func:`useg.io.files.plan_results`); raises :class:`~useg.errors.InputError` for a missing
    input or when there is no image."""
    from useg.io.chunked import is_array_spec

    for item in inputs:
        if is_array_spec(item):
            # Without --dask it would read as a missing file or a folder without images.
            raise InputError(f"{item}: a zarr or HDF5 array; useg predict reads those with "
                             "--dask")
        if not Path(item).exists():
            raise InputError(f"{item}: no such file or folder")
    plan = io.plan_results(inputs, out_dir, probabilities=write_probabilities, extra=extra,
                           overwrite=overwrite)
    if not plan:
        raise InputError(f"{', '.join(map(str, inputs))}: no images found (PNG, TIFF or NIfTI)")
    return plan


def _tile_for(tile: Sequence[int] | int | None, ndim: int) -> Sequence[int] | int | None:
    """``tile`` as :func:`useg.inference.predict.predict` takes it for an ``ndim``-D model."""
    if tile is None or isinstance(tile, int):
        return tile
    if len(tile) not in (1, ndim):
        raise InputError(f"--tile needs 1 or {ndim} sizes for this {ndim}D model")
    return tile[0] if len(tile) == 1 else tuple(tile)


# Options that only the block-parallel (dask) path takes, by their command-line flags.
_DASK_ONLY = ("--scheduler", "--workers", "--block")


def predict_paths(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike,
    *,
    dask: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    block: Sequence[int] | None = None,
    **options: Any,
) -> list[tuple[Path, dict[str, Path]]] | dict[str, Any]:
    """``useg predict``: image files and folders into result files in the folder ``out``
    (:func:`predict_files`, whose list is returned), or with ``dask`` one image or chunked array
    block by block into the zarr store ``out``
    (:func:`useg.inference.dask.predict_to_store`, whose summary is returned).

    ``options`` are those of :func:`predict_files` (``on_written`` only without ``dask``);
    ``scheduler``, ``workers`` and ``block`` (one size for every axis, or one per axis) are only
    for ``dask``. Settings are checked before anything is read.
    """
    check_precision(options.get("precision", "auto"))
    threads = options.get("torch_threads")
    if threads is not None and threads < 1:
        raise ConfigError(f"--torch-threads must be at least 1, got {threads}")
    cpus = os.cpu_count() or 1
    if threads is not None and threads > cpus:
        # More threads than CPUs only contend (and past a few thousand the OpenMP runtime
        # cannot start them at all).
        raise ConfigError(f"--torch-threads {threads}: more than the {cpus} CPUs of this "
                          "machine")
    check_batch_size(options.get("batch_size", 1))
    if dask:
        return _predict_store(inputs, out, model, scheduler, workers, block, options)
    given = [flag for flag, value in zip(_DASK_ONLY, (scheduler, workers, block), strict=True)
             if value is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --dask (block-parallel prediction of "
                          "one large image); add --dask or leave them out")
    return predict_files(inputs, out, model, **options)


def _predict_store(inputs, out, model, scheduler, workers, block, options) -> dict[str, Any]:
    if len(inputs) != 1:
        raise InputError("--dask predicts one image (or volume) at a time; give one INPUT")
    # The containers (a store's array may be named as store:level or store/level).
    from useg.io.chunked import parse_spec

    source = parse_spec(inputs[0]).container.resolve()
    store = parse_spec(out).container.resolve()
    if source == store or source.is_relative_to(store) or store.is_relative_to(source):
        # Writing (or --overwrite replacing) the store would destroy the image being read.
        raise ConfigError(f"--out {out}: holds the input {inputs[0]} (or lies in it); write "
                          "the results to another store")
    from useg.inference.dask import predict_to_store

    options = {k: v for k, v in options.items() if k != "on_written"}
    progress = options.pop("progress", True) and sys.stderr.isatty()
    return predict_to_store(
        inputs[0], out, model, scheduler=scheduler, workers=workers, block=_one_or_all(block),
        tile=_one_or_all(options.pop("tile", None)), progress=progress, **options,
    )


def _one_or_all(sizes: Sequence[int] | None) -> tuple[int, ...] | int | None:
    """One size for every axis as an int, several as given."""
    return sizes[0] if sizes and len(sizes) == 1 else sizes

"""Prediction of image files into result files: the engine of ``useg predict``.

:func:`predict_files` names every result of a run and checks them against each other, the
inputs and what exists (:func:`useg.io.files.plan_results`) before the first image is
predicted; :func:`predict_file` predicts one file and writes ``<stem>_probs.tif`` (class
probabilities) and ``<stem>_labels.tif`` (most likely class).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.device import resolve_device, resolve_precision
from useg.errors import InputError
from useg.inference.predict import predict
from useg.labels import class_dtype, most_likely_class
from useg.nets.checkpoint import load_model
from useg.nets.unet import UNet

__all__ = ["predict_file", "predict_files"]


def predict_file(
    model: UNet,
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    write_probabilities: bool = True,
    write_labels: bool = True,
    name: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Path]:
    """Predict one image file and write ``<stem>_probs.tif`` and ``<stem>_labels.tif``.

    A 2D model applied to a 3D stack predicts slice by slice. Outputs are written to temporary
    files and renamed when complete, so an interrupted run leaves no half-written file. ``name``
    is the file's path relative to the folder it was listed from (default: its file name); its
    sub-folders are kept under ``out_dir`` (:func:`useg.io.files.result_paths`, which
    :func:`useg.io.files.plan_results` checks for collisions before a run). ``kwargs`` go to
    :func:`useg.inference.predict.predict`.
    """
    path = Path(path)
    targets = io.result_paths(out_dir, path.name if name is None else name,
                              probabilities=write_probabilities, labels=write_labels)
    image, meta = io.read_image(path)
    cfg = model.config
    stack = cfg.ndim == 2 and image.ndim == 4
    try:
        if stack:
            slices = [predict(model, image[:, z], **kwargs) for z in range(image.shape[1])]
            probs = np.stack(slices, axis=1)
        else:
            probs = predict(model, image, **kwargs)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    spacing = meta.get("spacing")
    written: dict[str, Path] = {}
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
    if write_probabilities:
        target = targets["probabilities"]
        axes = "C" + "ZYX"[3 - (probs.ndim - 1):]
        io.write_image(target, probs.astype(np.float32, copy=False), spacing=spacing, axes=axes)
        written["probabilities"] = target
    if write_labels:
        labels = np.empty(probs.shape[1:], dtype=class_dtype(cfg.classes))
        most_likely_class(probs, out=labels)
        target = targets["labels"]
        io.write_image(target, labels, spacing=spacing, axes="ZYX"[3 - labels.ndim:])
        written["labels"] = target
    return written


def predict_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str | os.PathLike,
    *,
    device: str = "auto",
    tile: Sequence[int] | int | None = None,
    batch_size: int = 1,
    tta: bool = False,
    precision: str = "auto",
    write_probabilities: bool = True,
    overwrite: bool = False,
    torch_threads: int | None = None,
    progress: bool = True,
    on_written: Callable[[Path, dict[str, Path]], None] | None = None,
) -> list[tuple[Path, dict[str, Path]]]:
    """Predict image files and folders of them into ``out_dir`` (``useg predict``).

    Every result is named and checked (:func:`useg.io.files.plan_results`) before the first
    image is predicted, so a refusal costs nothing; images found in a folder keep their path
    relative to it. The model file is loaded once and the precision resolved once.

    Parameters
    ----------
    inputs : sequence of paths
        Image files and folders.
    out_dir : path
        Output folder.
    model : path or str
        Model file, run folder or packaged model name (:func:`useg.nets.checkpoint.resolve_model`).
    device, tile, batch_size, tta, precision
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

    Returns
    -------
    list of (Path, dict)
        Each input file and its written results (:func:`predict_file`).
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    for item in inputs:
        if not Path(item).exists():
            raise InputError(f"{item}: no such file or folder")
    plan = io.plan_results(inputs, out_dir, probabilities=write_probabilities,
                           overwrite=overwrite)
    if not plan:
        raise InputError(f"{', '.join(map(str, inputs))}: no PNG or TIFF images found")
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    precision = resolve_precision(precision, device)  # once, not per image
    net = load_model(model, device=device)
    if tile is not None and not isinstance(tile, int):
        if len(tile) not in (1, net.config.ndim):
            raise InputError(
                f"--tile needs 1 or {net.config.ndim} sizes for this {net.config.ndim}D model"
            )
        tile = tile[0] if len(tile) == 1 else tuple(tile)
    show = progress and sys.stderr.isatty()
    outer = tqdm(plan, unit="image", desc="images", disable=not show or len(plan) == 1)
    done = []
    for path, name, _ in outer:
        written = predict_file(
            net, path, out_dir, write_probabilities=write_probabilities, tile=tile,
            device=device, precision=precision, tta=tta, batch_size=batch_size,
            progress=progress, name=name,
        )
        done.append((path, written))
        if on_written is not None:
            on_written(path, written)
    return done

"""What a run report shows, gathered from a run folder: its configuration, log and model
header (:func:`read_run`), and its gallery (:func:`gallery`): images predicted with the run's
model as ``useg predict`` would predict their files, and scored against their labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg import io
from useg.device import resolve_device
from useg.errors import InputError, UsegError
from useg.inference.files import predict_image
from useg.labels import most_likely_class
from useg.nets.checkpoint import FOLDER_MODELS, load_model, model_info
from useg.report.figures import middle_slice, overlay_panels
from useg.report.scores import image_scores
from useg.training.from_folders import recorded_slices
from useg.training.run_folder import CONFIG, LOG, read_config, read_log
from useg.training.samples import sparsify, targets_from_labels

__all__ = ["GalleryImage", "RunRecord", "class_names", "gallery", "read_run"]

# The model files of a run folder, the one the report shows first (a run folder's files of
# useg.nets.checkpoint.FOLDER_MODELS).
MODEL_FILES = tuple(f for f in FOLDER_MODELS if f != "model.safetensors")


@dataclass
class RunRecord:
    """What a run folder records: its configuration (``config.json``), log rows, the model
    file the report uses and that file's header."""

    folder: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    model: Path
    header: dict[str, Any]


@dataclass
class GalleryImage:
    """One image of the gallery: its panels (RGB arrays of the plane shown: image,
    probability, segmentation, ground truth), where it comes from, and its scores."""

    name: str
    split: str  # "validation" or "training"
    panels: list[np.ndarray]
    scores: dict[str, float | None]
    plane: str | None = None  # which plane of a volume is shown
    notes: list[str] = field(default_factory=list)


def read_run(run: str | os.PathLike) -> RunRecord:
    """The record of the run folder ``run``; :class:`~useg.errors.InputError` when it is not
    one (no folder, no or an incomplete ``config.json``, no model file)."""
    folder = Path(run)
    if not folder.is_dir():
        raise InputError(f"{run}: not a run folder (no such folder)")
    if not (folder / CONFIG).is_file():
        raise InputError(f"{run}: not a run folder (no {CONFIG})")
    config = read_config(folder)
    model = next((folder / m for m in MODEL_FILES if (folder / m).is_file()), None)
    if model is None:
        raise InputError(f"{run}: no model file ({' or '.join(MODEL_FILES)}); has the run "
                         "written its first checkpoint?")
    return RunRecord(folder, config, read_log(folder / LOG), model, model_info(model))


def class_names(config: dict[str, Any]) -> list[str]:
    """The names of the run's classes (its labels record), else ``class 0``, ``class 1``..."""
    count = int(config["net"]["classes"])
    names = (config.get("labels") or {}).get("classes")
    if isinstance(names, list) and len(names) == count:
        return [str(n) for n in names]
    return [f"class {i}" for i in range(count)]


def gallery(
    record: RunRecord, *, limit: int, device: str = "auto", precision: str = "auto",
) -> tuple[list[GalleryImage], list[str]]:
    """The first ``limit`` validation images of the run (its training images, labelled as
    such, when it had none), predicted with the run's model, and notes for the reader (where
    the images come from, what could not be shown)."""
    data = (record.config.get("labels") or {}).get("data") or {}
    notes: list[str] = []
    if data.get("val_images") and data.get("val_labels"):
        split, images, labels = "validation", data["val_images"], data["val_labels"]
    elif data.get("images") and data.get("labels"):
        split, images, labels = "training", data["images"], data["labels"]
        notes.append("The run had no validation images: these are training images, which "
                     "the network has seen; their scores flatter it.")
    elif data.get("volume") and data.get("labels"):
        # A useg densify run: one volume, scored on its annotated voxels.
        split, images, labels = "training", data["volume"], data["labels"]
        notes.append("The run densified one volume: shown is that volume, scored on its "
                     "annotated voxels, which the network trained on; their scores flatter "
                     "it (the unannotated voxels have no labels to score).")
    else:
        return [], ["The run records no data files (it was not trained from files), so there "
                    "is no gallery."]
    try:
        pairs = io.pair_files(images, labels)
    except UsegError as exc:
        return [], [*notes, f"The {split} files it records cannot be read: {exc}"]
    if len(pairs) > limit:
        notes.append(f"Showing the first {limit} of {len(pairs)} {split} images.")
    where = resolve_device(device)
    net = load_model(record.model, device=where)
    slices = recorded_slices(data) if split == "training" else None
    shown = []
    for image_path, label_path in pairs[:limit]:
        try:
            shown.append(_gallery_image(net, record.config, image_path, label_path, split,
                                        slices, where, precision))
        except UsegError as exc:
            notes.append(f"{Path(image_path).name}: not shown ({exc})")
    return shown, notes


def _gallery_image(
    net: Any, config: dict[str, Any], image_path: Path, label_path: Path, split: str,
    slices: dict[int, list[int]] | None, device: torch.device, precision: str,
) -> GalleryImage:
    """One gallery image: predicted as ``useg predict`` predicts its file, scored against its
    labels as training reads them, and drawn (the middle plane of a volume)."""
    image, _ = io.read_image(image_path)
    labels, _ = io.read_labels(label_path)
    probs = predict_image(net, image, device=device, precision=precision)
    if probs.shape[1:] != labels.shape:
        raise InputError(f"labels {label_path.name} of shape {labels.shape} do not match the "
                         f"image's {probs.shape[1:]}")
    target = _target(labels, config, net.config.ndim, slices)
    names = class_names(config)
    scores = image_scores(probs, target, names)
    spatial = labels.ndim
    classes = most_likely_class(probs)
    # The probability of "not background": class 1 of a two-class model.
    foreground = 1.0 - probs[0]
    shown_image = middle_slice(image, spatial)
    picture = shown_image[0] if shown_image.shape[0] != 3 else np.moveaxis(shown_image, 0, -1)
    panels = overlay_panels(picture, middle_slice(foreground, spatial),
                            middle_slice(classes, spatial), middle_slice(labels, spatial))
    plane = (f"middle slice z = {labels.shape[0] // 2} of {labels.shape[0]}"
             if spatial == 3 else None)
    return GalleryImage(Path(image_path).name, split, panels, scores, plane)


def _target(labels: np.ndarray, config: dict[str, Any], ndim: int,
            slices: dict[int, list[int]] | None) -> np.ndarray:
    """The class target of a label image as the run trained on it (slice by slice for a 2D
    network on a stack; only the annotated ``slices`` of sparse labels)."""
    options = {"unlabeled": config.get("unlabeled"),
               "boundary_width": int(config.get("boundary_width", 1))}
    mode = config.get("label_mode", "binary")
    if ndim == 2 and labels.ndim == 3:
        target = np.stack([targets_from_labels(plane, mode, **options)[0] for plane in labels])
    else:
        target = targets_from_labels(labels, mode, **options)[0]
    return sparsify(target, slices) if slices else target

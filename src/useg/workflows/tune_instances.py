"""Post-processing chosen on validation data and stored in the model file.

After ``useg train`` with validation images whose labels hold one id per object (label modes
``instances`` and ``three_class``), the instance step's settings (threshold, seed distance,
minimum size) are searched on a grid for the largest object F1 at IoU 0.5 over the validation
images, and written into the model file's header (``"instances"``), so that
``useg predict --instances`` uses them without flags. Only validation images are looked at;
reported test data never are.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.errors import InputError, UsegWarning
from useg.evaluation.objects import object_f1
from useg.inference.files import predict_image
from useg.nets.checkpoint import load_model, update_header
from useg.postprocess.instances import InstanceParams, instances_from_probabilities
from useg.report import report_after_training
from useg.training.from_folders import saved_run, train_from_folders
from useg.workflows.segment import INSTANCE_TARGETS, instance_spacing

__all__ = ["DEFAULT_GRID", "TUNED_MODES", "choose_instance_params", "train_and_tune",
           "tune_model_instances"]

# Candidate settings. Minimum sizes and seed distances are in pixels (voxels in 3D).
DEFAULT_GRID: dict[str, tuple] = {
    "threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "seed_distance": (0.0, 1.0, 2.0, 3.0, 5.0),
    "min_size": (0, 8, 16, 32, 64, 128),
}
# Label modes whose label files hold one id per object (the reference of the object F1).
TUNED_MODES = ("instances", "three_class")


def choose_instance_params(
    probs: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    target: str,
    *,
    spacings: Sequence[Sequence[float] | None] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    unlabeled: int | None = None,
) -> tuple[InstanceParams, dict[str, Any]]:
    """The instance settings with the largest pooled object F1 at IoU 0.5.

    The matches, false positives and false negatives of all images are summed before the F1 is
    computed, so that large images count in proportion to their objects. Ties go to the
    earlier candidate of the grid (lower thresholds, seed distances and sizes first).

    Parameters
    ----------
    probs : sequence of ndarray
        Class probabilities ``(C, *spatial)`` of each validation image.
    references : sequence of ndarray
        Their reference instance labels (0 = background).
    target : str
        The instance target of the model (:data:`useg.workflows.segment.INSTANCE_TARGETS`).
    spacings : sequence, optional
        Relative voxel size of each image (None: isotropic).
    grid : mapping, optional
        Candidate values per setting (default :data:`DEFAULT_GRID`).
    unlabeled : int, optional
        The reference id of pixels nobody annotated (the run's ``--unlabeled``): they are not
        an object, and what is found there is neither right nor wrong, so both are left out.

    Returns
    -------
    params : InstanceParams
    record : dict
        ``object_f1`` of the choice, the candidates tried and the counts.
    """
    if len(probs) != len(references) or not probs:
        raise InputError("choose_instance_params needs as many references as probability maps "
                         "(at least one)")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    spacings = list(spacings) if spacings is not None else [None] * len(probs)
    outside = [None if unlabeled is None else ref == unlabeled for ref in references]
    references = [ref if out is None else np.where(out, 0, ref)
                  for ref, out in zip(references, outside, strict=True)]
    names = list(grid)
    best: tuple[float, InstanceParams, dict] | None = None
    for values in itertools.product(*(grid[n] for n in names)):
        params = InstanceParams.from_dict(dict(zip(names, values, strict=True)), source="grid")
        tp = fp = fn = 0
        for p, ref, sp, out in zip(probs, references, spacings, outside, strict=True):
            found = instances_from_probabilities(p, target, params, spacing=sp)
            if out is not None:
                found = np.where(out, 0, found)
            counts = object_f1(found, ref, thresholds=(0.5,))[0.5]
            tp, fp, fn = tp + counts["tp"], fp + counts["fp"], fn + counts["fn"]
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        if best is None or f1 > best[0]:
            best = (f1, params, {"tp": tp, "fp": fp, "fn": fn})
    assert best is not None
    f1, params, counts = best
    record = {"object_f1": f1, **counts, "images": len(probs),
              "grid": {n: list(grid[n]) for n in names}}
    return params, record


def tune_model_instances(
    model: str | os.PathLike,
    images: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    device: str = "cpu",
    precision: str = "auto",
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, Any] | None:
    """Choose the instance settings of ``model`` on validation ``images`` and their instance
    ``labels`` (paired by name) and write them into the model file; returns what was written.

    The images are predicted as ``useg predict`` would (whole images, overlap tiles; a 2D model
    predicts a stack slice by slice, and its objects are found and scored per slice). When no
    setting finds any object of the references (object F1 0), nothing is written, a warning
    says so, and None is returned.
    """
    net = load_model(model, device=device)
    mode = (net.meta.get("labels") or {}).get("mode")
    if mode not in TUNED_MODES:
        raise InputError(f"{net.path}: instance settings are chosen for models trained with "
                         f"--labels {' or '.join(TUNED_MODES)}, not {mode!r}")
    target = INSTANCE_TARGETS[mode]
    probs, refs, spacings, names = [], [], [], []
    for img_path, lab_path in io.pair_files(images, labels):
        image, meta = io.read_image(img_path)
        ref, _ = io.read_labels(lab_path)
        try:
            p = predict_image(net, image, device=device, precision=precision, progress=False)
        except InputError as exc:
            raise InputError(f"{img_path}: {exc}") from None
        if p.shape[1:] != ref.shape:
            raise InputError(f"{lab_path}: labels of shape {ref.shape} do not match the "
                             f"prediction of {img_path.name} {p.shape[1:]}")
        spacing = instance_spacing(meta.get("spacing"), ref.ndim)
        if net.config.ndim == 2 and ref.ndim == 3:
            # As useg predict --instances finds them: slice by slice, each slice an image.
            probs.extend(p[:, z] for z in range(ref.shape[0]))
            refs.extend(ref)
            spacings.extend([None if spacing is None else spacing[1:]] * ref.shape[0])
        else:
            probs.append(p)
            refs.append(ref)
            spacings.append(spacing)
        names.append(Path(img_path).name)
    trained = (net.meta.get("provenance") or {}).get("config") or {}
    params, record = choose_instance_params(probs, refs, target, spacings=spacings, grid=grid,
                                            unlabeled=trained.get("unlabeled"))
    if record["object_f1"] == 0:
        # Every candidate ties at 0: the first would pass for a choice made on data.
        warnings.warn(UsegWarning(
            f"{net.path}: no instance settings stored: at every candidate setting no object of "
            f"the validation images ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) "
            "is found (object F1 0); useg predict --instances will use the defaults"),
            stacklevel=2)
        return None
    entry = {
        "target": target,
        "params": params.to_dict(),
        "chosen_on": f"object F1@0.5 {record['object_f1']:.3f} on {len(names)} validation "
                     f"image(s)",
        "validation": {**record, "files": names},
    }
    update_header(net.path, {"instances": entry})
    return entry


def train_and_tune(out: str | os.PathLike, **kwargs: Any) -> tuple[Path, dict[str, Any] | None]:
    """``useg train``: :func:`useg.training.from_folders.train_from_folders`, then, when the run
    has validation data with one id per object, :func:`tune_model_instances` on its model.

    Returns the model file and the instance settings written (None when there was nothing to
    choose them on). Last, the run's report page (:func:`useg.report.report_after_training`:
    ``report.html`` in the run folder, or one line of warning when it cannot be written).
    """
    best = train_from_folders(out, **kwargs)
    saved, data, _ = saved_run(out)
    mode = (saved.get("labels") or {}).get("mode")
    device = str(saved.get("device") or "auto")
    precision = str(saved.get("precision", "auto"))
    entry = None
    if mode in TUNED_MODES and data.get("val_images"):
        entry = tune_model_instances(best, data["val_images"], data["val_labels"],
                                     device="cpu" if device == "auto" else device,
                                     precision=precision)
    # After the instance settings, so that the report shows them.
    report = report_after_training(out, device=device, precision=precision)
    say = kwargs.get("say")
    if report is not None and say is not None:
        say(f"report: {report}")
    return best, entry

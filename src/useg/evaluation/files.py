"""Scoring prediction files against ground-truth files: the engine of ``useg evaluate``.

Files are paired by name stem (``pred/12.tif`` with ``gt/12.png``,
:func:`useg.io.files.pair_files`).
``mode="isbi"`` scores interior (or membrane) probability maps against binary ground truth over
thresholds (:func:`useg.evaluation.isbi.isbi_scores`), averaged over the pairs;
``mode="instances"`` scores label images (:func:`useg.evaluation.objects.object_scores`,
:mod:`useg.evaluation.rand`). Its mean over the pairs: object precision, recall and F1 from the
object counts pooled over the pairs; the numbers of objects summed; every other score (SEG,
average precision at each threshold and over 0.5:0.95, AJI, mean matched IoU, Rand, VOI,
foreground IoU) averaged over the pairs, each image counting once, as the Data Science Bowl 2018
averages its score over images.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from useg.errors import (
    ConfigError,
    InputError,
    OutputError,
    UsegError,
    UsegWarning,
    check_choice,
    input_error,
)
from useg.evaluation.isbi import (
    DEFAULT_ISBI_THRESHOLDS,
    isbi_best,
    isbi_scores,
)
from useg.evaluation.objects import DEFAULT_IOU_THRESHOLDS, detection_scores, object_scores
from useg.evaluation.pixel import iou
from useg.evaluation.rand import adapted_rand_error, variation_of_information
from useg.io.files import check_output_file, file_stem, is_result_file, pair_files, write_json
from useg.io.images import read_image, read_labels

__all__ = ["evaluate_folders", "read_probability"]


def read_probability(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """A probability map from an image file, as float64 in [0, 1].

    Integer files are divided by 255 when their values reach at most 255, else by 65535,
    unless they only hold 0 and 1; float files must lie in [0, 1]. A multi-channel file needs
    ``channel`` (counted from 0; a negative one is refused, never taken from the end).
    """
    path = Path(path)
    image, _ = read_image(path)
    n = image.shape[0]
    if channel is None:
        if n != 1:
            raise InputError(f"{path}: has {n} channels; choose one with --channel")
        channel = 0
    if not 0 <= channel < n:
        has = "1 channel (0)" if n == 1 else f"{n} channels (0 to {n - 1})"
        raise InputError(f"{path}: has {has}, no channel {channel}")
    p = image[channel]
    if p.dtype == bool:
        return p.astype(np.float64)
    if np.issubdtype(p.dtype, np.integer):
        top = int(p.max())
        if p.min() < 0 or top > 65535:
            raise InputError(f"{path}: integer values outside 0..65535 cannot be probabilities")
        scale = 1 if top <= 1 else 255 if top <= 255 else 65535
        if scale == 255 and p.dtype.itemsize > 1:
            # Read from the values, not the pixel type: say so where the two disagree, since
            # 16-bit probabilities that happen to stay low would be read 257x too high.
            warnings.warn(f"{path}: a {p.dtype.itemsize * 8}-bit file whose values stay within "
                          "0..255: read as 8-bit probabilities (divided by 255)", UsegWarning,
                          stacklevel=2)
        return p.astype(np.float64) / scale
    p = p.astype(np.float64)
    if p.min() < 0 or p.max() > 1:
        raise InputError(
            f"{path}: float values in [{p.min():g}, {p.max():g}]; probabilities must lie in [0, 1]"
        )
    return p


def _read_labels(path: Path) -> np.ndarray:
    return read_labels(path)[0]


def _read_ids(path: Path) -> np.ndarray:
    """A label image of object ids (0 = background), refusing negative values: they are no
    ids, and the object scores would count them as objects."""
    labels = _read_labels(path)
    negative = labels < 0 if labels.dtype.kind == "i" else None
    if negative is not None and negative.any():
        values = np.unique(labels[negative])
        shown = ", ".join(map(str, values[:3])) + (", ..." if values.size > 3 else "")
        raise input_error(path, f"negative label values ({shown}); --mode instances needs "
                          "object ids >= 0 (0 = background)")
    return labels


def _refuse_class_results(path: Path) -> None:
    """Refuse a result of ``useg predict`` that holds classes or probabilities, not objects:
    scored as object ids, a class map is one object per class."""
    stem = file_stem(path)
    if stem.endswith(("_labels", "_probs")) and is_result_file(path):
        kind = "class map" if stem.endswith("_labels") else "class probabilities"
        raise input_error(path, f"useg's {kind}, not objects; --mode instances scores "
                          f"{stem.rsplit('_', 1)[0]}_instances (useg predict --instances)")


def _same_shape(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> None:
    if pred.shape != gt.shape:
        raise InputError(
            f"{pred_path}: shape {pred.shape} does not match {gt_path} with shape {gt.shape}"
        )


def _score_isbi(pairs, thresholds, channel, membrane, unassigned) -> tuple[list[dict], dict]:
    results = []
    for pred_path, gt_path in pairs:
        prob = read_probability(pred_path, channel)
        gt = _read_labels(gt_path)
        _same_shape(prob, gt, pred_path, gt_path)
        values = np.unique(gt)
        if values.size > 2:
            raise InputError(
                f"{gt_path}: ground truth has more than two values; --mode isbi needs a binary "
                "map (use --mode instances for label images)"
            )
        if values.size == 2 and values[0] != 0:
            # Two values without 0: coded otherwise than 0 = membrane, and read as all interior
            # it would score any prediction against a map without membrane.
            raise InputError(
                f"{gt_path}: ground truth values {values[0]} and {values[1]}; --mode isbi needs "
                "0 for membrane and one other value (e.g. 255) for cell interior"
            )
        try:
            # Its checks (e.g. a ground truth without interior) name no file: name the pair.
            scores = isbi_scores(prob, gt, thresholds, membrane=membrane, unassigned=unassigned)
        except InputError as exc:
            raise InputError(f"{pred_path} against {gt_path}: {exc}") from None
        results.append({"pred": str(pred_path), "gt": str(gt_path), "scores": scores})
    rows = [_mean_row([r["scores"]["per_threshold"][i] for r in results], t)
            for i, t in enumerate(thresholds)]
    return results, {"per_threshold": rows, "best": isbi_best(rows)}


def _mean_row(per_pair: list[dict], threshold: float) -> dict:
    """The scores of the pairs at one threshold: error counts summed, the rest averaged."""
    row: dict = {"threshold": float(threshold)}
    for key, value in per_pair[0].items():
        if key == "threshold":
            continue
        values = [r[key] for r in per_pair]
        row[key] = int(sum(values)) if isinstance(value, int) else float(np.mean(values))
    return row


def _score_instances(pairs, iou_thresholds) -> tuple[list[dict], dict]:
    results = []
    for pred_path, gt_path in pairs:
        _refuse_class_results(pred_path)
        pred = _read_ids(pred_path)
        gt = _read_ids(gt_path)
        _same_shape(pred, gt, pred_path, gt_path)
        if gt.any() and not pred.any():
            # The Rand and information scores take 0 for one segment like any other: over a
            # single reference object an empty prediction would read as perfect there.
            warnings.warn(f"{pred_path}: no object (every pixel 0); its Rand and VOI scores "
                          "count the background as one segment: read the object scores",
                          UsegWarning, stacklevel=2)
        scores = _instance_scores(pred, gt, iou_thresholds)
        results.append({"pred": str(pred_path), "gt": str(gt_path), "scores": scores})
    mean: dict = {}
    for key in results[0]["scores"]:
        values = [r["scores"][key] for r in results]
        if all(isinstance(v, float) or v is None for v in values):
            # Scores undefined for a pair (None: the Rand scores of a reference without
            # objects) are left out of the mean; undefined for every pair, it is undefined.
            defined = [v for v in values if v is not None]
            mean[key] = float(np.mean(defined)) if defined else None
    # Average precision per threshold: averaged over images, as the Data Science Bowl 2018 does.
    mean["average_precision_by_threshold"] = {
        t: float(np.mean([r["scores"]["average_precision_by_threshold"][t] for r in results]))
        for t in results[0]["scores"]["average_precision_by_threshold"]
    }
    # Object counts are pooled over images before computing precision, recall and F1.
    mean["object_f1"] = {
        t: detection_scores(*(sum(r["scores"]["object_f1"][t][k] for r in results)
                              for k in ("tp", "fp", "fn")))
        for t in results[0]["scores"]["object_f1"]
    }
    for key in ("n_pred", "n_gt"):
        mean[key] = int(sum(r["scores"][key] for r in results))
    return results, mean


def _instance_scores(pred: np.ndarray, gt: np.ndarray, iou_thresholds) -> dict:
    # The adapted Rand error counts the pairs of reference object pixels: with no object in
    # the reference there is nothing to count, and its 0/0 must not read as a perfect score.
    are = adapted_rand_error(pred, gt, ignore_labels=(0,))[0] if gt.any() else None
    voi_split, voi_merge = variation_of_information(pred, gt)
    obj = object_scores(pred, gt, iou_thresholds=iou_thresholds)
    return {
        "seg": obj["seg"],
        "average_precision": obj["average_precision"],
        "aji": obj["aji"],
        "mean_matched_iou": obj["mean_matched_iou"],
        "adapted_rand_error": are,
        "v_rand": None if are is None else 1.0 - are,
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "iou_foreground": iou(pred > 0, gt > 0, labels=(1,))[1],
        "n_pred": obj["n_pred"],
        "n_gt": obj["n_gt"],
        "object_f1": {f"{t:g}": v for t, v in obj["object_f1"].items()},
        "average_precision_by_threshold": {
            f"{t:g}": v for t, v in obj["average_precision_by_threshold"].items()
        },
    }


# --------------------------------------------------------------------------------------------
# useg evaluate

MODES = ("isbi", "instances")
# The options that only one mode uses, by their command-line flags.
_MODE_ONLY = {"isbi": ("--thresholds", "--membrane", "--channel", "--unassigned"),
              "instances": ("--iou-thresholds",)}


def _check_options(mode: str, given: dict[str, object]) -> None:
    """Refuse the options given (not None) that ``mode`` does not use, naming them and the
    mode, rather than ignoring them."""
    check_choice("mode", mode, MODES)
    unused = [flag for flag, value in given.items()
              if value is not None and flag not in _MODE_ONLY[mode]]
    if unused:
        other = next(m for m in MODES if m != mode)
        them = "it" if len(unused) == 1 else "them"
        raise ConfigError(f"{', '.join(unused)}: not used by --mode {mode} (only by --mode "
                          f"{other}); leave {them} out or choose --mode {other}")


def _is_report(path: Path) -> bool:
    """Whether the file ``path`` holds a JSON report of ``useg evaluate`` (or nothing)."""
    try:
        with path.open("rb") as f:
            head = f.read(64).lstrip()
        if not head:
            return True  # an empty file: nothing to lose
        if not head.startswith(b"{"):
            return False
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(report, dict) and report.get("mode") in MODES
            and {"pairs", "mean"} <= set(report))


def _check_json_place(json_path: str | os.PathLike) -> Path:
    """``--json``: a file, not a folder nor a device, in an existing folder that can be written
    (:func:`useg.io.files.check_output_file`); checked before the inputs are listed. Whether an
    existing file may be replaced is :func:`_check_json_target`'s decision."""
    try:
        return check_output_file(json_path, overwrite=True, new_folder=False, option="--json")
    except UsegError as exc:
        raise type(exc)(f"--json: {exc}") from None


def _check_json_target(json_path: Path, pairs: list[tuple[Path, Path]]) -> None:
    """Refuse a ``--json`` file that exists and is one of the input files (by any name: links,
    case) or anything but an earlier report (or empty), before any file is read: the report
    never replaces another file."""
    if not json_path.is_file():
        return
    check_output_file(json_path, overwrite=True, new_folder=False, option="--json",
                      inputs=[path for pair in pairs for path in pair])
    if not _is_report(json_path):
        raise OutputError(f"--json {json_path}: exists and is not a report of useg evaluate; "
                          "choose another file (or remove it)")


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    *,
    mode: str = "isbi",
    thresholds: Sequence[float] | None = None,
    membrane: bool | None = None,
    channel: int | None = None,
    unassigned: str | None = None,
    iou_thresholds: Sequence[float] | None = None,
    json_path: str | os.PathLike | None = None,
) -> dict:
    """Score the prediction files ``pred`` against the ground-truth files ``gt`` (``useg
    evaluate``).

    Parameters
    ----------
    pred, gt : path
        Image files or folders of them, paired by name stem
        (:func:`useg.io.files.pair_files`): a single file on one side is paired with its
        partner in the other folder, and every file of two folders needs a partner.
    mode : {"isbi", "instances"}
        ``isbi``: ``pred`` holds probabilities of cell interior (:func:`read_probability`),
        ``gt`` binary maps; ``instances``: both hold label images (0 = background).
    thresholds : sequence of float, optional
        isbi: binarisation thresholds in [0, 1] (default
        :data:`~useg.evaluation.isbi.DEFAULT_ISBI_THRESHOLDS`).
    membrane : bool, optional
        isbi: ``pred`` is a membrane probability (default False).
    channel : int, optional
        isbi: channel (from 0) of a multi-channel ``pred`` to score.
    unassigned : {"fill", "singletons"}, optional
        isbi: predicted membrane pixels for V_rand/V_info (default ``"fill"``, see
        :func:`~useg.evaluation.isbi.isbi_scores`).
    iou_thresholds : sequence of float, optional
        instances: IoU thresholds in [0, 1) of the object F1 (default
        :data:`~useg.evaluation.objects.DEFAULT_IOU_THRESHOLDS`).
    json_path : path, optional
        Also write the result there as JSON. Its folder must exist; it must not be one of the
        input files, and a file there already must be an earlier report (or empty).

    The options of one mode are refused in the other (None: not given), and every option is
    checked before any file is read.

    Returns
    -------
    dict
        ``{"mode": mode, "pairs": [{"pred", "gt", "scores"}...], "mean": ...}``: for isbi the
        mean is ``{"per_threshold": [...], "best": {...}}`` averaged over the pairs (error
        counts summed). For instances, the scores of a pair are ``seg``, ``average_precision``
        (over IoU 0.5:0.95), ``aji``, ``mean_matched_iou`` (at IoU 0.5), ``adapted_rand_error``,
        ``v_rand``, ``voi_split``, ``voi_merge``, ``iou_foreground``, ``n_pred``, ``n_gt``,
        ``object_f1`` (threshold -> precision, recall, f1, tp, fp, fn) and
        ``average_precision_by_threshold`` (threshold -> AP); the mean has the same keys:
        precision, recall and F1 from the counts pooled over the pairs, ``n_pred`` and ``n_gt``
        summed, every other score averaged over the pairs. ``adapted_rand_error`` and
        ``v_rand`` are None for a reference without objects (undefined: no pair of object
        pixels to count) and left out of the mean.
    """
    _check_options(mode, {"--thresholds": thresholds, "--membrane": membrane,
                          "--channel": channel, "--unassigned": unassigned,
                          "--iou-thresholds": iou_thresholds})
    thresholds = DEFAULT_ISBI_THRESHOLDS if thresholds is None else tuple(thresholds)
    iou_thresholds = DEFAULT_IOU_THRESHOLDS if iou_thresholds is None else tuple(iou_thresholds)
    unassigned = check_choice("--unassigned", "fill" if unassigned is None else unassigned,
                              ("fill", "singletons"))
    if channel is not None and channel < 0:
        raise ConfigError(f"--channel must be 0 or more (channels count from 0), got {channel}")
    if mode == "isbi" and (not len(thresholds) or any(not 0 <= t <= 1 for t in thresholds)):
        raise ConfigError(f"--thresholds must be one or more values in [0, 1], got "
                          f"{list(thresholds)}")
    if mode == "instances" and any(not 0 <= t < 1 for t in iou_thresholds):
        raise ConfigError(f"--iou-thresholds must lie in [0, 1), got {list(iou_thresholds)}")
    if json_path is not None:
        json_path = _check_json_place(json_path)
    pairs = pair_files(pred, gt, names=("prediction", "ground-truth"), one_file_picks=True)
    if json_path is not None:
        _check_json_target(json_path, pairs)
    if mode == "isbi":
        results, mean = _score_isbi(pairs, thresholds, channel, bool(membrane), unassigned)
    else:
        results, mean = _score_instances(pairs, iou_thresholds)
    report = {"mode": mode, "pairs": results, "mean": mean}
    if json_path is not None:
        write_json(json_path, report)
    return report

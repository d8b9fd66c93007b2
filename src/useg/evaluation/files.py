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

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from useg.errors import InputError
from useg.evaluation.isbi import DEFAULT_ISBI_THRESHOLDS, isbi_best, isbi_scores
from useg.evaluation.objects import DEFAULT_IOU_THRESHOLDS, detection_scores, object_scores
from useg.evaluation.pixel import iou
from useg.evaluation.rand import adapted_rand_error, variation_of_information
from useg.io.files import pair_files, write_json
from useg.io.images import read_image, read_labels

__all__ = ["evaluate_folders", "read_probability"]


def read_probability(path: str | os.PathLike, channel: int | None = None) -> np.ndarray:
    """A probability map from an image file, as float64 in [0, 1].

    Integer files are divided by 255 when their values reach at most 255, else by 65535,
    unless they only hold 0 and 1; float files must lie in [0, 1]. A multi-channel file needs
    ``channel``.
    """
    path = Path(path)
    image, _ = read_image(path)
    n = image.shape[0]
    if channel is None:
        if n != 1:
            raise InputError(f"{path}: has {n} channels; choose one with --channel")
        channel = 0
    if not -n <= channel < n:
        raise InputError(f"{path}: has {n} channels, no channel {channel}")
    p = image[channel]
    if p.dtype == bool:
        return p.astype(np.float64)
    if np.issubdtype(p.dtype, np.integer):
        top = int(p.max())
        if p.min() < 0 or top > 65535:
            raise InputError(f"{path}: integer values outside 0..65535 cannot be probabilities")
        scale = 1 if top <= 1 else 255 if top <= 255 else 65535
        return p.astype(np.float64) / scale
    p = p.astype(np.float64)
    if p.min() < 0 or p.max() > 1:
        raise InputError(
            f"{path}: float values in [{p.min():g}, {p.max():g}]; probabilities must lie in [0, 1]"
        )
    return p


def _read_labels(path: Path) -> np.ndarray:
    return read_labels(path)[0]


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
        if np.unique(gt).size > 2:
            raise InputError(
                f"{gt_path}: ground truth has more than two values; --mode isbi needs a binary "
                "map (use --mode instances for label images)"
            )
        scores = isbi_scores(prob, gt, thresholds, membrane=membrane, unassigned=unassigned)
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
        pred = _read_labels(pred_path)
        gt = _read_labels(gt_path)
        _same_shape(pred, gt, pred_path, gt_path)
        scores = _instance_scores(pred, gt, iou_thresholds)
        results.append({"pred": str(pred_path), "gt": str(gt_path), "scores": scores})
    mean: dict = {}
    for key, value in results[0]["scores"].items():
        if isinstance(value, float):
            mean[key] = float(np.mean([r["scores"][key] for r in results]))
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
    are, _, _ = adapted_rand_error(pred, gt, ignore_labels=(0,))
    voi_split, voi_merge = variation_of_information(pred, gt)
    obj = object_scores(pred, gt, iou_thresholds=iou_thresholds)
    return {
        "seg": obj["seg"],
        "average_precision": obj["average_precision"],
        "aji": obj["aji"],
        "mean_matched_iou": obj["mean_matched_iou"],
        "adapted_rand_error": are,
        "v_rand": 1.0 - are,
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


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    *,
    mode: str = "isbi",
    thresholds: Sequence[float] | None = None,
    membrane: bool = False,
    channel: int | None = None,
    unassigned: str = "fill",
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
    membrane : bool
        isbi: ``pred`` is a membrane probability.
    channel : int, optional
        isbi: channel of a multi-channel ``pred`` to score.
    unassigned : {"fill", "singletons"}
        isbi: predicted membrane pixels for V_rand/V_info (see
        :func:`~useg.evaluation.isbi.isbi_scores`).
    iou_thresholds : sequence of float, optional
        instances: IoU thresholds in [0, 1) of the object F1 (default
        :data:`~useg.evaluation.objects.DEFAULT_IOU_THRESHOLDS`).
    json_path : path, optional
        Also write the result there as JSON (its folder must exist).

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
        summed, every other score averaged over the pairs.
    """
    if mode not in ("isbi", "instances"):
        raise InputError(f"mode must be 'isbi' or 'instances', got {mode!r}")
    if json_path is not None and not Path(json_path).parent.is_dir():
        raise InputError(f"{json_path}: the folder {Path(json_path).parent} does not exist")
    thresholds = DEFAULT_ISBI_THRESHOLDS if thresholds is None else tuple(thresholds)
    iou_thresholds = DEFAULT_IOU_THRESHOLDS if iou_thresholds is None else tuple(iou_thresholds)
    pairs = pair_files(pred, gt, names=("prediction", "ground-truth"), one_file_picks=True)
    if mode == "isbi":
        if any(not 0 <= t <= 1 for t in thresholds):
            raise InputError(f"--thresholds must lie in [0, 1], got {list(thresholds)}")
        results, mean = _score_isbi(pairs, thresholds, channel, membrane, unassigned)
    else:
        if any(not 0 <= t < 1 for t in iou_thresholds):
            raise InputError(f"--iou-thresholds must lie in [0, 1), got {list(iou_thresholds)}")
        results, mean = _score_instances(pairs, iou_thresholds)
    report = {"mode": mode, "pairs": results, "mean": mean}
    if json_path is not None:
        write_json(json_path, report)
    return report

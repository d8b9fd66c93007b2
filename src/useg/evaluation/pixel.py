"""Pixel scores: pixel error of binary maps, and per-class overlap (IoU, Dice).

Conventions used throughout
---------------------------
* ``seg`` / ``pred`` is the segmentation under test, ``gt`` the reference (ground truth).
* For the ISBI 2012 style binary maps, *foreground* means **cell interior** (label image value
  255 in the challenge files) and *background* means **membrane** (value 0).
* In label images, each distinct integer value is one segment; for the object-level scores
  (:func:`~useg.evaluation.objects.seg_score`, :func:`~useg.evaluation.objects.object_f1`) the
  value 0 is background and is never an object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from useg.evaluation.contingency import check_pair, contingency_table

__all__ = ["dice", "iou", "pixel_error"]


def pixel_error(pred_binary: np.ndarray, gt_binary: np.ndarray) -> float:
    """Fraction of pixels where two binary maps differ.

    ``pixel_error = #{x : pred(x) != gt(x)} / N``, with every nonzero value read as True.
    This is the ISBI 2012 "pixel error" (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015)
    for one binarisation threshold.

    Parameters
    ----------
    pred_binary, gt_binary : ndarray
        Binary maps of the same shape (any dimensionality).

    Returns
    -------
    float
        Value in [0, 1]; 0 when the maps are identical.

    Examples
    --------
    >>> pixel_error(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    0.25
    """
    pred, gt = check_pair(pred_binary, gt_binary, "pred_binary", "gt_binary")
    return float(np.count_nonzero(pred.astype(bool) != gt.astype(bool)) / pred.size)


def _class_overlaps(pred, gt, labels) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = check_pair(pred, gt, "pred", "gt")
    if pred.dtype == bool:
        pred = pred.astype(np.uint8)
    if gt.dtype == bool:
        gt = gt.astype(np.uint8)
    t = contingency_table(gt, pred)
    if labels is None:
        # As Python ints: NumPy would unite uint64 and int64 ids in float64, rounding ids
        # beyond 2**53 into ones that match nothing.
        labels = sorted(set(t.row_labels.tolist()) | set(t.col_labels.tolist()))
    else:
        labels = [lab.item() if isinstance(lab, np.generic) else lab for lab in labels]
    # Per label: pixels in gt, pixels in pred, pixels in both.
    in_gt = dict(zip(t.row_labels.tolist(), t.row_sizes.tolist(), strict=True))
    in_pred = dict(zip(t.col_labels.tolist(), t.col_sizes.tolist(), strict=True))
    diag = t.row_labels[t.rows] == t.col_labels[t.cols]
    in_both = dict(zip(t.row_labels[t.rows[diag]].tolist(), t.counts[diag].tolist(), strict=True))
    a = np.array([in_gt.get(lab, 0.0) for lab in labels])
    b = np.array([in_pred.get(lab, 0.0) for lab in labels])
    both = np.array([in_both.get(lab, 0.0) for lab in labels])
    return labels, a, b, both


def iou(pred: np.ndarray, gt: np.ndarray, labels: Sequence | None = None) -> dict:
    """Intersection over union (Jaccard index) per class.

    ``IoU_c = |{pred = c} & {gt = c}| / |{pred = c} | {gt = c}|``. A class absent from both
    images has an empty union; it scores 1.0 (the two agree that it is absent) so that the
    result never contains NaN. Such classes only appear when ``labels`` names them.

    Parameters
    ----------
    pred, gt : ndarray
        Class maps of the same shape (bool maps are read as classes 0 and 1).
    labels : sequence, optional
        Classes to score; default: every value present in either image.

    Returns
    -------
    dict
        Class value -> IoU in [0, 1].

    Examples
    --------
    >>> iou(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), labels=[0, 1, 2])
    {0: 0.6666666666666666, 1: 0.5, 2: 1.0}
    """
    labels, a, b, both = _class_overlaps(pred, gt, labels)
    union = a + b - both
    values = np.divide(both, union, out=np.ones_like(union), where=union > 0)
    return {lab: float(v) for lab, v in zip(labels, values, strict=True)}


def dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence | None = None) -> dict:
    """Dice coefficient (F1 of pixels) per class.

    ``Dice_c = 2 |{pred = c} & {gt = c}| / (|{pred = c}| + |{gt = c}|)``. A class absent from
    both images scores 1.0, so the result never contains NaN (see :func:`iou`).

    Parameters
    ----------
    pred, gt : ndarray
        Class maps of the same shape (bool maps are read as classes 0 and 1).
    labels : sequence, optional
        Classes to score; default: every value present in either image.

    Returns
    -------
    dict
        Class value -> Dice in [0, 1].

    Examples
    --------
    >>> dice(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    {0: 0.8, 1: 0.6666666666666666}
    """
    labels, a, b, both = _class_overlaps(pred, gt, labels)
    total = a + b
    values = np.divide(2.0 * both, total, out=np.ones_like(total), where=total > 0)
    return {lab: float(v) for lab, v in zip(labels, values, strict=True)}

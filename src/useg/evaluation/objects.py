"""Object-level scores of instance segmentations: the Cell Tracking Challenge's SEG score and
object precision, recall and F1 over IoU thresholds (with optimal matching).

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
from typing import NamedTuple

import numpy as np

from useg.errors import InputError
from useg.evaluation.contingency import check_pair, contingency_table

__all__ = ["DEFAULT_IOU_THRESHOLDS", "detection_scores", "object_f1", "seg_score"]

#: IoU thresholds of :func:`object_f1` unless told otherwise.
DEFAULT_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class _Objects(NamedTuple):
    gt_index: np.ndarray  # row index of each overlapping (gt object, pred object) pair
    pred_index: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    gt_sizes: np.ndarray  # size of each gt object (rows with label != 0)
    n_gt: int
    n_pred: int


def _object_overlaps(pred, gt) -> _Objects:
    pred, gt = check_pair(pred, gt, "pred_instances", "gt_instances")
    for name, arr in (("pred_instances", pred), ("gt_instances", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise InputError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    t = contingency_table(gt, pred)
    gt_obj = t.row_labels != 0
    pred_obj = t.col_labels != 0
    # Renumber objects 0..n-1 without the background label.
    gt_id = np.cumsum(gt_obj) - 1
    pred_id = np.cumsum(pred_obj) - 1
    sel = gt_obj[t.rows] & pred_obj[t.cols]
    rows, cols, inter = t.rows[sel], t.cols[sel], t.counts[sel]
    union = t.row_sizes[rows] + t.col_sizes[cols] - inter
    return _Objects(
        gt_index=gt_id[rows],
        pred_index=pred_id[cols],
        inter=inter,
        union=union,
        gt_sizes=t.row_sizes[gt_obj],
        n_gt=int(gt_obj.sum()),
        n_pred=int(pred_obj.sum()),
    )


def seg_score(pred_instances: np.ndarray, gt_instances: np.ndarray) -> float:
    """SEG score of the Cell Tracking Challenge.

    Each reference object R is matched to the predicted object S covering more than half of it,
    ``|R & S| > 0.5 |R|`` (at most one S can); its score is the Jaccard index
    ``|R & S| / |R | S|``, or 0 without such an S. SEG is the mean over reference objects
    (Ulman et al., "An objective comparison of cell-tracking algorithms", Nat. Methods 14:1141,
    2017; Maska et al., Bioinformatics 30:1609, 2014). Label 0 is background in both images;
    false positive objects do not lower the score. Without reference objects the score is 1.0
    if the prediction has no objects either, else 0.0 (the challenge leaves this undefined).

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).

    Returns
    -------
    float
        Value in [0, 1].

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 5, 0, 0, 0, 6]])
    >>> seg_score(pred, gt)  # object 1: J = 3/4; object 2: 6 covers only half of it -> 0
    0.375
    """
    o = _object_overlaps(pred_instances, gt_instances)
    if o.n_gt == 0:
        return 1.0 if o.n_pred == 0 else 0.0
    best = np.zeros(o.n_gt)
    hit = 2.0 * o.inter > o.gt_sizes[o.gt_index]
    best[o.gt_index[hit]] = o.inter[hit] / o.union[hit]
    return float(best.mean())


def _match_count(o: _Objects, threshold: float) -> int:
    ok = o.inter / o.union > threshold
    gi, pi, w = o.gt_index[ok], o.pred_index[ok], (o.inter / o.union)[ok]
    if gi.size == 0:
        return 0
    if threshold >= 0.5:
        # IoU > 0.5 with two disjoint partners is impossible, so these pairs form a matching.
        return int(gi.size)
    # Optimal matching, solved per connected component of the candidate graph: maximise the
    # number of matches first, then the summed IoU. (Imported here: scipy.optimize is slow to load.)
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ug, gi = np.unique(gi, return_inverse=True)
    up, pi = np.unique(pi, return_inverse=True)
    n_g, n_p = ug.size, up.size
    graph = coo_matrix((np.ones(gi.size), (gi, n_g + pi)), shape=(n_g + n_p, n_g + n_p))
    _, comp = connected_components(graph, directed=False)
    total = 0
    for c in np.unique(comp[gi]):
        e = comp[gi] == c
        rows, r_inv = np.unique(gi[e], return_inverse=True)
        cols, c_inv = np.unique(pi[e], return_inverse=True)
        if rows.size == 1 or cols.size == 1:
            total += 1
            continue
        weight = np.zeros((rows.size, cols.size))
        weight[r_inv, c_inv] = min(rows.size, cols.size) + 1.0 + w[e]
        r, c_ = linear_sum_assignment(weight, maximize=True)
        total += int(np.count_nonzero(weight[r, c_] > 0))
    return total


def object_f1(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict:
    """Object detection precision, recall and F1 at several IoU thresholds.

    A predicted object and a reference object match when their IoU is strictly greater than
    the threshold; each object is matched at most once. For thresholds >= 0.5 such pairs are
    unique (two disjoint objects cannot both overlap a third by IoU > 0.5); below 0.5 the largest
    matching (ties broken by summed IoU) is found with ``scipy.optimize.linear_sum_assignment``.
    With ``tp`` matches, ``fp`` unmatched predictions and ``fn`` unmatched references::

        precision = tp / (tp + fp),  recall = tp / (tp + fn),  f1 = 2 tp / (2 tp + fp + fn)

    An empty denominator gives 0.0, except that two images without objects score 1.0 throughout.
    Label 0 is background in both images.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape.
    thresholds : sequence of float
        IoU thresholds in [0, 1).

    Returns
    -------
    dict
        Threshold (float) -> ``{"precision", "recall", "f1": float, "tp", "fp", "fn": int}``.

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 2, 2, 0, 3]])
    >>> pred = np.array([[4, 4, 0, 5, 0, 0, 0]])
    >>> object_f1(pred, gt, thresholds=(0.4,))[0.4]["f1"]  # objects 1 and 2 found, 3 missed
    0.8
    """
    o = _object_overlaps(pred_instances, gt_instances)
    out = {}
    for t in thresholds:
        t = float(t)
        if not 0.0 <= t < 1.0:
            raise InputError(f"IoU thresholds must lie in [0, 1), got {t}")
        tp = _match_count(o, t)
        out[t] = detection_scores(tp, o.n_pred - tp, o.n_gt - tp)
    return out


def detection_scores(tp: int, fp: int, fn: int) -> dict:
    """Precision, recall and F1 of ``tp`` matches, ``fp`` unmatched predictions and ``fn``
    unmatched references, with the counts (see :func:`object_f1`).

    Examples
    --------
    >>> detection_scores(2, 0, 1)["f1"], detection_scores(0, 0, 0)["f1"]
    (0.8, 1.0)
    """
    if tp + fp + fn == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1),
            "tp": int(tp), "fp": int(fp), "fn": int(fn)}

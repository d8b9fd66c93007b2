"""Object-level scores of instance segmentations: the Cell Tracking Challenge's SEG score,
object precision, recall and F1 over IoU thresholds (with optimal matching), the average
precision of the Data Science Bowl 2018, the aggregated Jaccard index and the mean IoU of
matched objects.

Conventions used throughout
---------------------------
* ``seg`` / ``pred`` is the segmentation under test, ``gt`` the reference (ground truth).
* For the ISBI 2012 style binary maps, *foreground* means **cell interior** (label image value
  255 in the challenge files) and *background* means **membrane** (value 0).
* In label images, each distinct integer value is one segment; for the object-level scores
  (:func:`~useg.evaluation.objects.seg_score`, :func:`~useg.evaluation.objects.object_f1`,
  :func:`~useg.evaluation.objects.average_precision`,
  :func:`~useg.evaluation.objects.aggregated_jaccard_index`,
  :func:`~useg.evaluation.objects.mean_matched_iou`) the value 0 is background and is never
  an object. Label values need not be consecutive; any integer type works, in any dimension.
* Every score is computed from one sparse table of the overlapping (reference, prediction)
  pairs (built with :func:`numpy.unique`, O(N log N) in the pixels), so its cost grows with the
  number of overlapping pairs, not with the square of the number of objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from useg.errors import InputError
from useg.evaluation.contingency import check_pair, contingency_table

__all__ = [
    "AP_IOU_THRESHOLDS",
    "DEFAULT_IOU_THRESHOLDS",
    "aggregated_jaccard_index",
    "average_precision",
    "detection_scores",
    "mean_matched_iou",
    "object_f1",
    "object_scores",
    "seg_score",
]

#: IoU thresholds of :func:`object_f1` unless told otherwise.
DEFAULT_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

#: IoU thresholds of :func:`average_precision` unless told otherwise: 0.5, 0.55, ..., 0.95
#: (``np.arange(0.5, 1.0, 0.05)``, rounded to two decimals), as in the Data Science Bowl 2018.
AP_IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.5, 1.0, 0.05), 2))


class _Objects(NamedTuple):
    gt_index: np.ndarray  # gt object (0..n_gt-1) of each overlapping (gt, pred) pair
    pred_index: np.ndarray  # pred object (0..n_pred-1) of each pair
    inter: np.ndarray  # pixels in both, float64
    union: np.ndarray  # pixels in either, float64
    gt_sizes: np.ndarray  # size of each gt object, in the order of the sorted labels
    pred_sizes: np.ndarray  # size of each pred object, likewise
    n_gt: int
    n_pred: int
    pred: np.ndarray  # the checked prediction (for the raster-order tie rule of the AJI)


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
        pred_sizes=t.col_sizes[pred_obj],
        n_gt=int(gt_obj.sum()),
        n_pred=int(pred_obj.sum()),
        pred=pred,
    )


def _check_thresholds(thresholds) -> np.ndarray:
    ts = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        raise InputError("at least one IoU threshold is needed")
    bad = ts[~((ts >= 0.0) & (ts < 1.0))]
    if bad.size:
        raise InputError(f"IoU thresholds must lie in [0, 1), got {float(bad[0])}")
    return ts


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
    return _seg(_object_overlaps(pred_instances, gt_instances))


def _seg(o: _Objects) -> float:
    if o.n_gt == 0:
        return 1.0 if o.n_pred == 0 else 0.0
    best = np.zeros(o.n_gt)
    hit = 2.0 * o.inter > o.gt_sizes[o.gt_index]
    best[o.gt_index[hit]] = o.inter[hit] / o.union[hit]
    return float(best.mean())


def _matching(o: _Objects, threshold: float) -> np.ndarray:
    """Entries of the overlap table that form the largest one-to-one matching of the pairs with
    IoU > ``threshold`` (among those, one of largest summed IoU), in table order."""
    iou = o.inter / o.union
    cand = np.flatnonzero(iou > threshold)
    if threshold >= 0.5 or cand.size < 2:
        # IoU > 0.5 with two disjoint partners is impossible, so these pairs form a matching.
        return cand
    # Below 0.5 an object can have several candidates. The candidate graph falls apart into
    # connected components. A component with one reference or one prediction (a star: by far
    # the most common) keeps its pair of highest IoU, for all stars at once; only components in
    # which two or more references compete with two or more predictions are solved one at a
    # time with linear_sum_assignment (the one loop over objects, over these components only).
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ug, gi = np.unique(o.gt_index[cand], return_inverse=True)
    up, pi = np.unique(o.pred_index[cand], return_inverse=True)
    n_g, n_p = ug.size, up.size
    graph = coo_matrix((np.ones(cand.size), (gi, n_g + pi)), shape=(n_g + n_p, n_g + n_p))
    n_comp, node_comp = connected_components(graph, directed=False)
    comp = node_comp[gi]
    star = (np.bincount(node_comp[:n_g], minlength=n_comp) == 1) | (
        np.bincount(node_comp[n_g:], minlength=n_comp) == 1
    )
    w = iou[cand]
    e = np.flatnonzero(star[comp])
    e = e[np.lexsort((-w[e], comp[e]))]
    head = np.ones(e.size, dtype=bool)
    head[1:] = comp[e][1:] != comp[e][:-1]
    kept = [cand[e[head]]]
    rest = np.flatnonzero(~star[comp])
    if rest.size:
        # (Imported here: scipy.optimize is slow to load.)
        from scipy.optimize import linear_sum_assignment

        rest = rest[np.argsort(comp[rest], kind="stable")]
        bounds = np.flatnonzero(np.r_[True, comp[rest][1:] != comp[rest][:-1], True])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            e = rest[a:b]
            _, r_inv = np.unique(gi[e], return_inverse=True)
            _, c_inv = np.unique(pi[e], return_inverse=True)
            shape = (r_inv.max() + 1, c_inv.max() + 1)
            # Each match weighs more than any sum of IoUs of a matching: most matches first.
            weight = np.zeros(shape)
            weight[r_inv, c_inv] = min(shape) + 1.0 + w[e]
            entry = np.zeros(shape, dtype=np.int64)
            entry[r_inv, c_inv] = cand[e]
            r, c = linear_sum_assignment(weight, maximize=True)
            ok = weight[r, c] > 0
            kept.append(entry[r[ok], c[ok]])
    return np.sort(np.concatenate(kept))


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
    return _f1(_object_overlaps(pred_instances, gt_instances), _check_thresholds(thresholds))


def _f1(o: _Objects, thresholds: np.ndarray) -> dict:
    out = {}
    for t in thresholds.tolist():
        tp = _matching(o, t).size
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


def average_precision(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    thresholds: Sequence[float] = AP_IOU_THRESHOLDS,
) -> tuple[float, np.ndarray]:
    """Average precision of the Data Science Bowl 2018: the mean over IoU thresholds of
    ``TP / (TP + FP + FN)``.

    At a threshold t, a predicted and a reference object match when their IoU is strictly
    greater than t, each object at most once. For t >= 0.5 the matching is unique, with nothing
    to choose: were a prediction P at IoU > 0.5 with two reference objects R1 and R2, then
    ``|P & Ri| > |P | Ri| / 2 >= |P| / 2`` for both, so ``|P & R1| + |P & R2| > |P|``, which
    disjoint R1 and R2 forbid (likewise with the roles swapped); the pairs above the threshold
    are the matches. Below 0.5 the largest matching is taken, as in :func:`object_f1`. With TP
    matches, FP unmatched predictions and FN unmatched reference objects at threshold t::

        AP(t) = TP(t) / (TP(t) + FP(t) + FN(t)),      AP = (1 / |T|) sum_{t in T} AP(t)

    (the challenge's name: this is not the area under a precision-recall curve). Two images
    without objects score 1 at every threshold; when only one of them has objects, 0. Label 0
    is background in both images.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).
    thresholds : sequence of float
        The IoU thresholds T, in [0, 1); by default 0.5, 0.55, ..., 0.95
        (:data:`AP_IOU_THRESHOLDS`).

    Returns
    -------
    ap : float
        The mean over the thresholds, in [0, 1].
    per_threshold : ndarray of float64
        ``AP(t)`` for each threshold, in the order given.

    References
    ----------
    Caicedo, J. C. et al., "Nucleus segmentation across imaging experiments: the 2018 Data
    Science Bowl", Nature Methods 16:1247-1253, 2019.

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[7, 7, 7, 0, 0, 9, 9]])  # IoUs 3/4 and 1
    >>> ap, per_t = average_precision(pred, gt, thresholds=(0.5, 0.8))
    >>> round(ap, 4), per_t.round(4).tolist()  # at 0.8: TP 1, FP 1, FN 1
    (0.6667, [1.0, 0.3333])
    """
    o = _object_overlaps(pred_instances, gt_instances)
    per_t = _ap(o, _check_thresholds(thresholds))
    return float(per_t.mean()), per_t


def _ap(o: _Objects, thresholds: np.ndarray) -> np.ndarray:
    if o.n_gt + o.n_pred == 0:
        return np.ones(thresholds.size)
    tp = np.array([_matching(o, t).size for t in thresholds.tolist()], dtype=np.float64)
    # TP + FP + FN = TP + (n_pred - TP) + (n_gt - TP)
    return tp / (o.n_pred + o.n_gt - tp)


def aggregated_jaccard_index(pred_instances: np.ndarray, gt_instances: np.ndarray) -> float:
    """Aggregated Jaccard index (AJI) of Kumar et al.

    Each reference object G_i is paired with the predicted object S_j(i) of highest IoU, and ::

        AJI = sum_i |G_i & S_j(i)| / (sum_i |G_i | S_j(i)| + sum_{k in U} |S_k|)

    where U holds the predicted objects paired with no reference object. A prediction can be
    the partner of several reference objects and then counts in each pair, so merged objects
    are penalised, and every unused prediction enlarges the denominator, so false positives
    are too. A reference object that overlaps no prediction (IoU 0 with all, where the
    original's choice is arbitrary) pairs with nothing and adds its own area to the
    denominator. When several predictions share the highest IoU, the one whose first pixel
    comes first in raster (C) order is taken, so that the score does not depend on the label
    values. Two images without objects score 1; when only one of them has objects, 0. Label 0
    is background in both images.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).

    Returns
    -------
    float
        Value in [0, 1].

    References
    ----------
    Kumar, N. et al., "A dataset and a technique for generalized nuclear segmentation for
    computational pathology", IEEE Transactions on Medical Imaging 36(7):1550-1560, 2017.

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 0]])
    >>> pred = np.array([[5, 5, 5, 0, 0, 0, 0, 0, 6]])
    >>> aggregated_jaccard_index(pred, gt)  # 3 / (4 + 2 (object 2 alone) + 1 (6 unused))
    0.42857142857142855
    """
    return _aji(_object_overlaps(pred_instances, gt_instances))


def _aji(o: _Objects) -> float:
    if o.n_gt + o.n_pred == 0:
        return 1.0
    iou = o.inter / o.union
    order = np.lexsort((-iou, o.gt_index))
    g, v = o.gt_index[order], iou[order]
    head = np.ones(order.size, dtype=bool)  # the first (best) entry of each reference object
    head[1:] = g[1:] != g[:-1]
    if np.any(head[:-1] & ~head[1:] & (v[1:] == v[:-1])):
        # A tie for the best: break it by the first pixel of each prediction in raster order
        # (one more sort of the pixels, so only when needed).
        labels, first = np.unique(o.pred.reshape(-1), return_index=True)
        first = first[labels != 0]
        order = np.lexsort((first[o.pred_index], -iou, o.gt_index))
    best = order[head]
    inter = o.inter[best].sum()
    union = o.union[best].sum()
    alone = np.ones(o.n_gt, dtype=bool)
    alone[o.gt_index] = False
    unused = np.ones(o.n_pred, dtype=bool)
    unused[o.pred_index[best]] = False
    union += o.gt_sizes[alone].sum() + o.pred_sizes[unused].sum()
    return float(inter / union)


def mean_matched_iou(
    pred_instances: np.ndarray, gt_instances: np.ndarray, threshold: float = 0.5
) -> float:
    """Mean IoU of the matched objects.

    Objects are matched one-to-one at IoU > ``threshold`` as in :func:`object_f1` (at 0.5 and
    above the matches are unique, see :func:`average_precision`). With M the matched pairs::

        mean matched IoU = (1 / |M|) sum_{(R, S) in M} |R & S| / |R | S|

    It says how well the found objects are outlined, whatever their number (that is
    :func:`object_f1`); at threshold 0.5 it is the segmentation quality (SQ) of the panoptic
    quality PQ = SQ x F1 (Kirillov et al.). Two images without objects score 1; without a
    matched pair otherwise, 0. Label 0 is background in both images.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).
    threshold : float
        IoU threshold of the matching, in [0, 1).

    Returns
    -------
    float
        Value in [0, 1] (above ``threshold`` when a pair matched).

    References
    ----------
    Kirillov, A., He, K., Girshick, R., Rother, C. and Dollar, P., "Panoptic segmentation",
    CVPR 2019, pp. 9404-9413.

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 3]])
    >>> pred = np.array([[7, 7, 7, 0, 0, 9, 9, 0, 0]])  # IoUs 3/4 and 1; object 3 missed
    >>> mean_matched_iou(pred, gt)
    0.875
    """
    o = _object_overlaps(pred_instances, gt_instances)
    return _mean_iou(o, float(_check_thresholds([threshold])[0]))


def _mean_iou(o: _Objects, threshold: float) -> float:
    if o.n_gt + o.n_pred == 0:
        return 1.0
    m = _matching(o, threshold)
    if m.size == 0:
        return 0.0
    return float(np.mean(o.inter[m] / o.union[m]))


def object_scores(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    ap_thresholds: Sequence[float] = AP_IOU_THRESHOLDS,
    match_threshold: float = 0.5,
) -> dict:
    """All object scores of this module from one overlap table (what ``useg evaluate --mode
    instances`` reports): each equals its own function's, for the cost of one.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).
    iou_thresholds : sequence of float
        Thresholds of :func:`object_f1`.
    ap_thresholds : sequence of float
        Thresholds of :func:`average_precision`.
    match_threshold : float
        Threshold of :func:`mean_matched_iou`.

    Returns
    -------
    dict
        ``"seg"`` (:func:`seg_score`), ``"object_f1"`` (:func:`object_f1`: threshold ->
        scores and counts), ``"average_precision"`` (the mean of :func:`average_precision`),
        ``"average_precision_by_threshold"`` (threshold -> ``AP(t)``), ``"aji"``
        (:func:`aggregated_jaccard_index`), ``"mean_matched_iou"`` (:func:`mean_matched_iou`),
        ``"n_pred"``, ``"n_gt"`` (the numbers of objects).

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> s = object_scores(np.array([[7, 7, 7, 0, 0, 9, 9]]), gt, ap_thresholds=(0.5, 0.8))
    >>> s["average_precision_by_threshold"][0.5], s["aji"], s["n_pred"]
    (1.0, 0.8333333333333334, 2)
    """
    o = _object_overlaps(pred_instances, gt_instances)
    f1_t = _check_thresholds(iou_thresholds)
    ap_t = _check_thresholds(ap_thresholds)
    match_t = float(_check_thresholds([match_threshold])[0])
    ap = _ap(o, ap_t)
    return {
        "seg": _seg(o),
        "object_f1": _f1(o, f1_t),
        "average_precision": float(ap.mean()),
        "average_precision_by_threshold": dict(zip(ap_t.tolist(), ap.tolist(), strict=True)),
        "aji": _aji(o),
        "mean_matched_iou": _mean_iou(o, match_t),
        "n_pred": o.n_pred,
        "n_gt": o.n_gt,
    }

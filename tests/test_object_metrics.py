"""Object metrics of label images (useg.evaluation.objects): average precision (DSB 2018),
aggregated Jaccard index, mean matched IoU, and SEG / object F1 through ``object_scores``.

Every score is checked against a brute-force version written here with explicit loops over
object pairs (masks compared pixel by pixel, matchings found by exhaustive search) on random
2D and 3D label images from hypothesis, on hand-computed cases, and for invariance under
permutations of the label values.
"""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from useg.errors import InputError
from useg.evaluation.objects import (
    AP_IOU_THRESHOLDS,
    aggregated_jaccard_index,
    average_precision,
    mean_matched_iou,
    object_f1,
    object_scores,
    seg_score,
)

LOW_THRESHOLDS = (0.0, 0.15, 0.3, 0.45)  # below 0.5 a matching has to be chosen
F1_THRESHOLDS = (0.0, 0.25, 0.5, 0.75)

# ------------------------------------------------------------------ brute force


def brute_pairs(pred, gt):
    """Objects of each image and (gt id, pred id) -> (intersection, union) of every pair."""
    gts = [g for g in np.unique(gt).tolist() if g != 0]
    preds = [p for p in np.unique(pred).tolist() if p != 0]
    table = {}
    for g in gts:
        a = gt == g
        for p in preds:
            b = pred == p
            table[g, p] = (int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b)))
    return gts, preds, table


def brute_matching(gts, preds, table, t):
    """(number of matches, summed IoU) of the best one-to-one matching of pairs with IoU > t:
    most matches, then largest IoU sum, by trying every matching."""
    edges = {g: [(p, i / u) for p in preds for i, u in [table[g, p]] if i / u > t] for g in gts}
    best = (0, 0.0)

    def search(k, used, count, total):
        nonlocal best
        if count + len(gts) - k < best[0]:  # cannot reach the most matches found so far
            return
        if k == len(gts):
            best = max(best, (count, total))
            return
        search(k + 1, used, count, total)
        for p, v in edges[gts[k]]:
            if p not in used:
                search(k + 1, used | {p}, count + 1, total + v)

    search(0, frozenset(), 0, 0.0)
    return best


def brute_ap(pred, gt, thresholds):
    gts, preds, table = brute_pairs(pred, gt)
    out = []
    for t in thresholds:
        if not gts and not preds:
            out.append(1.0)
            continue
        tp, _ = brute_matching(gts, preds, table, t)
        fp, fn = len(preds) - tp, len(gts) - tp
        out.append(tp / (tp + fp + fn))
    return out


def brute_aji(pred, gt):
    gts, preds, table = brute_pairs(pred, gt)
    if not gts and not preds:
        return 1.0
    flat = pred.reshape(-1)
    first = {p: int(np.flatnonzero(flat == p)[0]) for p in preds}
    inter = union = 0
    used = set()
    for g in gts:
        best = None
        for p in preds:
            i, u = table[g, p]
            if i == 0:
                continue
            key = (i / u, -first[p])  # highest IoU, then first in raster order
            if best is None or key > best[0]:
                best = (key, p)
        if best is None:
            union += int(np.count_nonzero(gt == g))
        else:
            i, u = table[g, best[1]]
            inter += i
            union += u
            used.add(best[1])
    for p in preds:
        if p not in used:
            union += int(np.count_nonzero(pred == p))
    return inter / union


def brute_mean_iou(pred, gt, t):
    gts, preds, table = brute_pairs(pred, gt)
    if not gts and not preds:
        return 1.0
    count, total = brute_matching(gts, preds, table, t)
    return total / count if count else 0.0


def brute_seg(pred, gt):
    gts, preds, table = brute_pairs(pred, gt)
    if not gts:
        return 1.0 if not preds else 0.0
    scores = []
    for g in gts:
        size = int(np.count_nonzero(gt == g))
        scores.append(max([i / u for p in preds for i, u in [table[g, p]] if i > size / 2],
                          default=0.0))
    return sum(scores) / len(scores)


def brute_f1_counts(pred, gt, t):
    gts, preds, table = brute_pairs(pred, gt)
    tp, _ = brute_matching(gts, preds, table, t)
    return tp, len(preds) - tp, len(gts) - tp


# ------------------------------------------------------------------ random label images

DTYPES = (np.uint16, np.uint32, np.int64)


def relabel(img, ids, dtype):
    """``img`` with its nonzero labels (sorted) replaced by ``ids``, as ``dtype``."""
    out = np.zeros(img.shape, dtype)
    for old, new in zip([v for v in np.unique(img).tolist() if v != 0], ids, strict=False):
        out[img == old] = new
    return out


def grid_labels(shape, step, offset, keep):
    """A grid of equal boxes (``step`` pixels, shifted by ``offset``), each labelled, and only
    the boxes for which ``keep(box ids)`` is true kept: equal overlaps, so ties in IoU."""
    cells = [(ix + o) // k for ix, k, o in zip(np.indices(shape), step, offset, strict=True)]
    ids = np.ravel_multi_index(cells, [c.max() + 1 for c in cells]) + 1
    return np.where(keep(ids), ids, 0).astype(np.int64)


def ids_for(n, dtype):
    top = min(int(np.iinfo(dtype).max), 2**62)
    return st.lists(st.integers(1, top), min_size=n, max_size=n, unique=True)


@st.composite
def label_pairs(draw):
    """(pred, gt): small 2D or 3D label images of boxes, smooth blobs or grids of equal boxes,
    pred independent or a shifted, partly repainted copy of gt, both with random
    non-consecutive ids."""
    ndim = draw(st.sampled_from((2, 3)))
    top = 10 if ndim == 2 else 5
    shape = tuple(draw(st.lists(st.integers(1, top), min_size=ndim, max_size=ndim)))

    def paint(img, n_boxes, n_ids):
        for _ in range(n_boxes):
            lo = [draw(st.integers(0, s - 1)) for s in shape]
            size = [draw(st.integers(1, s // 2 + 1)) for s in shape]
            box = tuple(slice(a, a + z) for a, z in zip(lo, size, strict=True))
            img[box] = draw(st.integers(0, n_ids))  # 0 erases; an id may paint two boxes
        return img

    def blobs():
        kind = draw(st.sampled_from(("boxes", "smooth", "grid")))
        if kind == "boxes":
            return paint(np.zeros(shape, np.int64), draw(st.integers(0, 6)), 6)
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if kind == "smooth":
            field = ndi.gaussian_filter(rng.random(shape), 1.0)
            return ndi.label(field > np.quantile(field, 0.5))[0].astype(np.int64)
        # At most 6 boxes kept, so that the exhaustive matching stays small.
        step = [draw(st.integers(1, 3)) for _ in shape]
        offset = [draw(st.integers(0, 2)) for _ in shape]
        n_kept = draw(st.integers(0, 6))
        return grid_labels(shape, step, offset,
                           lambda ids: np.isin(ids, rng.permutation(np.unique(ids))[:n_kept]))

    gt = blobs()
    if draw(st.booleans()):
        pred = blobs()
    else:
        axis = draw(st.integers(0, ndim - 1))
        pred = np.roll(gt, draw(st.integers(-2, 2)), axis=axis)
        pred = paint(pred, draw(st.integers(0, 2)), int(gt.max()) + 2)
    dtype = draw(st.sampled_from(DTYPES))
    gt = relabel(gt, draw(ids_for(np.unique(gt[gt > 0]).size, dtype)), dtype)
    pred = relabel(pred, draw(ids_for(np.unique(pred[pred > 0]).size, dtype)), dtype)
    return pred, gt


def all_scores(pred, gt):
    return object_scores(pred, gt, iou_thresholds=F1_THRESHOLDS)


# ------------------------------------------------------------------ against brute force


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs())
def test_scores_match_brute_force(pair):
    pred, gt = pair
    ap, per_t = average_precision(pred, gt)
    assert per_t.tolist() == pytest.approx(brute_ap(pred, gt, AP_IOU_THRESHOLDS), abs=1e-12)
    assert ap == pytest.approx(np.mean(brute_ap(pred, gt, AP_IOU_THRESHOLDS)), abs=1e-12)
    _, low = average_precision(pred, gt, thresholds=LOW_THRESHOLDS)
    assert low.tolist() == pytest.approx(brute_ap(pred, gt, LOW_THRESHOLDS), abs=1e-12)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(brute_aji(pred, gt), abs=1e-12)
    for t in (0.5, 0.2, 0.0):
        got = mean_matched_iou(pred, gt, threshold=t)
        assert got == pytest.approx(brute_mean_iou(pred, gt, t), abs=1e-12)
    assert seg_score(pred, gt) == pytest.approx(brute_seg(pred, gt), abs=1e-12)
    f1 = object_f1(pred, gt, thresholds=F1_THRESHOLDS)
    for t in F1_THRESHOLDS:
        assert (f1[t]["tp"], f1[t]["fp"], f1[t]["fn"]) == brute_f1_counts(pred, gt, t)
    # object_scores: one table, the same numbers as the functions one by one.
    s = all_scores(pred, gt)
    assert s["average_precision"] == ap
    assert list(s["average_precision_by_threshold"].values()) == per_t.tolist()
    assert list(s["average_precision_by_threshold"]) == list(AP_IOU_THRESHOLDS)
    assert s["aji"] == aggregated_jaccard_index(pred, gt)
    assert s["mean_matched_iou"] == mean_matched_iou(pred, gt)
    assert s["seg"] == seg_score(pred, gt)
    assert s["object_f1"] == f1
    assert (s["n_pred"], s["n_gt"]) == (np.unique(pred[pred != 0]).size,
                                        np.unique(gt[gt != 0]).size)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_pairs(), st.data())
def test_permuting_ids_changes_no_score(pair, data):
    pred, gt = pair
    before = all_scores(pred, gt)
    before_low = average_precision(pred, gt, thresholds=LOW_THRESHOLDS)[1]
    before_miou = mean_matched_iou(pred, gt, threshold=0.2)
    dtype = data.draw(st.sampled_from(DTYPES))
    pred = relabel(pred, data.draw(ids_for(np.unique(pred[pred != 0]).size, dtype)), dtype)
    gt = relabel(gt, data.draw(ids_for(np.unique(gt[gt != 0]).size, dtype)), dtype)
    after = all_scores(pred, gt)
    assert after["object_f1"] == before["object_f1"]
    assert (after["n_pred"], after["n_gt"]) == (before["n_pred"], before["n_gt"])
    for key in ("average_precision", "aji", "mean_matched_iou", "seg"):
        assert after[key] == pytest.approx(before[key], rel=1e-12, abs=1e-15), key
    assert after["average_precision_by_threshold"] == before["average_precision_by_threshold"]
    assert average_precision(pred, gt, thresholds=LOW_THRESHOLDS)[1].tolist() == \
        before_low.tolist()
    assert mean_matched_iou(pred, gt, threshold=0.2) == pytest.approx(before_miou, rel=1e-12)


@st.composite
def grid_pairs(draw):
    """(pred, gt): two grids of equal boxes of up to ~100 objects each, many IoUs tied."""
    ndim = draw(st.sampled_from((2, 3)))
    shape = tuple(draw(st.lists(st.integers(2, 14 if ndim == 2 else 6), min_size=ndim,
                                max_size=ndim)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def grid():  # boxes of 2 and 3 pixels a side, some left out: ties that matter
        step = [draw(st.sampled_from((2, 3))) for _ in shape]
        offset = [draw(st.integers(0, 2)) for _ in shape]
        frac = draw(st.sampled_from((0.6, 0.8)))
        return grid_labels(shape, step, offset, lambda ids: rng.random(ids.max() + 1)[ids] < frac)

    return grid(), grid()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid_pairs(), st.data())
def test_aji_ties_on_grids_match_brute_force_and_ignore_ids(pair, data):
    pred, gt = pair
    expected = brute_aji(pred, gt)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(expected, abs=1e-12)
    ids = np.unique(pred[pred != 0])
    # The ids of a grid grow in raster order: reversed, then random.
    for new in (ids[::-1].tolist(), data.draw(ids_for(ids.size, np.int64))):
        relabelled = relabel(pred, new, np.int64)
        assert aggregated_jaccard_index(relabelled, gt) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ hand-computed cases


def two_squares():
    """gt: two 10 x 10 squares; pred: the first shifted right by 2 (IoU 80/120 = 2/3), the
    second by 5 (IoU 50/150 = 1/3)."""
    gt = np.zeros((30, 40), np.uint16)
    gt[0:10, 0:10] = 3
    gt[15:25, 15:25] = 8
    pred = np.zeros_like(gt)
    pred[0:10, 2:12] = 50
    pred[15:25, 20:30] = 7
    return pred, gt


def test_two_squares_shifted_by_known_amounts():
    pred, gt = two_squares()
    ap, per_t = average_precision(pred, gt)
    # IoU 2/3 beats 0.5 ... 0.65 (TP 1, FP 1, FN 1), not 0.7 ... 0.95 (TP 0, FP 2, FN 2).
    assert per_t.tolist() == pytest.approx([1 / 3] * 4 + [0.0] * 6)
    assert ap == pytest.approx(4 / 30)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx((80 + 50) / (120 + 150))
    assert mean_matched_iou(pred, gt) == pytest.approx(2 / 3)
    assert mean_matched_iou(pred, gt, threshold=0.3) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert mean_matched_iou(pred, gt, threshold=0.7) == 0.0
    assert seg_score(pred, gt) == pytest.approx(1 / 3)  # 50 of 100 pixels: not more than half
    # A third, disjoint prediction of 4 pixels: one more FP; unused, so it joins the union.
    pred[27:29, 35:37] = 9
    assert average_precision(pred, gt)[1][0] == pytest.approx(1 / 4)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(130 / 274)
    assert mean_matched_iou(pred, gt) == pytest.approx(2 / 3)


def test_cube_shifted_by_one_plane_3d():
    gt = np.zeros((8, 6, 6), np.uint32)
    gt[1:5, 1:5, 1:5] = 4_000_000_000
    pred = np.zeros_like(gt)
    pred[2:6, 1:5, 1:5] = 1
    # 3 of 4 planes shared: IoU 48 / 80 = 0.6, a match at 0.5 and 0.55 but not at 0.6 (strict).
    ap, per_t = average_precision(pred, gt)
    assert per_t.tolist() == [1.0, 1.0] + [0.0] * 8
    assert ap == pytest.approx(0.2)
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(0.6)
    assert mean_matched_iou(pred, gt) == pytest.approx(0.6)
    assert mean_matched_iou(pred, gt, threshold=0.6) == 0.0


def test_aji_merger_missed_object_and_unused_prediction():
    gt = np.zeros((1, 12), np.int64)
    gt[0, 0:3] = 1
    gt[0, 3:6] = 2
    gt[0, 8:10] = 3  # overlaps no prediction
    pred = np.zeros_like(gt)
    pred[0, 0:6] = 10  # merges 1 and 2: IoU 1/2 with each, partner of both
    pred[0, 11] = 11  # false positive
    # C = 3 + 3, U = 6 + 6 (the merger, counted twice) + 2 (object 3) + 1 (unused 11).
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(6 / 15)
    assert seg_score(pred, gt) == pytest.approx(1 / 3)  # 10 covers 1 and 2: J = 1/2, 1/2, 0
    assert average_precision(pred, gt, thresholds=(0.5,))[0] == 0.0  # IoU 0.5 is not > 0.5
    assert mean_matched_iou(pred, gt, threshold=0.4) == pytest.approx(0.5)  # one of the two


def test_aji_tie_goes_to_the_prediction_first_in_raster_order():
    # Object 1 (columns 2-5) has IoU 1/6 with both 20 (columns 0-2) and 30 (columns 5-7);
    # object 2 (columns 6-7) pairs with 30 (IoU 2/3). Taking 20 for object 1 leaves no
    # prediction unused, taking 30 leaves 20 (3 pixels) unused.
    gt = np.array([[0, 0, 1, 1, 1, 1, 2, 2]], np.uint16)
    pred = np.array([[20, 20, 20, 0, 0, 30, 30, 30]], np.uint16)
    # 1 -> 20 (first in raster order): (1 + 2) / (6 + 3).
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(3 / 9)
    swapped = np.where(pred == 20, 30, np.where(pred == 30, 20, 0)).astype(pred.dtype)
    assert aggregated_jaccard_index(swapped, gt) == pytest.approx(3 / 9)  # not the label value
    # Mirrored, 30 comes first: 1 -> 30 and 20 is unused: (1 + 2) / (6 + 3 + 3).
    assert aggregated_jaccard_index(pred[:, ::-1], gt[:, ::-1]) == pytest.approx(3 / 12)


def test_low_threshold_takes_the_largest_matching():
    # gt 1 has IoU 4/10 with 5 and 5/13 with 6; gt 2 has 3/9 with 6 only. At 0.3 the largest
    # matching is 1-5, 2-6 (not 1-6, the best single pair).
    gt = np.zeros((1, 20), np.int64)
    gt[0, 0:10] = 1
    gt[0, 10:14] = 2
    pred = np.zeros_like(gt)
    pred[0, 0:4] = 5
    pred[0, 5:13] = 6
    assert mean_matched_iou(pred, gt, threshold=0.3) == pytest.approx((4 / 10 + 3 / 9) / 2)
    assert average_precision(pred, gt, thresholds=(0.3, 0.35))[1].tolist() == \
        pytest.approx([1.0, 1 / 3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_images_and_dtypes(dtype):
    empty = np.zeros((4, 5), dtype)
    one = empty.copy()
    one[1:3, 1:3] = np.iinfo(dtype).max
    assert average_precision(empty, empty)[0] == 1.0
    assert aggregated_jaccard_index(empty, empty) == 1.0
    assert mean_matched_iou(empty, empty) == 1.0
    for pred, gt in ((one, empty), (empty, one)):
        assert average_precision(pred, gt)[0] == 0.0
        assert aggregated_jaccard_index(pred, gt) == 0.0
        assert mean_matched_iou(pred, gt) == 0.0
    assert average_precision(one, one)[0] == 1.0
    assert aggregated_jaccard_index(one, one) == 1.0
    assert mean_matched_iou(one, one) == 1.0
    s = object_scores(empty, one)
    assert (s["n_pred"], s["n_gt"], s["aji"]) == (0, 1, 0.0)


def test_bad_input_raises():
    img = np.zeros((3, 3), np.int64)
    for bad in ((), (0.5, 1.0), (-0.1,), (float("nan"),)):
        with pytest.raises(InputError):
            average_precision(img, img, thresholds=bad)
    with pytest.raises(InputError):
        mean_matched_iou(img, img, threshold=1.0)
    with pytest.raises(InputError):
        aggregated_jaccard_index(img.astype(float), img)
    with pytest.raises(InputError):
        aggregated_jaccard_index(img, np.zeros((3, 4), np.int64))


def test_hundred_thousand_objects():
    # 102400 squares of 3 x 3; the prediction is shifted by one column (wrapping around), so
    # each square shares 6 pixels with one prediction (IoU 6/12) and 3 with the next (3/15).
    n = 320
    gt = np.arange(1, n * n + 1, dtype=np.uint32).reshape(n, n).repeat(3, 0).repeat(3, 1)
    pred = np.roll(gt * 7 + 11, 1, axis=1)
    t0 = time.perf_counter()
    s = object_scores(pred, gt)
    elapsed = time.perf_counter() - t0
    assert (s["n_pred"], s["n_gt"]) == (n * n, n * n)
    assert s["aji"] == pytest.approx(0.5)  # every square with its IoU-0.5 partner, none unused
    assert s["average_precision"] == 0.0 and s["mean_matched_iou"] == 0.0  # 0.5 is not > 0.5
    # At 0.4 each square has one candidate (vectorised); at 0.1 every row of squares is one
    # cycle of candidates (0.5 and 0.2 alternating), solved by assignment.
    assert mean_matched_iou(pred, gt, threshold=0.4) == pytest.approx(0.5)
    assert elapsed < 20, elapsed

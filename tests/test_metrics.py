import itertools
import json
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from useg import evaluation as metrics
from useg.errors import InputError
from useg.evaluation import warping
from useg.io.datasets import dataset
from useg.postprocess.instances import InstanceParams

skm = pytest.importorskip("skimage.metrics")

CROSS = ndi.generate_binary_structure(2, 1)
SQUARE = ndi.generate_binary_structure(2, 2)


def random_labels(rng, shape, n):
    return rng.integers(0, n, shape)


def blobs(rng, shape, sigma=2.0, frac=0.5):
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1 - frac)


# ------------------------------------------------------------------ pixel and pair scores


def test_pixel_error_counts_differences_and_checks_shapes():
    a = np.zeros((4, 5), np.uint8)
    b = a.copy()
    b[1, 2] = 255
    b[3, 4] = 1
    assert metrics.pixel_error(b, a) == 2 / 20
    assert metrics.pixel_error(a, a) == 0.0
    with pytest.raises(InputError, match="shape"):
        metrics.pixel_error(a, a[:3])


def brute_rand_error(seg, gt):
    s = seg.ravel()
    g = gt.ravel()
    same_s = s[:, None] == s[None, :]
    same_g = g[:, None] == g[None, :]
    iu = np.triu_indices(s.size, 1)
    return np.mean(same_s[iu] != same_g[iu])


def brute_adapted_rand(seg, gt, ignore):
    keep = ~np.isin(gt.ravel(), ignore)
    s = seg.ravel()[keep]
    g = gt.ravel()[keep]
    same_s = s[:, None] == s[None, :]
    same_g = g[:, None] == g[None, :]
    off = ~np.eye(s.size, dtype=bool)
    both = np.sum(same_s & same_g & off)
    split = both / np.sum(same_g & off)
    merge = both / np.sum(same_s & off)
    return 1 - 2 * split * merge / (split + merge), split, merge


def test_rand_error_matches_brute_force_pair_counting():
    rng = np.random.default_rng(1)
    for _ in range(5):
        seg = random_labels(rng, (7, 6), rng.integers(1, 6))
        gt = random_labels(rng, (7, 6), rng.integers(1, 6))
        assert metrics.rand_error(seg, gt) == pytest.approx(brute_rand_error(seg, gt), abs=1e-12)
    assert metrics.rand_error(gt + 100, gt) == 0.0


def test_adapted_rand_error_equals_skimage_and_brute_force():
    rng = np.random.default_rng(2)
    for ignore in [(0,), (), (0, 3)]:
        for _ in range(4):
            gt = random_labels(rng, (9, 11), 6)
            seg = random_labels(rng, (9, 11), 5) * 7
            # Negative labels are fine here (skimage needs non-negative ones; same partition).
            ours = metrics.adapted_rand_error(seg - 3, gt, ignore_labels=ignore)
            ref = skm.adapted_rand_error(image_true=gt, image_test=seg, ignore_labels=ignore)
            np.testing.assert_allclose(ours, ref, rtol=1e-12)
            np.testing.assert_allclose(ours, brute_adapted_rand(seg, gt, ignore), rtol=1e-12)


def test_adapted_rand_error_is_nan_free_when_no_pairs():
    gt = np.zeros((3, 3), int)
    assert metrics.adapted_rand_error(gt + 5, gt) == (0.0, 1.0, 1.0)  # all pixels ignored
    singletons = np.arange(9).reshape(3, 3) + 1
    are, prec, rec = metrics.adapted_rand_error(np.ones((3, 3), int), singletons)
    assert (are, prec, rec) == (1.0, 1.0, 0.0)


def test_variation_of_information_equals_skimage():
    rng = np.random.default_rng(3)
    for ignore in [(), (0,), (1, 2)]:
        for _ in range(4):
            gt = random_labels(rng, (10, 8), 5)
            seg = random_labels(rng, (10, 8), 7)
            ours = metrics.variation_of_information(seg, gt, ignore_labels=ignore)
            ref = skm.variation_of_information(gt, seg, ignore_labels=ignore)
            np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_variation_of_information_known_values():
    gt = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    # Each gt object cut into halves: H(seg|gt) = 1 bit, nothing merged.
    assert metrics.variation_of_information(np.array([1, 1, 2, 2, 3, 3, 4, 4]), gt) == (1.0, 0.0)
    assert metrics.variation_of_information(np.ones(8, int), gt) == (0.0, 1.0)
    assert metrics.variation_of_information(gt * 3, gt) == (0.0, 0.0)


def entropy_bits(values):
    _, counts = np.unique(values, return_counts=True, axis=0)
    p = counts / counts.sum()
    return -np.sum(p * np.log2(p))


def test_v_info_is_normalised_mutual_information_on_foreground():
    rng = np.random.default_rng(4)
    for _ in range(5):
        gt = random_labels(rng, (12, 9), 5)
        seg = random_labels(rng, (12, 9), 4)
        keep = gt.ravel() != 0
        s, g = seg.ravel()[keep], gt.ravel()[keep]
        h_s, h_g = entropy_bits(s), entropy_bits(g)
        mutual = h_s + h_g - entropy_bits(np.stack([s, g], axis=1))
        expected = 2 * mutual / (h_s + h_g)
        # Also the F-score of the split and merge scores I/H(S) and I/H(T).
        split_score, merge_score = mutual / h_s, mutual / h_g
        fscore = 2 * split_score * merge_score / (split_score + merge_score)
        assert metrics.v_info(seg, gt) == pytest.approx(expected, rel=1e-12)
        assert metrics.v_info(seg, gt) == pytest.approx(fscore, rel=1e-12)
    gt = np.array([0, 1, 1, 2, 2, 3])
    assert metrics.v_info(np.array([5, 7, 7, 8, 8, 9]), gt) == 1.0
    assert metrics.v_info(np.array([0, 4, 4, 4, 4, 4]), gt) == 0.0
    assert metrics.v_info(np.array([0, 4, 4, 4, 4, 4]), np.array([0, 1, 1, 1, 1, 1])) == 1.0


# ------------------------------------------------------------------ real ISBI labels


def isbi_labels(n=2):
    root = dataset("isbi2012")
    if root is None or not (root / "train" / "labels").is_dir():
        pytest.skip("isbi2012 dataset not found; set USEG_DATA")
    from PIL import Image

    files = sorted((root / "train" / "labels").glob("*.png"), key=lambda p: int(p.stem))[:n]
    return [np.asarray(Image.open(f)) for f in files]


@pytest.mark.data
def test_real_isbi_labels_against_skimage():
    for lab in isbi_labels(2):
        gt = ndi.label(lab > 0, CROSS)[0]
        eroded = ndi.label(ndi.binary_erosion(lab > 0, SQUARE), CROSS)[0]
        shifted = np.roll(gt, (2, -1), axis=(0, 1))
        for seg in (eroded, shifted):
            np.testing.assert_allclose(
                metrics.adapted_rand_error(seg, gt),
                skm.adapted_rand_error(gt, seg, ignore_labels=(0,)),
                rtol=1e-10,
            )
            np.testing.assert_allclose(
                metrics.variation_of_information(seg, gt, ignore_labels=(0,)),
                skm.variation_of_information(gt, seg, ignore_labels=(0,)),
                rtol=1e-10,
            )
        assert metrics.adapted_rand_error(gt, gt)[0] == 0.0


def topology(binary):
    """(foreground 4-components, background 8-components) with the outside as background."""
    padded = np.pad(binary, 1)
    return ndi.label(padded, CROSS)[1], ndi.label(~padded, SQUARE)[1]


@pytest.mark.data
def test_real_isbi_warping_preserves_topology_and_is_fast():
    lab = isbi_labels(1)[0]
    gt = lab > 0
    rng = np.random.default_rng(5)
    pred = ndi.gaussian_filter(np.roll(gt, 2, axis=1).astype(float), 1.0)
    pred += rng.normal(0, 0.05, pred.shape)
    start = time.perf_counter()
    warped = metrics.simple_point_warp(gt, pred, 0.5)
    result = metrics.warping_error(pred, gt, 0.5)
    elapsed = time.perf_counter() - start
    binary = pred > 0.5
    assert topology(warped) == topology(gt)
    assert np.all(warped[gt == binary] == gt[gt == binary])  # only mismatches may flip
    assert result.error == np.count_nonzero(warped != binary) / gt.size
    assert 0 < result.error < metrics.pixel_error(binary, gt)
    assert elapsed < 30  # about 0.5 s on one core; generous for shared machines


# ------------------------------------------------------------------ simple points and warping


def is_simple_by_definition(patch):
    """Textbook 2D (4, 8) simple point test on a 3x3 patch, with scipy's labelling."""
    fg = patch.astype(bool).copy()
    fg[1, 1] = False
    lab, _ = ndi.label(fg, CROSS)
    t4 = len({lab[y, x] for y, x in [(0, 1), (1, 0), (1, 2), (2, 1)] if lab[y, x]})
    bg = ~patch.astype(bool)
    bg[1, 1] = False
    t8 = ndi.label(bg, SQUARE)[1]
    return t4 == 1 and t8 == 1


def flip_preserves_topology(patch):
    """Independent oracle: flipping the centre keeps the component and hole counts."""
    with_c = patch.astype(bool).copy()
    with_c[1, 1] = True
    without = with_c.copy()
    without[1, 1] = False
    return topology(with_c) == topology(without)


def test_simple_point_table_matches_definitions_for_all_256_configurations():
    n_simple = 0
    for bits in itertools.product([0, 1], repeat=8):
        patch = np.zeros((3, 3), np.uint8)
        patch.flat[[0, 1, 2, 3, 5, 6, 7, 8]] = bits
        code = warping._ring_code(patch)
        expected = is_simple_by_definition(patch)
        assert bool(warping._SIMPLE[code]) == expected
        assert expected == flip_preserves_topology(patch)
        n_simple += expected
    assert n_simple == 116


def reference_warp(gt, pred, threshold):
    """Full-sweep transcription of the challenge's algorithm, with the textbook simple test."""
    src = np.pad(gt.astype(np.uint8), 1)
    target = np.pad(pred > threshold, 1)
    prio = np.pad(np.abs(pred - threshold), 1)
    while True:
        ys, xs = np.nonzero(src.astype(bool) != target)
        if ys.size == 0:
            break
        order = sorted(zip(xs, ys, strict=True), key=lambda p: (-prio[p[1], p[0]], p[0], p[1]))
        flipped = 0
        for x, y in order:
            if is_simple_by_definition(src[y - 1 : y + 2, x - 1 : x + 2]):
                src[y, x] ^= 1
                flipped += 1
        if flipped == 0:
            break
    return src[1:-1, 1:-1].astype(bool)


@pytest.mark.parametrize("binary_pred", [False, True])
def test_warp_equals_full_sweep_reference_on_random_images(binary_pred):
    rng = np.random.default_rng(6 + binary_pred)
    for _ in range(6):
        gt = blobs(rng, (14, 13), sigma=1.5, frac=0.6)
        noise = rng.normal(0, 0.3, gt.shape)
        pred = np.clip(ndi.gaussian_filter(gt.astype(float), 0.8) + noise, 0, 1)
        if binary_pred:
            pred = (pred > 0.5).astype(float)
        ours = metrics.simple_point_warp(gt, pred, 0.5)
        np.testing.assert_array_equal(ours, reference_warp(gt, pred, 0.5))
        assert topology(ours) == topology(gt)


def two_cells(h=8, w=11, col=5):
    gt = np.ones((h, w), bool)
    gt[:, col] = False
    return gt


def test_shifted_boundary_costs_pixels_but_no_warping_error():
    gt = two_cells()
    pred = np.ones_like(gt, float)
    pred[:, 6] = 0  # the membrane moved one pixel to the right
    assert metrics.pixel_error(pred > 0.5, gt) == 2 * 8 / 88
    assert metrics.warping_error(pred, gt) == (0.0, 0, 0)
    # A membrane twice as thick is also topologically correct.
    pred[:, 5] = 0
    assert metrics.warping_error(pred, gt) == (0.0, 0, 0)


def test_line_splitting_one_cell_leaves_one_pixel():
    # Cutting a cell with a line that meets membrane at both ends: every pixel of the line can be
    # warped in but the last one, which would split the cell.
    gt = np.ones((8, 11), bool)
    pred = gt.astype(float)
    pred[:, 4] = 0.0
    assert metrics.warping_error(pred, gt) == (1 / 88, 1, 0)
    # Same with a closed cell: membrane frame inside the image, cut from side to side.
    gt = np.zeros((9, 9), bool)
    gt[1:8, 1:8] = True
    pred = gt.astype(float)
    pred[4, 1:8] = 0.0
    assert metrics.warping_error(pred, gt) == (1 / 81, 1, 0)


def test_merging_two_cells_costs_the_whole_separating_line():
    gt = two_cells()
    pred = np.ones_like(gt, float)  # membrane missed entirely: no pixel of it may be removed
    assert metrics.warping_error(pred, gt) == (8 / 88, 0, 1)
    # Only a one-pixel gap in the membrane: a merger of one pixel.
    pred = gt.astype(float)
    pred[3, 5] = 1.0
    assert metrics.warping_error(pred, gt) == (1 / 88, 0, 1)


def test_hole_is_a_topological_error_but_neither_split_nor_merge():
    gt = two_cells()
    pred = gt.astype(float)
    pred[4, 2] = 0.0
    assert metrics.warping_error(pred, gt) == (1 / 88, 0, 0)


def test_warping_error_on_stack_is_mean_over_slices():
    gt = np.stack([two_cells(), two_cells()])
    pred = gt.astype(float)
    pred[1] = 1.0  # second slice: merger, 8 wrong pixels
    assert metrics.warping_error(pred, gt) == (8 / 176, 0, 1)
    with pytest.raises(InputError):
        metrics.warping_error(np.zeros(5), np.zeros(5))


# ------------------------------------------------------------------ per-class overlap


def test_iou_and_dice_per_class_match_brute_force():
    rng = np.random.default_rng(7)
    pred = rng.integers(0, 4, (9, 9))
    gt = rng.integers(0, 3, (9, 9))
    got_iou = metrics.iou(pred, gt)
    got_dice = metrics.dice(pred, gt)
    assert set(got_iou) == {0, 1, 2, 3}
    for c in range(4):
        p, g = pred == c, gt == c
        assert got_iou[c] == pytest.approx((p & g).sum() / (p | g).sum())
        assert got_dice[c] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))
    assert metrics.iou(pred, gt, labels=[9])[9] == 1.0  # absent in both
    assert metrics.dice(pred, gt, labels=[9])[9] == 1.0
    assert metrics.iou(np.array([True, False]), np.array([True, True])) == {0: 0.0, 1: 0.5}


def test_iou_keeps_huge_ids_of_mixed_signed_and_unsigned_maps():
    big = 2**53 + 1  # not a float64
    pred = np.array([0, big, big, 0], np.uint64)
    gt = np.array([big, 0, 0, big], np.int64)
    assert metrics.iou(pred, gt) == {0: 0.0, big: 0.0}


# ------------------------------------------------------------------ object scores


def brute_seg(pred, gt):
    scores = []
    for r in np.unique(gt[gt > 0]):
        ref = gt == r
        score = 0.0
        for s in np.unique(pred[pred > 0]):
            obj = pred == s
            if (ref & obj).sum() > 0.5 * ref.sum():
                score = (ref & obj).sum() / (ref | obj).sum()
        scores.append(score)
    return np.mean(scores)


def test_seg_score_hand_made_cases():
    gt = np.zeros((6, 8), int)
    gt[1:3, 1:4] = 1  # 6 pixels
    gt[4:6, 5:8] = 2  # 6 pixels
    assert metrics.seg_score(gt * 10, gt) == 1.0
    pred = np.zeros_like(gt)
    pred[1:3, 1:3] = 4  # 4 of object 1's 6 pixels: J = 4/6
    pred[4:6, 5:7] = 5
    pred[4, 7] = 5  # 5 of 6 pixels, nothing outside: J = 5/6
    assert metrics.seg_score(pred, gt) == pytest.approx((4 / 6 + 5 / 6) / 2)
    pred = np.zeros_like(gt)
    pred[1, 1:4] = 4  # exactly half of object 1: not a match
    assert metrics.seg_score(pred, gt) == 0.0
    merged = np.where(gt > 0, 7, 0)  # one object covering both: J = 6/12 for each
    assert metrics.seg_score(merged, gt) == pytest.approx(0.5)
    assert metrics.seg_score(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_seg_score_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(8)
    for _ in range(5):
        gt = ndi.label(blobs(rng, (20, 20), 1.5, 0.4))[0]
        kept = (gt > 0) & (rng.random(gt.shape) < 0.7)
        pred = ndi.label(blobs(rng, (20, 20), 1.5, 0.4) | kept)[0]
        assert metrics.seg_score(pred, gt) == pytest.approx(brute_seg(pred, gt))


def brute_matches(pred, gt, threshold):
    gts = np.unique(gt[gt > 0])
    preds = np.unique(pred[pred > 0])
    ok = {}
    for g in gts:
        for p in preds:
            a, b = gt == g, pred == p
            if (a & b).sum() / (a | b).sum() > threshold:
                ok[g, p] = True
    best = 0
    # Largest matching by exhaustive search over assignments of gt objects.
    for perm in itertools.permutations(list(preds) + [None] * len(gts), len(gts)):
        best = max(best, sum(1 for g, p in zip(gts, perm, strict=True) if (g, p) in ok))
    return best, len(preds), len(gts)


def test_object_f1_matches_exhaustive_matching():
    rng = np.random.default_rng(9)
    for _ in range(8):
        gt = np.zeros((10, 10), int)
        pred = np.zeros((10, 10), int)
        for k in range(1, 5):
            y, x = rng.integers(0, 8, 2)
            gt[y : y + 3, x : x + 3] = k
        for k in range(1, 5):
            y, x = rng.integers(0, 8, 2)
            pred[y : y + rng.integers(2, 4), x : x + 3] = k + 10
        for t in (0.1, 0.3, 0.5, 0.7):
            tp, n_pred, n_gt = brute_matches(pred, gt, t)
            got = metrics.object_f1(pred, gt, thresholds=(t,))[t]
            assert (got["tp"], got["fp"], got["fn"]) == (tp, n_pred - tp, n_gt - tp)
            assert got["f1"] == pytest.approx(2 * tp / (n_pred + n_gt))


def test_object_f1_low_threshold_needs_optimal_matching():
    # gt object 1 overlaps prediction A (IoU 0.4) and B (IoU 0.3); gt object 2 only B. Greedy
    # matching by IoU would pair 1-A and leave 2 alone anyway; make greedy fail instead: 1 has
    # its best IoU with B, which is 2's only partner.
    gt = np.zeros((1, 20), int)
    pred = np.zeros((1, 20), int)
    gt[0, 0:10] = 1
    gt[0, 10:14] = 2
    pred[0, 0:4] = 5  # IoU with 1: 4/10
    pred[0, 5:13] = 6  # IoU with 1: 5/13 = 0.385..., with 2: 3/9 = 0.333...
    res = metrics.object_f1(pred, gt, thresholds=(0.3, 0.35, 0.5))
    assert (res[0.3]["tp"], res[0.3]["fp"], res[0.3]["fn"]) == (2, 0, 0)
    assert res[0.35]["tp"] == 1
    assert res[0.5]["tp"] == 0 and res[0.5]["f1"] == 0.0
    empty = np.zeros((3, 3), int)
    assert metrics.object_f1(empty, empty)[0.5] == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 0,
        "fp": 0,
        "fn": 0,
    }
    with pytest.raises(InputError):
        metrics.object_f1(empty.astype(float), empty)


# ------------------------------------------------------------------ ISBI sweep


def test_isbi_scores_perfect_prediction_and_json():
    gt = np.ones((12, 12), np.uint8)
    gt[:, 5] = 0
    gt[6, :] = 0
    res = metrics.isbi_scores(gt.astype(float), gt * 255, thresholds=(0.3, 0.7))
    json.dumps(res, allow_nan=False)
    assert res["thresholds"] == [0.3, 0.7]
    for row in res["per_threshold"]:
        assert row["pixel_error"] == 0.0
        assert row["rand_error"] == 0.0
        assert row["v_rand"] == 1.0 and row["v_info"] == 1.0
        assert row["warping_error"] == 0.0
        assert row["iou_membrane"] == 1.0
    assert res["best"]["v_rand"] == {"value": 1.0, "threshold": 0.3}


def test_isbi_scores_threshold_sweep_and_options():
    gt = np.ones((10, 10), np.uint8)
    gt[:, 4] = 0
    prob = gt.astype(float)
    prob[:, 4] = 0.6  # membrane only seen below 0.6: threshold 0.7 separates, 0.5 merges
    res = metrics.isbi_scores(prob, gt, thresholds=(0.5, 0.7))
    low, high = res["per_threshold"]
    assert low["warping_error"] == 10 / 100 and low["warping_mergers"] == 1
    assert high["warping_error"] == 0.0
    assert low["v_rand"] < 1.0 and high["v_rand"] == 1.0
    assert res["best"]["warping_error"]["threshold"] == 0.7
    inverted = metrics.isbi_scores(1 - prob, gt, thresholds=(0.5, 0.7), membrane=True)
    assert inverted == res
    stack = metrics.isbi_scores(np.stack([prob, prob]), np.stack([gt, gt]), thresholds=(0.5, 0.7))
    for a, b in zip(stack["per_threshold"], res["per_threshold"], strict=True):
        # Scores are averaged over slices, topological error counts summed.
        b = dict(b, warping_splits=2 * b["warping_splits"])
        b["warping_mergers"] *= 2
        assert a == pytest.approx(b)
    single = metrics.isbi_scores(prob, gt, thresholds=(0.5,), unassigned="singletons")
    assert 0 < single["per_threshold"][0]["v_rand"] < 1
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        metrics.isbi_scores(prob * 255, gt)


def test_isbi_scores_with_instances_cut_cells_at_a_gap_in_their_membrane():
    # Two 20x20 cells separated by a membrane column with a two-pixel gap in the prediction:
    # its connected components merge the cells, the objects of useg predict --instances
    # (distance seeds, cut at the neck) keep them apart; the pixel error is the same.
    gt = np.ones((20, 41), np.uint8)
    gt[:, 20] = 0
    prob = gt.astype(float)
    prob[9:11, 20] = 1.0
    plain = metrics.isbi_scores(prob, gt, thresholds=(0.5,))["per_threshold"][0]
    cut = metrics.isbi_scores(prob, gt, thresholds=(0.5,),
                              instances=InstanceParams(seed_distance=2.0, min_size=0))
    cut = cut["per_threshold"][0]
    assert plain["adapted_rand_error"] > 0.3
    assert cut["adapted_rand_error"] < 0.01
    assert cut["pixel_error"] == plain["pixel_error"] == 2 / prob.size
    quick = metrics.isbi_scores(prob, gt, thresholds=(0.5,), warping=False)["per_threshold"][0]
    assert "warping_error" not in quick and "warping_error" in plain
    assert quick == {k: v for k, v in plain.items() if not k.startswith("warping")}
    with pytest.raises(InputError, match="InstanceParams"):
        metrics.isbi_scores(prob, gt, thresholds=(0.5,), instances={"seed_distance": 2})


def test_isbi_scores_refuse_a_slice_without_interior():
    # Its Rand and information scores would be 0/0, read as perfect, and raise the stack's mean.
    from useg.errors import InputError
    from useg.evaluation.isbi import isbi_scores

    gt = np.ones((3, 8, 8), np.uint8)
    gt[:, :, 4] = 0
    gt[1] = 0
    with pytest.raises(InputError, match="no cell interior in slice 1"):
        isbi_scores(gt.astype(float), gt, thresholds=(0.5,))
    assert isbi_scores(gt[[0, 2]].astype(float), gt[[0, 2]], thresholds=(0.5,))["best"][
        "v_rand"]["value"] == 1.0

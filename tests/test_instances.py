"""Objects from class probabilities: useg.postprocess.instances, .instance_blocks, and the
three_class label mode of useg.training.samples."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from useg.errors import ConfigError, InputError, ModelFileError
from useg.postprocess.instance_blocks import instances_in_blocks
from useg.postprocess.instances import (
    InstanceParams,
    instance_dtype,
    instances_from_probabilities,
)
from useg.training.samples import LABEL_MODES, MODE_CLASSES, make_sample, targets_from_labels


def ball(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


def two_class(fg):
    """Probabilities of a 2-class model that is fairly but not fully sure of ``fg``."""
    p1 = np.where(fg, 0.8, 0.2).astype(np.float32)
    return np.stack([1 - p1, p1])


def one_hot(target, classes):
    return np.stack([target == c for c in range(classes)]).astype(np.float32)


def same_partition(a, b):
    """Equal up to a permutation of the ids (0 is background in both)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


@pytest.mark.parametrize(
    ("shape", "radius", "gap"),
    [((40, 60), 7, 12), ((20, 24, 44), 6, 10)],  # smaller ball rises 2.5 and 3 above the neck
)
def test_touching_round_objects_are_split_at_their_neck(shape, radius, gap):
    mid = tuple(n // 2 for n in shape[:-1])
    a, b, c = mid + (9,), mid + (9 + gap,), mid + (9 + gap + 2 * radius + 6,)
    fg = ball(shape, a, radius) | ball(shape, b, radius) | ball(shape, c, 5)  # a pair, a loner
    assert ndi.label(fg)[1] == 2
    labels = instances_from_probabilities(two_class(fg), "instances", InstanceParams())
    assert labels.max() == 3
    assert np.array_equal(labels > 0, fg)
    assert len({labels[a], labels[b], labels[c]}) == 3
    for k in range(1, 4):
        assert ndi.label(labels == k)[1] == 1
    # The cut runs through the neck, halfway between the centres.
    neck = 9 + gap // 2
    assert labels[mid + (neck - 2,)] == labels[a] and labels[mid + (neck + 2,)] == labels[b]


def squares_with_neck():
    """Two 9x9 squares (distance-transform maxima 5) joined by a neck 3 pixels wide (saddle 2):
    the smaller maximum rises 3 above the saddle."""
    fg = np.zeros((11, 22), bool)
    fg[1:10, 1:10] = fg[4:7, 10:12] = fg[1:10, 12:21] = True
    return fg


@pytest.mark.parametrize(("seed_distance", "objects"), [(0.0, 2), (2.9, 2), (3.0, 1), (3.1, 1)])
def test_seed_distance_is_the_height_of_a_maximum_above_its_saddle(seed_distance, objects):
    params = InstanceParams(seed_distance=seed_distance, min_size=0)
    labels = instances_from_probabilities(two_class(squares_with_neck()), "instances", params)
    assert labels.max() == objects


def h_maxima(distance, interior, h, footprint):
    """The oracle: regional maxima of the h-maxima transform (a reconstruction by dilation of
    ``distance - h`` under ``distance``), with a wall outside ``interior``."""
    from skimage.morphology import local_maxima, reconstruction

    height = np.where(interior, distance, -h - 1.0)
    rec = reconstruction(height - h, height, method="dilation", footprint=footprint)
    return ndi.label(local_maxima(rec, footprint=footprint) & interior, footprint)


@pytest.mark.parametrize("seed", range(6))
def test_seeds_are_the_h_maxima_of_the_distance_transform(seed):
    rng = np.random.default_rng(seed)
    ndim = 2 + seed % 2
    shape = (60, 70) if ndim == 2 else (20, 26, 30)
    smooth = ndi.gaussian_filter(rng.random(shape), rng.uniform(1.5, 3.5))
    fg = smooth > np.quantile(smooth, 0.5)
    h = (0.5, 1.0, 2.0, 3.0)[seed % 4]
    connectivity = 1 + seed % ndim
    spacing = (2.5,) + (1.0,) * (ndim - 1) if seed >= 3 else None
    params = InstanceParams(seed_distance=h, min_size=0, connectivity=connectivity)
    labels = instances_from_probabilities(two_class(fg), "instances", params, spacing=spacing)
    footprint = ndi.generate_binary_structure(ndim, connectivity)
    distance = ndi.distance_transform_edt(fg, sampling=spacing)
    tops, n = h_maxima(distance, fg, h, footprint)
    assert labels.max() == n >= 3
    # Every h-maximum lies in one object, each in another.
    pairs = np.unique(np.stack([tops[tops > 0], labels[tops > 0]]), axis=1)
    assert pairs.shape[1] == n and np.unique(pairs[1]).size == n


def test_every_piece_keeps_a_seed_however_thin():
    fg = np.zeros((9, 30), bool)
    fg[4, 2:28] = True  # a line one pixel wide: its distance transform never exceeds 1
    fg[1:3, 5:7] = True
    labels = instances_from_probabilities(two_class(fg), "instances",
                                          InstanceParams(seed_distance=5.0, min_size=0))
    assert labels.max() == 2 and np.array_equal(labels > 0, fg)


def test_min_size_merges_fragments_into_their_neighbour_and_drops_specks():
    fg = ball((30, 40), (15, 14), 8)
    fg[13:17, 23:27] = True  # a bump 4x4 on a neck 2 pixels wide: its own seed at h 0.5
    fg[14:16, 22] = True
    fg[2:4, 35:37] = True  # a speck of 4 pixels, apart
    bump = (slice(13, 17), slice(23, 27))
    keep_all = InstanceParams(seed_distance=0.5, min_size=0)
    labels = instances_from_probabilities(two_class(fg), "instances", keep_all)
    assert labels.max() == 3 and labels[15, 14] != labels[15, 25]
    params = InstanceParams(seed_distance=0.5, min_size=30)
    labels = instances_from_probabilities(two_class(fg), "instances", params)
    assert labels.max() == 1
    assert np.all(labels[bump] == labels[15, 14])  # the fragment joined the disc
    speck = np.zeros(fg.shape, bool)
    speck[2:4, 35:37] = True
    assert np.array_equal(labels > 0, fg & ~speck)  # the speck is dropped


def test_ids_are_consecutive_and_the_dtype_fits_them():
    fg = np.zeros((512, 512), bool)
    fg[::2, ::2] = True  # 65536 single pixels, apart with face connectivity
    params = InstanceParams(min_size=0)
    labels = instances_from_probabilities(two_class(fg[:20, :20]), "instances", params)
    assert labels.dtype == np.uint16
    assert np.array_equal(np.unique(labels), np.arange(101))
    fg[0, 0] = False
    labels = instances_from_probabilities(two_class(fg), "instances", params)
    assert labels.dtype == np.uint16 and labels.max() == 65535
    fg[0, 0] = True
    labels = instances_from_probabilities(two_class(fg), "instances", params)
    assert labels.dtype == np.uint32 and labels.max() == 65536
    assert np.array_equal(np.bincount(labels.ravel())[1:], np.ones(65536))
    assert labels[0, 0] == 1 and labels[0, 2] == 2  # numbered in raster order
    assert instance_dtype(0) == np.uint16 and instance_dtype(65535) == np.uint16
    assert instance_dtype(65536) == np.uint32
    with pytest.raises(InputError):
        instance_dtype(2**32)


def test_anisotropic_spacing_measures_distances_in_pixels_of_the_finest_axis():
    # Two touching balls of radius 9 in physical units, sampled 3x coarser along Z: flat in
    # voxels, so without the spacing the distance transform is capped by their thickness and
    # shows no neck between them.
    spacing = (3.0, 1.0, 1.0)
    grid = np.indices((9, 30, 50)).astype(float)
    centre = (4, 15)
    fg = np.zeros(grid.shape[1:], bool)
    for x in (14, 30):
        fg |= ((grid[0] - centre[0]) * spacing[0]) ** 2 + (grid[1] - centre[1]) ** 2 + (
            grid[2] - x) ** 2 <= 81
    probs = two_class(fg)
    params = InstanceParams()
    assert instances_from_probabilities(probs, "instances", params).max() == 1
    labels = instances_from_probabilities(probs, "instances", params, spacing=spacing)
    assert labels.max() == 2 and labels[4, 15, 14] != labels[4, 15, 30]
    scaled = instances_from_probabilities(probs, "instances", params, spacing=(0.3, 0.1, 0.1))
    assert np.array_equal(scaled, labels)
    with pytest.raises(InputError, match="spacing"):
        instances_from_probabilities(probs, "instances", params, spacing=(3.0, 1.0))


def membrane_cells():
    """A 3x3 grid of cells between one-pixel membranes, one membrane with a gap of 2 pixels."""
    boundary = np.zeros((40, 40), bool)
    boundary[[0, 13, 26, 39], :] = True
    boundary[:, [0, 13, 26, 39]] = True
    boundary[6:8, 13] = False  # the first two cells of the top row touch through the gap
    return boundary


def test_boundary_target_fills_the_image_and_splits_cells_through_a_gap():
    boundary = membrane_cells()
    p1 = np.where(boundary, 0.9, 0.1).astype(np.float32)
    labels = instances_from_probabilities(np.stack([1 - p1, p1]), "boundary", InstanceParams())
    assert labels.min() > 0 and labels.max() == 9
    cells, n = ndi.label(~boundary)
    assert n == 8  # thresholding alone merges the cells joined by the gap
    centres = [labels[6 + 13 * i, 6 + 13 * j] for i in range(3) for j in range(3)]
    assert len(set(centres)) == 9
    for k in range(1, n + 1):  # every cell's pixels in one object each but the merged one
        inside = np.unique(labels[cells == k])
        assert inside.size == (2 if k == cells[6, 6] else 1)


def test_boundary_target_cuts_unequal_cells_at_the_gap_between_them():
    # A big cell and a small one joined through a gap: growing over the boundary probability
    # alone (flat inside the cells) would meet halfway between the seeds, inside the big cell.
    boundary = np.zeros((40, 60), bool)
    boundary[[0, 39], :] = True
    boundary[:, [0, 45, 59]] = True
    boundary[18:21, 45] = False
    p1 = np.where(boundary, 0.9, 0.1).astype(np.float32)
    labels = instances_from_probabilities(np.stack([1 - p1, p1]), "boundary", InstanceParams())
    assert labels.max() == 2
    assert np.unique(labels[:, :45]).size == 1 and np.unique(labels[:, 46:]).size == 1


def hand_labels():
    lab = np.zeros((10, 12), np.int32)
    lab[1:5, 1:5] = 1
    lab[1:5, 5:9] = 2  # touches 1 along columns 4 | 5
    lab[6:9, 1:4] = 3  # 3x3: one interior pixel
    lab[6:8, 6:8] = 4  # 2x2: all boundary
    return lab


def test_three_class_target_from_instance_labels():
    assert "three_class" in LABEL_MODES and MODE_CLASSES["three_class"] == 3
    target, instances = targets_from_labels(hand_labels(), "three_class")
    expected = np.zeros((10, 12), np.int64)
    expected[hand_labels() > 0] = 2
    expected[2:4, 2:4] = 1
    expected[2:4, 6:8] = 1
    expected[7, 2] = 1
    assert np.array_equal(target, expected)
    # Instances of the weight map: the interiors.
    assert np.array_equal(instances, np.where(expected == 1, hand_labels(), 0))
    wide, _ = targets_from_labels(hand_labels(), "three_class", boundary_width=2)
    assert np.array_equal(wide[hand_labels() == 1], np.full(16, 2))
    # Unlabeled pixels are ignored, and a change of id to them is no boundary.
    lab = hand_labels()
    lab[:, 10:] = 9
    target, _ = targets_from_labels(lab, "three_class", unlabeled=9)
    assert np.all(target[:, 10:] == -1) and np.array_equal(target[:, :10], expected[:, :10])


def test_three_class_weight_map_has_the_border_term_between_touching_objects():
    lab = hand_labels()
    image = np.random.default_rng(0).random((1, *lab.shape)).astype(np.float32)
    with_border = make_sample(image, lab, mode="three_class", w0=10.0, sigma=5.0)
    without = make_sample(image, lab, mode="three_class", w0=0.0, sigma=5.0)
    assert np.array_equal(with_border.target, targets_from_labels(lab, "three_class")[0])
    term = with_border.weight - without.weight
    # (2, 4): boundary of object 1 facing object 2; nearest interiors 1 and 2 pixels away.
    assert term[2, 4] == pytest.approx(10 * np.exp(-(1 + 2) ** 2 / 50), rel=1e-5)
    assert term[2, 4] > term[2, 1] + 3  # the outer boundary of object 1, far from object 2
    assert term[2, 2] == 0 and term[7, 2] == 0  # none inside
    # The class balance covers the three classes.
    w = without.weight
    for c in range(3):
        total = w[without.target == c].sum()
        assert total == pytest.approx(w.sum() / 3, rel=1e-5)


def test_three_class_probabilities_give_back_the_objects():
    lab = hand_labels()
    target, _ = targets_from_labels(lab, "three_class")
    labels = instances_from_probabilities(one_hot(target, 3), "three_class",
                                          InstanceParams(min_size=0))
    assert same_partition(labels, lab)
    # Softer probabilities.
    p = 0.1 + 0.8 * one_hot(target, 3)
    p /= p.sum(0)
    labels = instances_from_probabilities(p, "three_class", InstanceParams(min_size=0))
    assert same_partition(labels, lab)


@pytest.mark.parametrize(
    ("values", "wrong"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"seed_distance": -1}, "seed_distance"),
        ({"seed_distance": float("inf")}, "seed_distance"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": 2.5}, "min_size"),
        ({"min_size": None}, "min_size"),
        ({"connectivity": 0}, "connectivity"),
        ({"connectivity": [1, 2]}, "connectivity"),
        ({"threshhold": 0.5}, "threshhold"),
    ],
)
def test_from_dict_rejects_bad_values_in_one_line(values, wrong):
    with pytest.raises(ModelFileError) as caught:
        InstanceParams.from_dict(values, source="m.safetensors: instances")
    message = str(caught.value)
    assert message.startswith("m.safetensors: instances: ") and wrong in message
    assert "\n" not in message
    with pytest.raises(InputError, match="^--threshold etc.: "):
        InstanceParams.from_dict(values, source="--threshold etc.", error=InputError)


def test_from_dict_round_trip_and_defaults():
    params = InstanceParams(threshold=0.4, seed_distance=1, min_size=0, connectivity=2)
    assert InstanceParams.from_dict(params.to_dict(), source="x") == params
    assert InstanceParams.from_dict({}, source="x") == InstanceParams()
    assert isinstance(InstanceParams.from_dict({"seed_distance": 3}, "x").seed_distance, float)
    with pytest.raises(ModelFileError, match="^x: instance settings must be an object"):
        InstanceParams.from_dict([0.5], source="x")
    with pytest.raises(ConfigError, match="threshold"):
        InstanceParams(threshold=2.0)


def test_input_checks():
    fg = squares_with_neck()
    with pytest.raises(InputError, match="3 class probabilities"):
        instances_from_probabilities(two_class(fg), "three_class", InstanceParams())
    with pytest.raises(InputError, match="connectivity 3"):
        instances_from_probabilities(two_class(fg), "instances", InstanceParams(connectivity=3))
    bad = two_class(fg)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        instances_from_probabilities(bad, "instances", InstanceParams())
    with pytest.raises(ConfigError, match="target"):
        instances_from_probabilities(two_class(fg), "nuclei", InstanceParams())
    empty = instances_from_probabilities(np.stack([np.ones((5, 5)), np.zeros((5, 5))]),
                                         "instances", InstanceParams())
    assert empty.dtype == np.uint16 and not empty.any()


def blob_scene(shape, radius, pair_gap):
    """Balls of ``radius`` on a grid: every other one with a touching partner along the last
    axis (centres ``pair_gap`` apart), so touching and lone objects alternate."""
    fg = np.zeros(shape, bool)
    step = 4 * radius + pair_gap
    starts = [range(radius + 1, n - radius - 1, step if a == len(shape) - 1 else 3 * radius)
              for a, n in enumerate(shape)]
    for k, centre in enumerate(np.array(np.meshgrid(*starts, indexing="ij")).reshape(
            len(shape), -1).T):
        fg |= ball(shape, centre, radius)
        partner = centre.copy()
        partner[-1] += pair_gap
        if k % 2 == 0 and partner[-1] + radius < shape[-1]:
            fg |= ball(shape, partner, radius)
    return fg


@pytest.mark.parametrize(
    ("shape", "radius", "gap", "blocks", "halo"),
    [
        ((64, 110), 6, 10, [5, 16, (24, 40)], 26),  # block 5 < an object's diameter 13
        ((20, 40, 52), 4, 7, [(20, 8, 8), 20], 18),
    ],
)
def test_block_wise_objects_equal_the_whole_image(shape, radius, gap, blocks, halo):
    # The halo covers each pair of touching objects (extent gap + 2 radius + 1) from any pixel.
    fg = blob_scene(shape, radius, gap)
    probs = two_class(fg)
    params = InstanceParams(seed_distance=1.0)
    whole = instances_from_probabilities(probs, "instances", params)
    assert whole.max() > ndi.label(fg)[1] > 4  # some objects touch and are split
    for block in blocks:
        out, cut = np.zeros(shape, np.uint32), []
        n = instances_in_blocks(probs, out, "instances", params, block, halo, on_cut=cut.append)
        assert n == whole.max()
        assert cut == []  # every object lay within its block's context: nothing to warn of
        assert np.array_equal(np.unique(out), np.arange(n + 1))
        assert same_partition(out, whole), block


def test_objects_beyond_the_halo_are_counted_once():
    # Two bars longer than block + halo: each is cut by several windows, counted once each;
    # a dot within one block is not.
    fg = np.zeros((40, 90), bool)
    fg[5:9, 2:88] = fg[20:24, 2:88] = True
    fg[30:38, 42:50] = True
    cut = []
    n = instances_in_blocks(two_class(fg), np.zeros(fg.shape, np.uint32), "instances",
                            InstanceParams(seed_distance=1.0), 20, 4, on_cut=cut.append)
    assert n == 3
    assert cut == [2]


def test_block_wise_three_class_and_store_checks():
    lab = np.zeros((30, 44), np.int32)
    for k, (y, x) in enumerate([(2, 2), (2, 10), (14, 3), (14, 20), (3, 30), (20, 33)]):
        lab[y:y + 9, x:x + 8] = k + 1  # the first two touch
    target, _ = targets_from_labels(lab, "three_class")
    probs = one_hot(target, 3)
    whole = instances_from_probabilities(probs, "three_class", InstanceParams())
    assert same_partition(whole, lab)
    out = np.zeros(lab.shape, np.uint32)
    instances_in_blocks(probs, out, "three_class", InstanceParams(), 7, 12)
    assert same_partition(out, whole)
    with pytest.raises(InputError, match="shape"):
        instances_in_blocks(probs, np.zeros((30, 40), np.uint32), "three_class",
                            InstanceParams(), 7, 12)
    with pytest.raises(InputError, match="unsigned"):
        instances_in_blocks(probs, np.zeros(lab.shape, np.int32), "three_class",
                            InstanceParams(), 7, 12)
    with pytest.raises(InputError, match="block"):
        instances_in_blocks(probs, out, "three_class", InstanceParams(), 0, 12)


def test_three_class_label_mode_is_known_wherever_label_modes_are_dispatched(tmp_path):
    from useg.cli import build_parser
    from useg.training.config import TrainConfig
    from useg.training.from_folders import labels_record, make_config
    from useg.training.loop import train
    from useg.workflows.synthetic import touching_cells

    for mode in LABEL_MODES:
        args = build_parser().parse_args(["train", "--out", "o", "--label-mode", mode])
        assert args.label_mode == mode
    assert make_config(2, label_mode="three_class", width=2, depth=1).net["classes"] == 3
    assert make_config(2, label_mode="instances", width=2, depth=1).net["classes"] == 2
    names = labels_record("three_class", 3, {})["classes"]
    assert names == ["background", "interior", "boundary"]
    # A few steps of training and validation on three classes.
    img, inst = touching_cells((64, 64), rng=0)
    sample = make_sample(img, inst, mode="three_class", w0=10, sigma=5)
    assert set(np.unique(sample.target)) == {0, 1, 2}
    cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1, "classes": 3}, tile=36,
                      iterations=2, val_every=2, log_every=1, workers=0, device="cpu",
                      augment=None, seed=1, label_mode="three_class")
    best = train(cfg, [sample], tmp_path / "run", val_samples=[sample], progress=False)
    assert best.exists()


def test_instances_mode_puts_the_border_term_on_the_gaps_between_touching_objects():
    # Two squares touching along a vertical line; the instances target carves a gap there.
    lab = np.zeros((12, 16), np.int64)
    lab[2:10, 2:8] = 1
    lab[2:10, 8:14] = 2
    image = np.zeros((1, *lab.shape), np.float32)
    with_border = make_sample(image, lab, mode="instances", w0=10.0, sigma=5.0)
    without = make_sample(image, lab, mode="instances", w0=0.0, sigma=5.0)
    gap = (lab > 0) & (with_border.target == 0)
    assert gap.any()
    term = with_border.weight - without.weight
    # On the gap the two nearest objects are each about one pixel away: the term is near w0.
    assert term[gap].min() > 10 * np.exp(-(2 + 2) ** 2 / 50)
    # It is larger there than on background far from the contact line.
    assert term[gap].min() > term[0, 0] + 3


def _dumbbell_and_gapped_pair():
    """Interior probabilities of cells that fill a 30x90 image: on the left one dumbbell-shaped
    cell (two round ends joined by a narrow neck, all confidently interior); on the right two
    cells whose membrane has a gap where the network is unsure (interior 0.6)."""
    p1 = np.full((30, 90), 0.05, np.float32)  # membrane everywhere first
    left = ball((30, 90), (15, 10), 8) | ball((30, 90), (15, 32), 8)
    left[14:17, 10:33] = True  # the neck: 3 px wide
    p1[left] = 0.95
    p1[2:28, 46:66] = 0.95
    p1[2:28, 67:88] = 0.95
    p1[12:18, 66] = 0.6  # the gap in the membrane between the right-hand cells
    return p1


def test_seed_threshold_seeds_cells_by_confidence_not_by_shape():
    p1 = _dumbbell_and_gapped_pair()
    probs = np.stack([1 - p1, p1])
    by_shape = instances_from_probabilities(probs, "instances", InstanceParams(min_size=0))
    by_confidence = instances_from_probabilities(
        probs, "instances", InstanceParams(min_size=0, seed_threshold=0.9))
    # Distance seeds cut the dumbbell at its neck; confident interiors keep it whole and cut
    # the right-hand pair at their gap, whose pixels join one of the two.
    assert np.unique(by_shape[:, :45]).size - 1 == 2
    assert np.unique(by_confidence[:, :45]).size - 1 == 1
    assert by_confidence[15, 50] != by_confidence[15, 80]
    assert set(np.unique(by_confidence[12:18, 66])) <= {by_confidence[15, 50],
                                                         by_confidence[15, 80]}
    assert np.array_equal(by_confidence > 0, p1 > 0.5)  # the foreground is the threshold's
    # The boundary target (classes interior, boundary) fills the image from the same seeds.
    filled = instances_from_probabilities(np.stack([p1, 1 - p1]), "boundary",
                                          InstanceParams(min_size=0, seed_threshold=0.9))
    assert filled.min() > 0 and filled.max() == 3
    assert same_partition(np.where(p1 > 0.5, filled, 0), by_confidence)


def test_seed_threshold_of_three_class_is_the_interior_seeds_threshold():
    target, _ = targets_from_labels(hand_labels(), "three_class")
    probs = one_hot(target, 3) * 0.7 + 0.1  # interior 0.8, boundary 0.8 where one-hot
    at_threshold = instances_from_probabilities(probs, "three_class", InstanceParams(min_size=0))
    no_seeds = instances_from_probabilities(
        probs, "three_class", InstanceParams(min_size=0, seed_threshold=0.85))
    # Above 0.85 no interior pixel is a seed: each piece of foreground is one object.
    assert no_seeds.max() == ndi.label(probs[1] + probs[2] > 0.5)[1] < at_threshold.max()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "0.9", True, float("nan")])
def test_seed_threshold_is_checked(bad):
    with pytest.raises(ModelFileError, match="seed_threshold must be a number in"):
        InstanceParams.from_dict({"seed_threshold": bad}, source="m.safetensors: instances")
    params = InstanceParams.from_dict({"seed_threshold": 0.9}, source="x")
    assert InstanceParams.from_dict(params.to_dict(), source="x") == params
    assert InstanceParams.from_dict({"seed_threshold": None}, source="x") == InstanceParams()


def test_block_wise_objects_with_seed_threshold_equal_the_whole_image():
    p1 = _dumbbell_and_gapped_pair()
    probs = np.stack([1 - p1, p1])
    params = InstanceParams(min_size=0, seed_threshold=0.9)
    whole = instances_from_probabilities(probs, "instances", params)
    for block in (7, (16, 30)):
        out = np.zeros(p1.shape, np.uint32)
        assert instances_in_blocks(probs, out, "instances", params, block, 45) == whole.max()
        assert same_partition(out, whole), block


def test_merge_below_joins_a_body_cut_by_too_many_seeds_not_two_bodies():
    # Two cells of the boundary target; the left one is a dumbbell, which distance seeds cut at
    # its neck (no boundary there), while a full membrane separates the two cells.
    p1 = np.full((30, 70), 0.05, np.float32)
    p1[[0, 29], :] = p1[:, [0, 69]] = 0.95
    p1[:, 45] = 0.95  # the membrane between the cells
    p1[0:12, 22] = p1[18:30, 22] = 0.95  # walls leaving a neck at rows 12..17
    probs = np.stack([1 - p1, p1])
    cut = instances_from_probabilities(probs, "boundary", InstanceParams(min_size=0))
    assert cut[15, 10] != cut[15, 35]  # the dumbbell cut at its neck
    joined = instances_from_probabilities(probs, "boundary",
                                          InstanceParams(min_size=0, merge_below=0.5))
    assert joined[15, 10] == joined[15, 35] != joined[15, 55]
    assert joined.max() == 2 and joined.min() > 0
    # The membrane between the cells (its faces: 0.5, 0.95 at the frame) is below 0.6 only.
    assert instances_from_probabilities(probs, "boundary",
                                        InstanceParams(min_size=0, merge_below=0.6)).max() == 1


@pytest.mark.parametrize("bad", [0, 1, 1.5, "0.5", True, float("inf")])
def test_merge_below_is_checked(bad):
    with pytest.raises(ModelFileError, match="merge_below must be a number in"):
        InstanceParams.from_dict({"merge_below": bad}, source="m.safetensors: instances")
    params = InstanceParams.from_dict({"merge_below": 0.3}, source="x")
    assert params.merge_below == 0.3
    assert InstanceParams.from_dict(params.to_dict(), source="x") == params

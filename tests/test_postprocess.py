import numpy as np
import pytest
from scipy import ndimage as ndi

from useg.errors import InputError
from useg.postprocess.segments import (
    fill_unassigned,
    probabilities_to_labels,
    relabel_sequential,
    remove_small_objects,
    threshold_components,
    watershed_segmentation,
)


def two_blobs(shape=(12, 15), col=7):
    """Interior probability: two cells separated by a one-pixel boundary column."""
    p = np.full(shape, 0.9)
    p[:, col] = 0.1
    return p


def test_threshold_components_separates_blobs_by_thin_boundary():
    p = two_blobs()
    lab = threshold_components(p, 0.5)
    assert lab.dtype == np.int32
    assert set(np.unique(lab)) == {0, 1, 2}
    assert np.all(lab[:, 7] == 0)
    assert len(np.unique(lab[:, :7])) == 1 and len(np.unique(lab[:, 8:])) == 1
    assert lab[0, 0] != lab[0, 8]


def test_threshold_components_connectivity_and_threshold_is_strict():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert threshold_components(p, connectivity=1).max() == 2
    assert threshold_components(p, connectivity=2).max() == 1
    assert threshold_components(np.full((3, 3), 0.5), 0.5).max() == 0
    with pytest.raises(InputError):
        threshold_components(p, connectivity=3)


def nearest_label_distances(labels):
    """Distance from each pixel to the closest pixel of each label (brute force)."""
    coords = np.indices(labels.shape).reshape(labels.ndim, -1).T
    out = {}
    for lab in np.unique(labels[labels > 0]):
        pts = coords[labels.ravel() == lab]
        d = np.sqrt(((coords[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(1)
        out[lab] = d.reshape(labels.shape)
    return out


@pytest.mark.parametrize("shape", [(9, 11), (5, 6, 7)])
def test_fill_assigns_each_pixel_to_a_nearest_region(shape):
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(shape) < 0.08, rng.integers(1, 4, shape), 0)
    labels[(0,) * len(shape)] = 5
    filled = fill_unassigned(labels)
    assert filled.min() > 0
    assert np.array_equal(filled[labels > 0], labels[labels > 0])
    dist = nearest_label_distances(labels)
    best = np.min(np.stack(list(dist.values())), axis=0)
    got = np.choose(np.searchsorted(sorted(dist), filled), [dist[k] for k in sorted(dist)])
    np.testing.assert_allclose(got, best)
    assert np.array_equal(fill_unassigned(np.zeros(shape, int)), np.zeros(shape, int))


def test_threshold_components_fill_covers_every_pixel_in_3d():
    p = np.stack([two_blobs(), two_blobs()])
    lab = threshold_components(p, fill=True)
    assert lab.min() > 0 and lab.max() == 2  # the two cells are continuous through z
    lab_z = threshold_components(p, connectivity=1, fill=False)
    assert lab_z.max() == 2


def test_watershed_splits_at_the_boundary_ridge():
    b = 1 - two_blobs()  # boundary probability
    b[:, :7] -= np.linspace(0, 0.05, 7)  # not flat, so the flooding order matters
    lab = watershed_segmentation(b)
    assert lab.min() > 0 and lab.max() == 2
    assert len(np.unique(lab[:, :7])) == 1 and len(np.unique(lab[:, 8:])) == 1
    assert lab[0, 0] != lab[0, 14]
    # Every region keeps its seed (the interior component) and is connected.
    seeds, n = ndi.label(b < 0.5)
    for k in range(1, n + 1):
        assert len(np.unique(lab[seeds == k])) == 1
    for k in np.unique(lab):
        assert ndi.label(lab == k)[1] == 1


def minimax_costs(levels, seed_mask):
    """Lowest possible highest level on a 4-connected path from the seed, the seed's own level
    not counted (markers are imposed minima), by Dijkstra."""
    import heapq

    cost = np.full(levels.shape, np.inf)
    heap = [(-1.0, p) for p in zip(*np.nonzero(seed_mask), strict=True)]
    for c, p in heap:
        cost[p] = c
    heapq.heapify(heap)
    while heap:
        c, (y, x) = heapq.heappop(heap)
        if c > cost[y, x]:
            continue
        for q in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= q[0] < levels.shape[0] and 0 <= q[1] < levels.shape[1]:
                new = max(c, levels[q])
                if new < cost[q]:
                    cost[q] = new
                    heapq.heappush(heap, (new, q))
    return cost


def test_watershed_gives_each_pixel_a_seed_of_lowest_pass():
    # The defining property of watershed by flooding, on levels the function uses as they are.
    rng = np.random.default_rng(2)
    for _ in range(4):
        levels = ndi.gaussian_filter(rng.random((16, 18)), 1.5)
        levels = np.round((levels - levels.min()) / np.ptp(levels) * 255) / 255
        markers = np.zeros(levels.shape, np.int32)
        markers.flat[rng.choice(markers.size, 4, replace=False)] = [1, 2, 3, 4]
        lab = watershed_segmentation(levels, markers=markers)
        assert lab.min() > 0
        costs = np.stack([minimax_costs(levels, markers == k) for k in range(1, 5)])
        got = np.take_along_axis(costs, (lab - 1)[None], 0)[0]
        np.testing.assert_array_equal(got, costs.min(0))
        for k in range(1, 5):
            assert ndi.label(lab == k)[1] == 1


def test_watershed_with_markers_mask_and_no_seeds():
    b = 1 - two_blobs()
    markers = np.zeros(b.shape, np.int32)
    markers[2, 2] = 7
    markers[9, 12] = 3
    lab = watershed_segmentation(b, markers=markers)
    assert set(np.unique(lab)) == {3, 7}
    assert np.all(lab[:, :7] == 7) and np.all(lab[:, 8:] == 3)
    mask = np.ones(b.shape, bool)
    mask[:, 12:] = False
    lab = watershed_segmentation(b, mask=mask)
    assert np.all(lab[:, 12:] == 0) and lab[:, :12].min() > 0
    assert not watershed_segmentation(np.ones((4, 4))).any()
    with pytest.raises(InputError):
        watershed_segmentation(b, markers=-markers)


def disc(shape, center, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


@pytest.mark.parametrize("ndim", [2, 3])
def test_watershed_distance_seeds_split_touching_round_objects(ndim):
    shape = (24,) * ndim if ndim == 2 else (16, 16, 24)
    c1 = (8,) * (ndim - 1) + (7,)
    c2 = (8,) * (ndim - 1) + (16,)
    fg = disc(shape, c1, 5) | disc(shape, c2, 5)  # touching discs / balls
    assert ndi.label(fg)[1] == 1
    boundary = np.where(fg, 0.0, 1.0)
    lab = watershed_segmentation(boundary, min_seed_distance=4, mask=fg)
    assert lab.max() == 2
    assert np.all((lab > 0) == fg)
    assert lab[c1] != lab[c2]


def test_remove_small_objects_labels_and_masks():
    lab = np.zeros((6, 6), int)
    lab[0, 0] = 1
    lab[2:4, 2:4] = 2
    lab[5, 0:3] = 3
    out = remove_small_objects(lab, 3)
    assert set(np.unique(out)) == {0, 2, 3}
    assert np.array_equal(out[lab == 2], lab[lab == 2])
    mask = remove_small_objects(lab > 0, 4)
    assert mask.dtype == bool and np.array_equal(mask, lab == 2)
    vol = np.zeros((3, 4, 4), bool)
    vol[0, 0, 0] = True
    vol[:, 2:, 2:] = True
    assert np.array_equal(
        remove_small_objects(vol, 2), vol & ~np.eye(1, 48, 0, bool).reshape(vol.shape)
    )


def test_relabel_sequential_keeps_order_and_zero():
    lab = np.array([[0, 40, 40], [7, 0, 1000]])
    out = relabel_sequential(lab)
    assert np.array_equal(out, [[0, 2, 2], [1, 0, 3]])
    assert np.array_equal(relabel_sequential(np.array([5, 5, 9])), [1, 1, 2])
    with pytest.raises(InputError):
        relabel_sequential(np.array([-1, 2]))


def test_probabilities_to_labels():
    rng = np.random.default_rng(1)
    probs = rng.random((4, 3, 5, 6))
    out = probabilities_to_labels(probs)
    assert out.dtype == np.uint8 and out.shape == (3, 5, 6)
    assert np.array_equal(out, np.argmax(probs, axis=0))
    single = probabilities_to_labels(np.array([[[0.2, 0.7], [0.5, 0.9]]]))
    assert np.array_equal(single, [[0, 1], [0, 1]])
    with pytest.raises(InputError):
        probabilities_to_labels(np.zeros(5))

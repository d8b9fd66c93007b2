"""Tests of useg.workflows.synthetic: determinism, geometry of cells and membranes, ranges, 3D,
speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from useg.errors import InputError
from useg.io import list_images, pair_by_stem, read_image, read_json, read_labels
from useg.workflows.synthetic import _partition, _seeds, _smooth_noise, make_dataset, touching_cells


def _full(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, bool)


def _separated(instances: np.ndarray) -> bool:
    """True when no two pixels of different cells are neighbours (8/26-connectivity)."""
    big = 2**40  # ndimage passes cval as a float: stay well inside its exact integers
    lab = instances.astype(np.int64)
    hi = ndimage.maximum_filter(lab, footprint=_full(lab.ndim), mode="constant", cval=0)
    lo = ndimage.minimum_filter(
        np.where(lab > 0, lab, big), footprint=_full(lab.ndim), mode="constant", cval=big
    )
    cell = lab > 0
    return bool(np.all(hi[cell] == lab[cell]) and np.all(lo[cell] == lab[cell]))


def _touching_fraction(instances: np.ndarray, gap: int) -> float:
    """Fraction of cells with another cell within Chebyshev distance ``gap + 1``."""
    touching = 0
    objects = ndimage.find_objects(instances)
    for k, box in enumerate(objects, start=1):
        box = tuple(
            slice(max(0, s.start - gap - 1), s.stop + gap + 1) for s in box
        )
        crop = instances[box]
        grown = ndimage.binary_dilation(crop == k, _full(crop.ndim), iterations=gap + 1)
        touching += bool(np.any((crop[grown] > 0) & (crop[grown] != k)))
    return touching / len(objects)


def test_deterministic_given_seed():
    a_img, a_lab = touching_cells((96, 80), rng=7)
    b_img, b_lab = touching_cells((96, 80), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, c_lab = touching_cells((96, 80), rng=8)
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_img, c_img)


def test_ranges_types_and_ids():
    image, instances = touching_cells((128, 128), rng=0)
    assert image.shape == (1, 128, 128) and image.dtype == np.float32
    assert instances.shape == (128, 128) and instances.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.1  # not flat
    k = int(instances.max())
    assert np.array_equal(np.unique(instances), np.arange(k + 1))  # ids 1..K, no gaps
    # Each cell is one connected piece.
    for i in range(1, k + 1):
        assert ndimage.label(instances == i, _full(2))[1] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cells_never_touch_directly(seed):
    _, instances = touching_cells((128, 128), rng=seed)
    assert _separated(instances)


def test_most_cells_touch_across_thin_membranes():
    _, instances = touching_cells((256, 256), rng=3)
    assert instances.max() > 60
    assert _touching_fraction(instances, gap=2) >= 0.9
    _, thin = touching_cells((256, 256), membrane_width=1, rng=3)
    assert _touching_fraction(thin, gap=1) >= 0.9
    # Not trivially true: with a zero gap (cells touching directly) no cell qualifies.
    assert _touching_fraction(thin, gap=0) == 0.0


def test_membranes_are_thin_and_widths_differ():
    one_img, one = touching_cells((256, 256), membrane_width=1, background=0.0, rng=4)
    _, two = touching_cells((256, 256), membrane_width=2, background=0.0, rng=4)
    zero1, zero2 = one == 0, two == 0
    # The same cells (the partition comes first from the seed), with wider membranes.
    assert np.all(zero2[zero1])
    ratio = zero2.mean() / zero1.mean()
    assert 1.5 < ratio < 2.5, ratio
    for zero in (zero1, zero2):
        # Membranes at most 2 wide: after two erosions by a 3x3 square nothing is left.
        assert ndimage.binary_erosion(zero, _full(2), iterations=2).mean() < 1e-3
        # Nearly every membrane pixel borders a cell.
        near_cell = ndimage.binary_dilation(~zero, _full(2))
        assert near_cell[zero].mean() > 0.98
    # Dark membranes in a bright cell body.
    assert one_img[0][~zero1].mean() > one_img[0][zero1].mean() + 0.2


def test_background_regions():
    _, none = touching_cells((256, 256), background=0.0, rng=5)
    _, some = touching_cells((256, 256), background=0.2, rng=5)
    # Only background regions are wide enough to survive two erosions.
    assert ndimage.binary_erosion(none == 0, _full(2), iterations=2).mean() < 1e-3
    assert ndimage.binary_erosion(some == 0, _full(2), iterations=2).mean() > 0.05


def test_n_cells_is_respected():
    _, instances = touching_cells((128, 128), n_cells=20, background=0.0, rng=1)
    assert 15 <= instances.max() <= 20


def test_3d_volume():
    image, instances = touching_cells((12, 40, 48), rng=2)
    assert image.shape == (1, 12, 40, 48) and image.dtype == np.float32
    assert instances.shape == (12, 40, 48) and instances.dtype == np.int32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert instances.max() >= 5
    assert _separated(instances)
    assert _touching_fraction(instances, gap=2) >= 0.8
    # The membranes are 3D sheets, not 2D lines copied along Z.
    assert not np.array_equal(instances[0] > 0, instances[-1] > 0)


def test_partition_matches_brute_force():
    rng = np.random.default_rng(11)
    for shape in [(45, 70), (18, 25, 33)]:
        seeds = _seeds(shape, 25, rng)
        weights = rng.uniform(0, 60, len(seeds))
        warp = np.stack([_smooth_noise(shape, 4.0, rng) for _ in shape]) * 2.5
        got = _partition(shape, seeds, weights, warp)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")) + warp
        expand = (slice(None),) + (np.newaxis,) * len(shape)
        power = [np.sum((grid - s[expand]) ** 2, axis=0) - w for s, w in zip(seeds, weights,
                                                                              strict=True)]
        np.testing.assert_array_equal(got, np.argmin(np.stack(power), axis=0) + 1)


def test_seeds_keep_their_distance():
    seeds = _seeds((100, 100), 40, np.random.default_rng(0))
    assert len(seeds) == 40
    d = np.sqrt(((seeds[:, None] - seeds[None]) ** 2).sum(-1)) + np.eye(40) * 1e9
    assert d.min() >= 0.5 * np.sqrt(100 * 100 / 40)


def test_speed_256():
    touching_cells((256, 256), rng=0)  # warm-up (imports, allocator)
    best = min(_timed(lambda: touching_cells((256, 256), rng=1)) for _ in range(3))
    assert best < 0.5, f"{best:.3f} s"


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (5,)}, {"shape": (2, 2, 2, 2)}, {"membrane_width": 3}, {"membrane_width": (0, 2)},
     {"background": 1.0}, {"blur": -1.0}, {"n_cells": 0}],
)
def test_bad_arguments(kwargs):
    kwargs = {"shape": (32, 32), **kwargs}
    with pytest.raises(InputError):
        touching_cells(**kwargs)


def test_make_dataset_binary(tmp_path):
    pairs = make_dataset(tmp_path / "ds", n_images=3, shape=(64, 72), seed=5)
    assert [(a.name, b.name) for a, b in pairs] == [
        (f"synth_00{i}.tif", f"synth_00{i}.tif") for i in range(3)
    ]
    listed = pair_by_stem(list_images(tmp_path / "ds" / "images"),
                          list_images(tmp_path / "ds" / "labels"))
    assert listed == pairs
    # Image i is touching_cells with the i-th spawned seed.
    child = np.random.SeedSequence(5).spawn(3)[2]
    expected_img, expected_lab = touching_cells((64, 72), rng=np.random.default_rng(child))
    img, meta = read_image(pairs[2][0])
    assert img.shape == (1, 64, 72) and img.dtype == np.uint8 and meta["axes"] == "CYX"
    np.testing.assert_array_equal(img[0], np.round(expected_img[0] * 255).astype(np.uint8))
    lab, _ = read_labels(pairs[2][1])
    assert lab.dtype == np.uint8 and set(np.unique(lab).tolist()) == {0, 255}
    np.testing.assert_array_equal(lab == 255, expected_lab > 0)
    info = read_json(tmp_path / "ds" / "synthetic.json")
    assert info["seed"] == 5 and info["labels"] == "binary" and info["shape"] == [64, 72]
    # Deterministic: the same call again gives the same arrays.
    again = make_dataset(tmp_path / "ds2", n_images=3, shape=(64, 72), seed=5)
    for (a, b), (c, d) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(read_image(a)[0], read_image(c)[0])
        np.testing.assert_array_equal(read_labels(b)[0], read_labels(d)[0])


def test_make_dataset_instances_3d_and_existing_folder(tmp_path):
    pairs = make_dataset(tmp_path, n_images=1, shape=(8, 32, 32), seed=2, labels="instances")
    img, meta = read_image(pairs[0][0])
    assert img.shape == (1, 8, 32, 32) and meta["axes"] == "CZYX"
    lab, lmeta = read_labels(pairs[0][1])
    assert lab.dtype == np.uint16 and lmeta["axes"] == "ZYX"
    child = np.random.SeedSequence(2).spawn(1)[0]
    expected = touching_cells((8, 32, 32), rng=np.random.default_rng(child))[1]
    np.testing.assert_array_equal(lab, expected)
    with pytest.raises(InputError, match="not empty"):
        make_dataset(tmp_path, n_images=1, shape=(8, 32, 32), seed=2)
    make_dataset(tmp_path, n_images=1, shape=(8, 32, 32), seed=3, exist_ok=True)
    with pytest.raises(InputError, match="labels must be"):
        make_dataset(tmp_path / "x", labels="rgb")

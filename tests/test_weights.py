"""Tests of useg.training.weights against brute-force references and known values."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from useg.errors import ConfigError, InputError
from useg.io.datasets import dataset
from useg.training.weights import (
    border_cutoff,
    border_weight_map,
    class_balance_weights,
    instances_from_binary,
)


def brute_force_border_term(instances, w0, sigma, spacing=None, background=0):
    """The definition: one full distance transform per object, sorted per pixel."""
    ids = [v for v in np.unique(instances) if v != background]
    dists = np.stack(
        [ndi.distance_transform_edt(instances != v, sampling=spacing) for v in ids]
        + [np.full(instances.shape, np.inf)] * 2
    )
    dists.sort(axis=0)
    total = dists[0] + dists[1]
    term = w0 * np.exp(-(total**2) / (2 * sigma**2))
    term[instances != background] = 0
    return term, total


def random_instances(rng, shape, n_objects, spacing=None, gap=1.5, drop=0.0):
    """Voronoi cells of random seeds with background gaps between them (physical units)."""
    spacing = np.ones(len(shape)) if spacing is None else np.asarray(spacing, float)
    coords = np.stack(np.indices(shape), -1) * spacing
    seeds = rng.uniform(0, 1, (n_objects, len(shape))) * np.array(shape) * spacing
    d = np.linalg.norm(coords[..., None, :] - seeds, axis=-1)
    order = np.argsort(d, axis=-1)
    d_sorted = np.take_along_axis(d, order, -1)
    inst = order[..., 0] + 1
    inst[d_sorted[..., 1] - d_sorted[..., 0] < gap] = 0
    inst[rng.uniform(size=shape) < drop] = 0
    return inst


# ---------------------------------------------------------------- class_balance_weights


def test_class_balance_known_values():
    w = class_balance_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0], rtol=1e-6)


def test_class_balance_mean_one_and_equal_class_totals():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 2, 5], p=[0.6, 0.25, 0.1, 0.05], size=(30, 40))
    labels[:3] = -1
    w = class_balance_weights(labels, ignore_index=-1)
    assert w.dtype == np.float32
    assert (w[labels == -1] == 0).all()
    labelled = labels != -1
    assert w[labelled].mean() == pytest.approx(1.0, rel=1e-6)
    totals = [w[labels == c].sum() for c in (0, 1, 2, 5)]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    # one weight per class
    for c in (0, 1, 2, 5):
        assert np.unique(w[labels == c]).size == 1


def test_class_balance_all_ignored_is_zero():
    w = class_balance_weights(np.full((4, 4), 7), ignore_index=7)
    assert (w == 0).all()


def test_class_balance_rejects_float():
    with pytest.raises(InputError):
        class_balance_weights(np.zeros((3, 3)))


# ---------------------------------------------------------------- instances_from_binary


def test_instances_from_binary_isbi_convention_and_connectivity():
    m = np.array(
        [
            [255, 255, 0, 0],
            [255, 255, 0, 0],
            [0, 0, 255, 0],
            [0, 0, 0, 255],
        ],
        np.uint8,
    )
    faces = instances_from_binary(m, connectivity=1)
    assert faces.dtype == np.int32
    assert faces.max() == 3
    assert (faces[m == 0] == 0).all()
    assert len({faces[0, 0], faces[2, 2], faces[3, 3]}) == 3
    corners = instances_from_binary(m, connectivity=2)
    assert corners.max() == 1


def test_instances_from_binary_3d():
    m = np.zeros((3, 4, 4), bool)
    m[0, :2, :2] = True
    m[2, 2:, 2:] = True
    m[1, 0, 0] = True  # joins nothing on the far block
    inst = instances_from_binary(m)
    assert inst.max() == 2
    assert inst[1, 0, 0] == inst[0, 0, 0]


def test_instances_from_binary_bad_connectivity():
    with pytest.raises(ConfigError):
        instances_from_binary(np.ones((3, 3)), connectivity=3)


# ---------------------------------------------------------------- border_weight_map


def check_against_brute_force(inst, w0, sigma, spacing=None, background=0, tol=1e-4):
    term, total = brute_force_border_term(inst, w0, sigma, spacing, background)
    is_bg = inst == background
    wc = class_balance_weights(is_bg.astype(np.uint8))
    got = border_weight_map(
        inst, w0=w0, sigma=sigma, spacing=spacing, background=background, tol=tol
    )
    assert got.dtype == np.float32 and got.shape == inst.shape
    expected = wc + term
    inside = total <= border_cutoff(sigma, tol)
    # The cutoff must actually cut something and leave a lot, or the test proves little.
    assert inside[is_bg].any()
    np.testing.assert_allclose(got[inside], expected[inside], rtol=0, atol=1e-4)
    # Beyond the documented cutoff the term is dropped; it is below tol * w0 there.
    np.testing.assert_allclose(got[~inside], wc[~inside], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol * w0 + 1e-5)
    return inside


@pytest.mark.parametrize("seed", range(4))
def test_border_weights_match_brute_force_2d(seed):
    rng = np.random.default_rng(seed)
    inst = random_instances(rng, (36, 44), n_objects=8, drop=0.05)
    inside = check_against_brute_force(inst, w0=10.0, sigma=2.5)
    assert not inside.all()  # the windows are smaller than the image


@pytest.mark.parametrize("seed", range(3))
def test_border_weights_match_brute_force_2d_anisotropic(seed):
    rng = np.random.default_rng(10 + seed)
    spacing = (1.0, 0.6)
    inst = random_instances(rng, (30, 50), n_objects=7, spacing=spacing, gap=1.2)
    check_against_brute_force(inst, w0=5.0, sigma=2.0, spacing=spacing)


@pytest.mark.parametrize("seed", range(3))
def test_border_weights_match_brute_force_3d_anisotropic(seed):
    rng = np.random.default_rng(20 + seed)
    spacing = (2.0, 1.0, 0.8)
    inst = random_instances(rng, (10, 16, 18), n_objects=6, spacing=spacing, gap=1.5)
    check_against_brute_force(inst, w0=10.0, sigma=2.0, spacing=spacing)


def test_border_weights_isotropic_spacing_is_a_change_of_units():
    rng = np.random.default_rng(7)
    inst = random_instances(rng, (12, 20, 20), n_objects=6)
    check_against_brute_force(inst, w0=10.0, sigma=1.2, spacing=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(
        border_weight_map(inst, sigma=1.2, spacing=0.5),
        border_weight_map(inst, sigma=2.4),
        rtol=0,
        atol=1e-5,
    )


def test_border_weights_match_brute_force_1d():
    inst = np.array([0, 1, 1, 0, 0, 2, 0, 3, 3, 0, 0, 0, 0, 0, 4, 0])
    check_against_brute_force(inst, w0=10.0, sigma=1.5, tol=1e-3)


def test_border_weights_whole_image_without_cutoff_effect():
    # sigma large against the image: every pixel is within the cutoff.
    rng = np.random.default_rng(3)
    inst = random_instances(rng, (24, 24), n_objects=5)
    inside = check_against_brute_force(inst, w0=10.0, sigma=8.0)
    assert inside[inst == 0].all()


def test_border_weights_arbitrary_ids_and_background_value():
    rng = np.random.default_rng(4)
    inst = random_instances(rng, (30, 30), n_objects=6)
    shuffled = np.where(inst == 0, -3, inst * 1_000_003 - 500)
    a = border_weight_map(inst, sigma=3.0)
    b = border_weight_map(shuffled, sigma=3.0, background=-3)
    np.testing.assert_array_equal(a, b)


def test_touching_discs_gap_weight():
    yy, xx = np.indices((64, 80))
    inst = np.zeros((64, 80), np.int32)
    inst[(yy - 32) ** 2 + (xx - 21) ** 2 <= 14**2] = 1
    inst[(yy - 32) ** 2 + (xx - 51) ** 2 <= 14**2] = 2  # one-pixel gap at column 36
    assert (inst[32, 35], inst[32, 36], inst[32, 37]) == (1, 0, 2)
    w0, sigma = 10.0, 5.0
    wc = class_balance_weights((inst == 0).astype(np.uint8))
    w = border_weight_map(inst, w0=w0, sigma=sigma)
    border = w[32, 36] - wc[32, 36]
    assert border == pytest.approx(w0 * np.exp(-4 / (2 * sigma**2)), rel=1e-5)
    assert border > 0.9 * w0
    # Far from the gap the term vanishes; object pixels keep their class weight.
    assert w[0, 0] - wc[0, 0] < 1e-3 * w0
    assert w[63, 79] - wc[63, 79] < 1e-3 * w0
    np.testing.assert_array_equal(w[inst > 0], wc[inst > 0])
    # The gap column is the ridge: weights fall off above and below along the gap.
    assert w[32, 36] > w[20, 36] > w[5, 36]


def test_class_weights_options():
    inst = np.zeros((20, 20), int)
    inst[2:18, 2:9] = 1
    inst[2:18, 10:18] = 2
    plain = border_weight_map(inst, class_weights=False)
    assert (plain[inst > 0] == 1).all()
    given = np.full(inst.shape, 0.25, np.float32)
    custom = border_weight_map(inst, class_weights=given)
    np.testing.assert_allclose(custom - 0.25, plain - 1.0, atol=1e-6)
    assert (given == 0.25).all()  # the caller's array is not modified
    assert (border_weight_map(inst, w0=0.0, class_weights=False) == 1).all()
    with pytest.raises(InputError):
        border_weight_map(inst, class_weights=np.ones((3, 3)))


def test_single_object_has_no_border_term():
    inst = np.zeros((16, 16), int)
    inst[4:8, 4:8] = 1
    w = border_weight_map(inst, class_weights=False)
    assert (w == 1).all()


def test_border_weight_map_input_checks():
    inst = np.zeros((8, 8), int)
    with pytest.raises(InputError):
        border_weight_map(inst.astype(float))
    with pytest.raises(ConfigError):
        border_weight_map(inst, sigma=0)
    with pytest.raises(ConfigError):
        border_weight_map(inst, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError):
        border_weight_map(inst, spacing=(1.0, -1.0))


def test_border_weight_map_is_fast_for_many_objects():
    rng = np.random.default_rng(0)
    n, k = 512, 300
    seeds = rng.uniform(0, n, (k, 2))
    # Voronoi labels by nearest seed, through a coarse-to-fine KD-free trick: one EDT per
    # seed is what we are avoiding, so label by EDT of the seed points instead.
    marker = np.zeros((n, n), np.int32)
    marker[seeds[:, 0].astype(int), seeds[:, 1].astype(int)] = np.arange(1, k + 1)
    _, idx = ndi.distance_transform_edt(marker == 0, return_indices=True)
    inst = marker[tuple(idx)]
    edges = ndi.maximum_filter(inst, 3) != ndi.minimum_filter(inst, 3)
    inst[edges] = 0
    border_weight_map(inst)  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        border_weight_map(inst)
        times.append(time.perf_counter() - t0)
    # Budget for a slow shared core; the naive one-EDT-per-object version takes seconds.
    assert min(times) < 0.25


def test_isbi_labels():
    root = dataset("isbi2012")
    if root is None:
        pytest.skip("isbi2012 not found; set USEG_DATA")
    from PIL import Image

    labels = np.array(Image.open(root / "train" / "labels" / "0.png"))
    inst = instances_from_binary(labels)
    w = border_weight_map(inst)
    membrane = labels == 0
    assert inst.max() > 20
    # Thin membranes between cells get the large border term, cell interiors never do.
    assert np.median(w[membrane]) > 3 * np.median(w[~membrane])
    assert np.unique(w[~membrane]).size == 1

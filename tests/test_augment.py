"""Tests of useg.training.augment: exact identities, independent SciPy references and pinned
conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from useg.errors import ConfigError, InputError
from useg.training.augment import (
    AugmentConfig,
    DeformParams,
    GrayParams,
    RandomAugment,
    adjust_gray,
    augment_sample,
    control_grid_shape,
    deform,
    dense_displacement,
    draw_deform_params,
    draw_gray_params,
    draw_params,
    rotation_matrix,
    sampling_coordinates,
    spline_matrix,
)


def params(ndim, angle=0.0, plane=(0, 1), scale=None, flips=None, shift=None, disp=None):
    rot = rotation_matrix(ndim, angle, plane)
    return DeformParams(
        rotation=tuple(tuple(r) for r in rot.tolist()),
        scale=tuple(scale or (1.0,) * ndim),
        flips=tuple(flips or (False,) * ndim),
        shift=tuple(shift or (0.0,) * ndim),
        displacement=disp,
    )


def reference_coordinates(spatial, angle, plane, scale, flips, shift, control):
    """Source positions written out from the documented formula, with SciPy for the spline."""
    ndim = len(spatial)
    centre = (np.array(spatial) - 1) / 2.0
    rot = np.eye(ndim)
    a, b = plane
    rot[a, a] = rot[b, b] = math.cos(angle)
    rot[a, b], rot[b, a] = -math.sin(angle), math.sin(angle)
    sampling = np.diag(np.where(flips, -1.0, 1.0)) @ np.diag(1 / np.array(scale)) @ rot.T
    out = np.indices(spatial, dtype=np.float64)
    q = out.reshape(ndim, -1) - centre[:, None] - np.array(shift)[:, None]
    src = (sampling @ q + centre[:, None]).reshape(out.shape)
    if control is not None:
        grid = np.array(control.shape[1:])
        knots = out * ((grid - 1) / (np.array(spatial) - 1)).reshape((ndim,) + (1,) * ndim)
        for c in range(ndim):
            src[c] += ndi.map_coordinates(control[c], knots, order=3, mode="mirror")
    return src


# ----------------------------------------------------------------------------- identity


@pytest.mark.parametrize("shape", [(3, 40, 40), (1, 24, 32, 32), (2, 7, 9, 1)])
def test_identity_is_exact(shape):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=g)
    spatial = shape[1:]
    labels = torch.randint(0, 6, spatial, generator=g)
    weights = torch.rand(spatial, generator=g)
    ndim = len(spatial)
    zero = torch.zeros((ndim,) + (3,) * ndim, dtype=torch.float64)
    for p in (DeformParams.identity(ndim), params(ndim, disp=zero)):
        out, lab, w = deform(image, labels, weights, p)
        assert out.shape == image.shape and lab.shape == labels.shape
        torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
        assert torch.equal(lab, labels)
        assert torch.equal(w, weights)
        assert lab.dtype == labels.dtype and w.dtype == weights.dtype


def test_identity_gray_is_exact():
    image = torch.rand(2, 9, 11)
    assert torch.equal(adjust_gray(image, GrayParams()), image)


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_displacement_matches_scipy_cubic_spline(ndim):
    rng = np.random.default_rng(ndim)
    grid = (3, 4, 5)[:ndim]
    spatial = (17, 12, 23)[:ndim]
    control = rng.normal(size=(ndim, *grid))
    got = dense_displacement(torch.from_numpy(control), spatial, dtype=torch.float64).numpy()
    knots = np.indices(spatial, dtype=np.float64)
    for a in range(ndim):
        knots[a] *= (grid[a] - 1) / (spatial[a] - 1)
    for c in range(ndim):
        ref = ndi.map_coordinates(control[c], knots, order=3, mode="mirror")
        np.testing.assert_allclose(got[c], ref, atol=1e-10)
    # passes through the control values at the control points
    corner = tuple(0 for _ in range(ndim))
    np.testing.assert_allclose(got[(slice(None), *corner)], control[(slice(None), *corner)])


def test_spline_matrix_interpolates_knots():
    for n in (2, 3, 6):
        np.testing.assert_allclose(
            spline_matrix(n, np.arange(n, dtype=float)), np.eye(n), atol=1e-12
        )
        m = spline_matrix(n, np.linspace(0, n - 1, 50))
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)  # reproduces constants


def test_bilinear_matches_scipy_map_coordinates_2d():
    rng = np.random.default_rng(1)
    spatial = (23, 31)
    image = rng.random((2, *spatial))
    labels = rng.integers(0, 4, spatial)
    weights = rng.random(spatial)
    control = rng.normal(scale=3.0, size=(2, 3, 3))
    angle, scale, flips, shift = 0.4, (1.1, 0.8), (False, True), (1.5, -2.0)
    p = params(2, angle, (0, 1), scale, flips, shift, torch.from_numpy(control))
    src = reference_coordinates(spatial, angle, (0, 1), scale, flips, shift, control)
    coords = sampling_coordinates(p, spatial, dtype=torch.float64).numpy()
    np.testing.assert_allclose(coords, src, atol=1e-9)

    out, lab, w = deform(
        torch.from_numpy(image), torch.from_numpy(labels), torch.from_numpy(weights), p
    )
    for c in range(2):
        ref = ndi.map_coordinates(image[c], src, order=1, mode="mirror")
        np.testing.assert_allclose(out[c].numpy(), ref, atol=1e-6)
    # nearest neighbour for labels and weights, from the same voxel; outside -> ignore / 0
    idx = np.rint(src).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(spatial)[:, None, None]), axis=0)
    assert 0 < inside.mean() < 1  # the case reaches outside the image
    clipped = tuple(np.clip(idx[a], 0, spatial[a] - 1) for a in range(2))
    np.testing.assert_array_equal(lab.numpy(), np.where(inside, labels[clipped], -1))
    np.testing.assert_array_equal(w.numpy(), np.where(inside, weights[clipped], 0.0))


def test_trilinear_matches_scipy_map_coordinates_3d():
    rng = np.random.default_rng(2)
    spatial = (9, 14, 12)
    image = rng.random((1, *spatial))
    control = rng.normal(scale=1.5, size=(3, 3, 4, 3))
    angle, scale, shift = -0.7, (1.0, 1.2, 1.2), (0.0, 0.5, 1.0)
    p = params(3, angle, (1, 2), scale, None, shift, torch.from_numpy(control))
    src = reference_coordinates(spatial, angle, (1, 2), scale, (False,) * 3, shift, control)
    out, _, _ = deform(torch.from_numpy(image), params=p)
    ref = ndi.map_coordinates(image[0], src, order=1, mode="mirror")
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-6)


def test_float32_matches_float64():
    rng = np.random.default_rng(3)
    image = rng.random((1, 30, 30))
    p = params(2, 0.3, disp=torch.from_numpy(rng.normal(scale=4, size=(2, 3, 3))))
    a, _, _ = deform(torch.from_numpy(image), params=p)
    b, _, _ = deform(torch.from_numpy(image).float(), params=p)
    np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4)


# ----------------------------------------------------------------------------- conventions


def test_displacement_along_axis0_reads_along_axis0():
    image = torch.rand(1, 20, 16)
    disp = torch.zeros(2, 3, 3, dtype=torch.float64)
    disp[0] = 3.0
    out, _, _ = deform(image, params=params(2, disp=disp))
    torch.testing.assert_close(out[0, :-3], image[0, 3:], atol=1e-5, rtol=0)


def test_shift_moves_content_forward():
    labels = torch.arange(12 * 10).reshape(12, 10)
    _, lab, _ = deform(torch.zeros(1, 12, 10), labels, params=params(2, shift=(0.0, 2.0)))
    assert torch.equal(lab[:, 2:], labels[:, :-2])
    assert (lab[:, :2] == -1).all()


def test_rotation_direction_and_flips_and_scale():
    n = 21  # odd: the centre (10, 10) is a voxel and 90 degree turns map voxels to voxels
    labels = torch.zeros(n, n, dtype=torch.long)
    labels[15, 10] = 1  # below the centre (axis 0 is Y, pointing down)
    img = torch.zeros(1, n, n)
    _, lab, _ = deform(img, labels, params=params(2, math.pi / 2, (0, 1)))
    assert lab[10, 15] == 1 and lab.sum() == 1  # moved to the right: counter-clockwise on screen
    _, lab, _ = deform(img, labels, params=params(2, flips=(True, False)))
    assert lab[5, 10] == 1 and lab.sum() == 1
    bar = torch.zeros(n, n, dtype=torch.long)
    bar[14:17, 10] = 1
    _, lab, _ = deform(img, bar, params=params(2, scale=(2.0, 1.0)))
    assert (lab[17:21, 10] == 1).all() and (lab == 1).sum() == 4  # enlarged along axis 0 only
    # 3D: rotation in the (Y, X) plane leaves Z alone
    vol = torch.zeros(5, n, n, dtype=torch.long)
    vol[1, 15, 10] = 1
    _, lab, _ = deform(torch.zeros(1, 5, n, n), vol, params=params(3, math.pi / 2, (1, 2)))
    assert lab[1, 10, 15] == 1 and lab.sum() == 1


# ----------------------------------------------------------------------------- labels, crops


def test_labels_keep_their_values_and_share_voxels_with_weights():
    g = torch.Generator().manual_seed(5)
    spatial = (33, 29)
    values = torch.tensor([0, 3, 7])
    labels = values[torch.randint(0, 3, spatial, generator=g)]
    code = torch.arange(labels.numel(), dtype=torch.float32).reshape(spatial)
    weights = code * 10 + labels  # encodes the source voxel and its label
    aug = RandomAugment(AugmentConfig(scale=(0.7, 0.8), gray=False))
    for _ in range(5):
        out, lab, w = aug(torch.rand(1, *spatial), labels, weights, generator=g)
        assert set(lab.unique().tolist()) <= {0, 3, 7, -1}
        inside = lab != -1
        assert (~inside).any() and inside.any()
        assert (w[~inside] == 0).all()
        assert torch.equal(torch.remainder(w[inside], 10).long(), lab[inside])
        assert set(w[inside].tolist()) <= set(weights.flatten().tolist())


def test_unsigned_labels_can_hold_ignore():
    labels = torch.ones(10, 10, dtype=torch.uint8)
    _, lab, _ = deform(torch.zeros(1, 10, 10), labels, params=params(2, shift=(3.0, 0.0)))
    assert lab.dtype == torch.int64 and (lab[:3] == -1).all() and (lab[3:] == 1).all()


def test_large_label_ids_are_exact():
    labels = torch.arange(100).reshape(10, 10) + 2**30
    _, lab, _ = deform(torch.zeros(1, 10, 10), labels)
    assert torch.equal(lab, labels)


@pytest.mark.parametrize("ndim", [2, 3])
def test_centred_crops_share_the_transform(ndim):
    g = torch.Generator().manual_seed(ndim)
    spatial = (30, 27, 26)[:ndim]
    out_shape = (22, 21, 20)[:ndim]
    label_shape = (10, 9, 12)[:ndim]
    image = torch.rand(2, *spatial, generator=g)
    labels = torch.randint(0, 5, spatial, generator=g)
    p = draw_deform_params(g, spatial, AugmentConfig(elastic_sigma=2.0, grid_shape=(4,) * ndim))
    full_img, full_lab, _ = deform(image, labels, params=p)
    img, lab, _ = deform(image, labels, params=p, out_shape=out_shape, label_shape=label_shape)

    def crop(x, shape, lead=0):
        box = tuple(
            slice((s - c) // 2, (s - c) // 2 + c) for s, c in zip(spatial, shape, strict=True)
        )
        return x[(slice(None),) * lead + box]

    torch.testing.assert_close(img, crop(full_img, out_shape, 1), atol=1e-5, rtol=0)
    assert (lab != crop(full_lab, label_shape)).float().mean() < 0.01  # rounding ties only
    # label crop larger than the image crop is computed on its own grid
    _, lab2, _ = deform(image, labels, params=p, out_shape=label_shape, label_shape=out_shape)
    assert (lab2 != crop(full_lab, out_shape)).float().mean() < 0.01


def test_label_crop_equals_cropping_the_full_tile_exactly():
    # The training stream resamples labels and weights only on the network's output region; with
    # an even size difference that must give exactly the crop of resampling the whole input tile.
    g = torch.Generator().manual_seed(4)
    spatial, out_shape, label_shape = (41, 40), (30, 28), (12, 10)
    image = torch.rand(1, *spatial, generator=g)
    labels = torch.randint(-1, 3, spatial, generator=g)
    weights = torch.rand(spatial, generator=g)
    p = draw_deform_params(g, spatial, AugmentConfig(elastic_sigma=3.0))
    _, full_lab, full_w = deform(image, labels, weights, p, out_shape=out_shape)
    _, lab, w = deform(image, labels, weights, p, out_shape=out_shape, label_shape=label_shape)
    box = tuple(
        slice((o - c) // 2, (o - c) // 2 + c) for o, c in zip(out_shape, label_shape, strict=True)
    )
    assert torch.equal(lab, full_lab[box]) and torch.equal(w, full_w[box])


# ----------------------------------------------------------------------------- random draws


def test_seeded_replay_and_shapes():
    aug = RandomAugment()
    for shape in [(3, 40, 40), (1, 24, 32, 32)]:
        image = torch.rand(shape)
        labels = torch.randint(0, 3, shape[1:])
        weights = torch.rand(shape[1:])
        a = aug(image, labels, weights, generator=torch.Generator().manual_seed(11))
        b = aug(image, labels, weights, generator=torch.Generator().manual_seed(11))
        c = aug(image, labels, weights, generator=torch.Generator().manual_seed(12))
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
        assert not torch.equal(a[0], c[0])
        assert a[0].shape == shape and a[1].shape == shape[1:] and a[2].shape == shape[1:]
        assert torch.isfinite(a[0]).all()


def test_paper_elastic_defaults():
    g = torch.Generator().manual_seed(0)
    d2 = torch.cat([draw_deform_params(g, (572, 572)).displacement.flatten() for _ in range(300)])
    assert draw_deform_params(g, (572, 572)).displacement.shape == (2, 3, 3)
    assert d2.std().item() == pytest.approx(10.0, rel=0.05)
    p3 = draw_deform_params(g, (132, 132, 132))
    assert p3.displacement.shape == (3, 5, 5, 5)
    assert p3.displacement.std().item() == pytest.approx(4.0, rel=0.15)
    assert control_grid_shape((132, 132, 116), 32) == (5, 5, 5)
    assert draw_deform_params(g, (40, 40), AugmentConfig(elastic=False)).displacement is None


def test_rotation_planes_follow_spacing():
    g = torch.Generator().manual_seed(0)
    aniso = draw_deform_params(g, (20, 40, 40), spacing=(4.0, 1.0, 1.0))
    rot = np.array(aniso.rotation)
    assert rot[0, 0] == 1.0 and np.allclose(rot[0, 1:], 0) and np.allclose(rot[1:, 0], 0)
    # Z as fine as Y, X coarse: the rotation stays in (Z, Y), never mixing in X.
    fine_z = np.array(draw_deform_params(g, (40, 40, 20), spacing=(1.0, 1.0, 4.0)).rotation)
    assert fine_z[2, 2] == 1.0 and np.allclose(fine_z[2, :2], 0) and np.allclose(fine_z[:2, 2], 0)
    assert abs(fine_z[0, 0]) < 1 - 1e-6
    unequal = draw_deform_params(g, (20, 30, 40), spacing=(3.0, 2.0, 1.0)).rotation
    assert np.allclose(unequal, np.eye(3))
    unknown = np.array(draw_deform_params(g, (20, 40, 40)).rotation)
    assert unknown[0, 0] == 1.0 and abs(unknown[1, 1]) < 1 - 1e-6
    iso = np.array(draw_deform_params(g, (20, 40, 40), spacing=(1.0, 1.0, 1.0)).rotation)
    assert abs(iso[0, 0]) < 1 - 1e-6
    np.testing.assert_allclose(iso @ iso.T, np.eye(3), atol=1e-12)


def test_draws_stay_in_their_ranges():
    g = torch.Generator().manual_seed(1)
    cfg = AugmentConfig(scale=(0.9, 1.1), max_angle=30, max_shift=2.0)
    for _ in range(50):
        p = draw_deform_params(g, (16, 16), cfg)
        angle = math.degrees(math.atan2(p.rotation[1][0], p.rotation[0][0]))
        assert abs(angle) <= 30 + 1e-9
        assert 0.9 <= p.scale[0] <= 1.1 and p.scale[0] == p.scale[1]
        assert all(abs(s) <= 2.0 for s in p.shift)
        q = draw_gray_params(g, cfg)
        assert 0.8 <= q.gamma <= 1.25 and 0.9 <= q.contrast <= 1.1
        assert abs(q.brightness) <= 0.1 and 0 <= q.noise_std <= 0.03
    assert draw_params(g, (16, 16), AugmentConfig(gray=False)).gray is None


# ----------------------------------------------------------------------------- gray values


def test_gray_value_functions():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 30, 30, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0]).view(
        2, 1, 1
    )
    out = adjust_gray(image, GrayParams(brightness=0.25))
    torch.testing.assert_close(out, image + 0.25)
    out = adjust_gray(image, GrayParams(contrast=1.5))
    torch.testing.assert_close(out.mean(dim=(1, 2)), image.mean(dim=(1, 2)))
    torch.testing.assert_close(out.std(dim=(1, 2)), 1.5 * image.std(dim=(1, 2)))
    out = adjust_gray(image, GrayParams(gamma=2.0))
    torch.testing.assert_close(out.amin(dim=(1, 2)), image.amin(dim=(1, 2)))
    torch.testing.assert_close(out.amax(dim=(1, 2)), image.amax(dim=(1, 2)))
    lo = image.amin(dim=(1, 2), keepdim=True)
    span = image.amax(dim=(1, 2), keepdim=True) - lo
    torch.testing.assert_close(out, lo + span * ((image - lo) / span) ** 2)
    a = adjust_gray(image, GrayParams(noise_std=0.5, noise_seed=3))
    b = adjust_gray(image, GrayParams(noise_std=0.5, noise_seed=3))
    assert torch.equal(a, b)
    assert (a - image).std().item() == pytest.approx(0.5, rel=0.1)


@pytest.mark.parametrize(
    "params",
    [
        GrayParams(gamma=0.8),
        GrayParams(contrast=1.1),
        GrayParams(brightness=-0.05),
        GrayParams(noise_std=0.02, noise_seed=5),
        GrayParams(gamma=1.2, contrast=0.9, brightness=0.1, noise_std=0.03, noise_seed=9),
    ],
)
def test_gray_values_are_bitwise_the_plain_formulas(params):
    # adjust_gray works in place on its intermediate results; the values must stay exactly
    # those of the out-of-place expressions (training runs are reproducible bit for bit), and
    # the caller's image must not change.
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 17, 19, generator=g) * 3 - 1
    before = image.clone()
    out = adjust_gray(image, params)
    assert torch.equal(image, before)
    ref = image
    if params.gamma != 1.0:
        lo = image.amin(dim=(1, 2), keepdim=True)
        span = (image.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(torch.finfo(image.dtype).tiny)
        ref = lo + span * ((ref - lo) / span).clamp(0, 1) ** params.gamma
    if params.contrast != 1.0:
        mean = ref.reshape(2, -1).mean(dim=1).view(2, 1, 1)
        ref = mean + params.contrast * (ref - mean)
    if params.brightness != 0.0:
        ref = ref + params.brightness
    if params.noise_std > 0:
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(params.noise_seed))
        ref = ref + params.noise_std * noise
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- edges


def test_cubic_interpolation_2d_only():
    image = torch.rand(1, 16, 16)
    out, _, _ = deform(image, params=DeformParams.identity(2), interpolation="cubic")
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError):
        deform(torch.rand(1, 4, 4, 4), interpolation="cubic")
    with pytest.raises(ConfigError):
        AugmentConfig(interpolation="cubic").check(3)


def test_input_checks():
    with pytest.raises(InputError):
        deform(torch.rand(4, 4))
    with pytest.raises(InputError):
        deform(torch.rand(1, 4, 4), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ConfigError):
        deform(torch.rand(1, 4, 4), out_shape=(5, 4))
    with pytest.raises(ConfigError):
        deform(torch.rand(1, 4, 4), params=DeformParams.identity(3))
    with pytest.raises(ConfigError):
        AugmentConfig.from_dict({"rotation": 5})
    with pytest.raises(ConfigError):
        deform(torch.rand(1, 4, 4), params=params(2, disp=torch.zeros(3, 3, 3)))


def test_augment_sample_numpy_wrapper():
    rng = np.random.default_rng(0)
    image = rng.random((1, 50, 50), dtype=np.float32)
    target = rng.integers(0, 2, (50, 50))
    weight = rng.random((50, 50), dtype=np.float32)
    opts = {"rotate": True, "scale": [0.9, 1.1], "rotation_planes": [[0, 1]]}
    a = augment_sample(image, target, weight, out_shape=(40, 40), seed=7, options=opts)
    b = augment_sample(image, target, weight, out_shape=(40, 40), seed=7, options=opts)
    assert a[0].shape == (1, 40, 40) and a[0].dtype == np.float32
    assert a[1].shape == (40, 40) and a[1].dtype == target.dtype
    assert a[2].shape == (40, 40) and a[2].dtype == np.float32
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = augment_sample(image, target, weight, label_shape=(20, 20), seed=7)
    assert c[0].shape == (1, 50, 50) and c[1].shape == (20, 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    image = torch.rand(2, 20, 24, 28, generator=g)
    labels = torch.randint(0, 4, (20, 24, 28), generator=g)
    weights = torch.rand(20, 24, 28, generator=g)
    p = draw_params(torch.Generator().manual_seed(9), (20, 24, 28))
    aug = RandomAugment()
    cpu = aug.apply(image, labels, weights, p)
    gpu = aug.apply(image.cuda(), labels.cuda(), weights.cuda(), p)
    assert all(t.device.type == "cuda" for t in gpu)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-4, rtol=0)
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3
    assert (gpu[2].cpu() != cpu[2]).float().mean() < 1e-3
    gen = torch.Generator(device="cuda").manual_seed(1)
    out = aug(image.cuda(), labels.cuda(), weights.cuda(), generator=gen)
    assert out[0].is_cuda

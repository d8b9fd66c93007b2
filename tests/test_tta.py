import numpy as np
import pytest
import torch

from useg.inference.tta import apply, invert, transforms, with_tta


@pytest.mark.parametrize("ndim", [2, 3])
def test_inverse_undoes_every_transform(ndim, rng):
    x = rng.random((2, 1) + (6,) * ndim)
    ts = transforms(ndim)
    assert len({apply(x, t).tobytes() for t in ts}) == len(ts)  # all distinct
    for t in ts:
        np.testing.assert_array_equal(invert(apply(x, t), t), x)
        xt = torch.from_numpy(x)
        assert torch.equal(invert(apply(xt, t), t), xt)


def test_tta_equals_plain_for_equivariant_predictor(rng):
    # A 3x3 box blur with mirror padding commutes with flips and quarter turns.
    def blur(x):
        t = torch.as_tensor(np.ascontiguousarray(x))
        t = torch.nn.functional.pad(t, (1, 1, 1, 1), mode="reflect")
        return torch.nn.functional.avg_pool2d(t, 3, stride=1).numpy()

    x = rng.random((1, 1, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(with_tta(blur, transforms(2))(x), blur(x), atol=1e-6)


def test_tta_changes_non_equivariant_predictor(rng):
    def shift(x):
        return np.roll(x, 1, axis=-1)

    x = rng.random((1, 1, 8, 8))
    assert not np.allclose(with_tta(shift, transforms(2))(x), shift(x))


def test_3d_set_is_z_flip_times_in_plane_dihedral_group():
    ts = transforms(3)
    assert len(ts) == 16
    assert all(k in range(4) for _, k in ts)

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


# ---- a network that never saw flipped or turned images ----------------------------------------

@pytest.mark.parametrize("augment, said", [
    (None, "was trained without augmentation"),
    ({"flip_probability": 0.0, "rotate": False}, "was trained without flips or rotations"),
    ({"flip_axes": [], "rotate": False}, "was trained without flips or rotations"),
    ({}, None),  # the default augmentation: flips and rotations
    ({"rotate": False}, None),  # flips alone
    ({"flip_probability": 0.0}, None),  # rotations alone
])
def test_unseen_by_training_reads_the_training_configuration(augment, said):
    from useg.inference.tta import unseen_by_training

    assert unseen_by_training({"provenance": {"config": {"augment": augment}}}) == said


@pytest.mark.parametrize("header", [
    None, {}, {"provenance": {}}, {"provenance": {"config": {}}},
    # Not what training writes (a hand-edited or hostile header): no traceback, nothing said.
    "x", {"provenance": "x"}, {"provenance": {"config": {"augment": "x"}}},
    {"provenance": {"config": {"augment": {"flip_probability": "x", "rotate": False}}}},
    {"provenance": {"config": {"augment": {"unknown": 1, "rotate": False}}}},
])
def test_unseen_by_training_says_nothing_without_a_training_configuration(header):
    from useg.inference.tta import unseen_by_training

    assert unseen_by_training(header) is None


def _model_file(tmp_path, augment):
    from useg.nets import UNet
    from useg.nets.checkpoint import save_model

    return save_model(UNet("ronneberger2015", width=2, depth=2), tmp_path / "m.safetensors",
                      {"provenance": {"config": {"augment": augment}}})


def test_predict_with_tta_warns_for_a_network_trained_without_augmentation(tmp_path, rng):
    import warnings

    from useg.errors import UsegWarning
    from useg.inference.predict import predict
    from useg.nets.checkpoint import load_model

    image = rng.random((40, 40)).astype(np.float32)
    plain = load_model(_model_file(tmp_path, None))
    with pytest.warns(UsegWarning, match="trained without augmentation.*without TTA"):
        predict(plain, image, device="cpu", tta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UsegWarning)
        predict(plain, image, device="cpu")  # no TTA asked: nothing to say
        (tmp_path / "augmented").mkdir()
        augmented = load_model(_model_file(tmp_path / "augmented", {}))
        predict(augmented, image, device="cpu", tta=True)


def test_useg_predict_tta_says_so_once_and_still_predicts(tmp_path, rng, capsys):
    import tifffile

    from useg.cli import main

    path = _model_file(tmp_path, None)
    tifffile.imwrite(tmp_path / "s.tif", (rng.random((3, 40, 40)) * 255).astype(np.uint8),
                     photometric="minisblack")  # a stack of three slices
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "s.tif"), "--model", str(path), "--out", str(out),
                 "--tta", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("trained without augmentation") == 1, err
    assert str(path) in err
    assert (out / "s_labels.tif").exists()


@pytest.mark.parametrize("geometry", [{"pool": ((1, 2), (2, 2))},
                                      {"kernel": ((1, 3), (1, 3), (1, 3))}])
def test_tta_of_a_network_that_treats_y_and_x_differently_takes_flips_alone(geometry, rng):
    # A quarter turn would hand such a network another geometry (and another output shape).
    import warnings

    from useg.inference.predict import predict
    from useg.inference.tta import turns_commute
    from useg.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet("ronneberger2015", width=2, depth=2, **geometry).eval()
    assert not turns_commute(net.config)
    assert turns_commute(UNet("ronneberger2015", width=2, depth=2).config)
    image = rng.random((40, 56)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        averaged = predict(net, image, device="cpu", tta=True, tile=48)
        plain = predict(net, image, device="cpu", tile=48)
    assert averaged.shape == plain.shape
    np.testing.assert_allclose(averaged.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(averaged, plain)  # the flips were averaged in

"""``useg predict --instances`` and the instance settings chosen on validation (workflows.segment,
workflows.tune_instances)."""

import re

import numpy as np
import pytest
import tifffile
import torch

import useg.inference.files as inference_files
from useg.cli import main
from useg.io import read_image
from useg.nets import UNet
from useg.nets.checkpoint import model_info, save_model, update_header
from useg.postprocess.instances import InstanceParams, instances_from_probabilities
from useg.workflows.segment import instance_settings
from useg.workflows.tune_instances import choose_instance_params


def _discs(shape=(64, 96), centres=((20, 20), (20, 33), (44, 70)), radius=8):
    """Instance labels of discs; the first two touch."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, np.uint16)
    for i, (cy, cx) in enumerate(centres, 1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = i
    return labels


def _probs_of(labels):
    """Foreground probabilities that a good network would give: confident inside objects, 0.5
    on the pixels where two objects meet."""
    fg = (labels > 0).astype(np.float32) * 0.95 + 0.025
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    fg[edge] = 0.3
    return np.stack([1 - fg, fg])


def _model(tmp_path, mode="instances", classes=2, name="m.safetensors"):
    torch.manual_seed(0)  # the same random network every run
    net = UNet("ronneberger2015", width=4, depth=2, classes=classes)
    return save_model(net, tmp_path / name, {"labels": {"mode": mode, "classes": ["a"] * classes}})


@pytest.fixture
def fake_network(monkeypatch):
    """Predictions that are a known function of the image (the image holds labels)."""

    def predict(model, image, **kwargs):
        return _probs_of(np.asarray(image)[0].astype(np.uint16))

    monkeypatch.setattr(inference_files, "predict", predict)


def test_predict_instances_writes_one_id_per_object(tmp_path, fake_network, capsys):
    labels = _discs()
    tifffile.imwrite(tmp_path / "a.tif", labels)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(_model(tmp_path)), "--out",
                 str(out), "--instances", "--quiet"]) == 0
    found = tifffile.imread(out / "a_instances.tif")
    assert found.dtype == np.uint16
    assert sorted(np.unique(found)) == [0, 1, 2, 3]  # the touching discs are two objects
    for i in (1, 2, 3):  # each found object lies in one true one
        assert len(np.unique(labels[found == i])) == 1
    assert "defaults (the model stores no settings" in capsys.readouterr().err
    probs, _ = read_image(out / "a_probs.tif")
    expected = instances_from_probabilities(probs, "instances", InstanceParams())
    assert np.array_equal(found, expected)


def test_stored_settings_are_used_and_flags_override_them(tmp_path, fake_network, capsys):
    model = _model(tmp_path)
    update_header(model, {"instances": {"target": "instances",
                                        "params": {"min_size": 1000},
                                        "chosen_on": "test"}})
    target, params, source = instance_settings(model)
    assert (target, params.min_size) == ("instances", 1000) and "chosen on validation" in source
    tifffile.imwrite(tmp_path / "a.tif", _discs())
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(model), "--out",
                 str(tmp_path / "o1"), "--instances", "--quiet", "--no-probs"]) == 0
    # Every disc is smaller than 1000 px and none touches a kept one: all removed.
    assert tifffile.imread(tmp_path / "o1" / "a_instances.tif").max() == 0
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(model), "--out",
                 str(tmp_path / "o2"), "--instances", "--min-size", "0", "--quiet"]) == 0
    assert tifffile.imread(tmp_path / "o2" / "a_instances.tif").max() == 3
    assert "given: min_size=0" in capsys.readouterr().err


def test_seed_threshold_flag_reaches_the_instance_step(tmp_path, fake_network, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _discs())
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(_model(tmp_path)), "--out",
                 str(tmp_path / "out"), "--instances", "--seed-threshold", "0.9",
                 "--quiet"]) == 0
    probs, _ = read_image(tmp_path / "out" / "a_probs.tif")
    expected = instances_from_probabilities(probs, "instances",
                                            InstanceParams(seed_threshold=0.9))
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "a_instances.tif"), expected)
    assert expected.max() == 3
    assert "given: seed_threshold=0.9" in capsys.readouterr().err


def test_merge_below_flag_reaches_the_instance_step(tmp_path, fake_network, capsys):
    tifffile.imwrite(tmp_path / "a.tif", _discs())
    assert main(["predict", str(tmp_path / "a.tif"), "--model", str(_model(tmp_path)), "--out",
                 str(tmp_path / "out"), "--instances", "--instance-threshold", "0.2",
                 "--merge-below", "0.9", "--quiet"]) == 0
    probs, _ = read_image(tmp_path / "out" / "a_probs.tif")
    found = tifffile.imread(tmp_path / "out" / "a_instances.tif")
    assert np.array_equal(found, instances_from_probabilities(
        probs, "instances", InstanceParams(threshold=0.2, merge_below=0.9)))
    # At this threshold the touching discs are one piece of foreground, cut in two at its neck
    # by the seeds; the line where they meet is weaker background than 0.9: joined again.
    unmerged = instances_from_probabilities(probs, "instances", InstanceParams(threshold=0.2))
    assert unmerged.max() == 3
    assert found.max() == 2
    assert "given: threshold=0.2, merge_below=0.9" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--instances"], "needs a model trained with --labels"),
    (["--min-size", "3"], "--min-size: only with --instances"),
    (["--instance-threshold", "0.5"], "--instance-threshold: only with --instances"),
    (["--seed-threshold", "0.9"], "--seed-threshold: only with --instances"),
    (["--instances", "--seed-threshold", "0"], "expected a number in (0, 1)"),
    (["--merge-below", "0.3"], "--merge-below: only with --instances"),
    (["--instances", "--merge-below", "1"], "expected a number in (0, 1)"),
    (["--instances", "--instance-threshold", "1"], "expected a number in (0, 1)"),
])
def test_instances_refusals_are_one_line(tmp_path, capsys, argv, message):
    tifffile.imwrite(tmp_path / "a.tif", _discs())
    model = tmp_path / "classes.safetensors"
    if {"--instance-threshold", "--min-size", "--seed-threshold", "--merge-below"} & set(argv):
        model = _model(tmp_path)
    else:
        model = _model(tmp_path, mode="classes", classes=3, name="classes.safetensors")
    code = main(["predict", str(tmp_path / "a.tif"), "--model", str(model), "--out",
                 str(tmp_path / "out"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "a_instances.tif").exists()


def test_a_refused_input_gets_its_line_alone(tmp_path, capsys):
    # The settings note is said once inputs and outputs are checked: a refusal is one line.
    code = main(["predict", str(tmp_path / "missing.tif"), "--model", str(_model(tmp_path)),
                 "--out", str(tmp_path / "out"), "--quiet", "--instances"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing.tif: no such file" in err and len(err.splitlines()) == 1


def test_stored_settings_are_validated_with_the_model_named(tmp_path):
    model = _model(tmp_path)
    update_header(model, {"instances": {"params": {"threshold": 2}}})
    from useg.errors import ModelFileError

    with pytest.raises(ModelFileError, match=r"m\.safetensors: instances: threshold"):
        instance_settings(model)


def test_choose_instance_params_finds_settings_that_separate_the_objects():
    labels = _discs()
    probs = _probs_of(labels)
    grid = {"threshold": (0.2, 0.5), "seed_distance": (2.0,), "min_size": (0, 300)}
    params, record = choose_instance_params([probs], [labels], "instances", grid=grid)
    # 0.2 keeps the 0.3 seam between the touching discs as foreground: they still separate by
    # the distance seeds, but 0.5 cuts them cleanly; 300 px would remove every disc.
    assert record["object_f1"] == 1.0 and params.min_size == 0
    assert record["tp"] == 3 and record["images"] == 1


def test_choose_instance_params_leaves_unlabeled_pixels_out():
    # A strip nobody annotated (255) is not an object, and what is found there is not wrong.
    labels = _discs()
    probs = _probs_of(labels)
    grid = {"threshold": (0.5,), "seed_distance": (2.0,), "min_size": (0,)}
    with_strip = labels.copy()
    with_strip[:, :8] = 255
    _, plain = choose_instance_params([probs], [with_strip], "instances", grid=grid)
    assert plain["fn"] >= 1  # read as an object, the strip is missed
    _, record = choose_instance_params([probs], [with_strip], "instances", grid=grid,
                                       unlabeled=255)
    assert record["fn"] == 0 and record["fp"] == 0 and record["object_f1"] == 1.0


def test_dask_instances_equal_one_piece(tmp_path, capsys):
    pytest.importorskip("dask")
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(0)
    image = (rng.random((200, 240)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image)
    model = _model(tmp_path)
    common = ["--model", str(model), "--quiet", "--tile", "92", "--scheduler", "synchronous",
              "--dask", "--block", "64"]
    # A threshold that leaves many blobs of this random network's foreground.
    assert main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "p.zarr"),
                 *common]) == 0
    probs = np.asarray(zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["probs"])
    threshold = round(float(np.quantile(probs[1], 0.8)), 3)
    store = tmp_path / "out.zarr"
    assert main(["predict", str(tmp_path / "a.tif"), "--out", str(store), *common,
                 "--instances", "--instance-threshold", str(threshold), "--min-size", "4"]) == 0
    group = zarr.open_group(str(store), mode="r")
    blocks = np.asarray(group["instances"])
    whole = instances_from_probabilities(np.asarray(group["probs"]), "instances",
                                         InstanceParams(threshold=threshold, min_size=4))
    assert blocks.max() == whole.max() > 5
    # The same partition: the pairs of ids map one to one.
    pairs = np.unique(np.stack([blocks.ravel(), whole.ravel()]), axis=1)
    assert pairs.shape[1] == int(whole.max()) + 1
    assert "reached the edge" not in capsys.readouterr().err  # every blob within its context

    # Nearly all foreground: objects wider than their blocks' context.
    low = round(float(np.quantile(probs[1], 0.02)), 3)
    assert main(["predict", str(tmp_path / "a.tif"), "--out", str(tmp_path / "low.zarr"),
                 *common, "--instances", "--instance-threshold", str(low)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"low\.zarr/instances: [1-9]\d* object\(s\) reached the edge of their "
                     r"block's context \(\d+, \d+ voxels on each side\)", err)


def test_train_and_tune_stores_the_settings_in_the_model(tmp_path, fake_network):
    from useg.training.options import TrainOptions
    from useg.workflows.tune_instances import train_and_tune

    for split, shift in (("train", 0), ("val", 5)):
        for kind in ("images", "labels"):
            (tmp_path / split / kind).mkdir(parents=True)
        labels = _discs(centres=((20, 20 + shift), (20, 33 + shift), (44, 70)))
        # The validation image holds its labels: the fake network, which tuning predicts
        # with, finds the objects in it (two steps of training would find none).
        image = labels if split == "val" else (labels > 0).astype(np.uint8) * 200 + 20
        tifffile.imwrite(tmp_path / split / "images" / "x.tif", image)
        tifffile.imwrite(tmp_path / split / "labels" / "x.tif", labels)
    options = TrainOptions(width=4, depth=2, iterations=2, label_mode="instances", val_every=2,
                           checkpoint_every=2, device="cpu", tile=(92, 92))
    best, entry = train_and_tune(
        tmp_path / "run", images=tmp_path / "train" / "images",
        labels=tmp_path / "train" / "labels", val_images=tmp_path / "val" / "images",
        val_labels=tmp_path / "val" / "labels", options=options, progress=False)
    stored = model_info(best)["instances"]
    assert stored == entry and stored["target"] == "instances"
    assert stored["validation"]["files"] == ["x.tif"]
    assert stored["validation"]["object_f1"] == 1.0
    InstanceParams.from_dict(stored["params"], source="test")


def test_packaged_em_model_carries_its_validated_cell_settings():
    # bench/isbi2012_segment.py chose them on ISBI slices 15..19 and stored them with the
    # operating point: the shipped model must keep a readable entry whose objects lie where its
    # class map (useg predict's labels, at the operating point) says interior.
    from useg.nets.checkpoint import operating_threshold

    target, params, source = instance_settings("em-membrane")
    assert target == "instances"
    assert params.threshold == operating_threshold(model_info("em-membrane"))
    assert params.seed_threshold is None or params.threshold < params.seed_threshold < 1
    assert "chosen on validation" in source and "15..19" in source


def test_tuning_a_2d_model_on_stacks_scores_slice_by_slice(tmp_path, fake_network):
    from useg.workflows.tune_instances import tune_model_instances

    model = _model(tmp_path)
    stack = np.stack([_discs(), _discs(centres=((30, 30), (50, 70)))])  # (2, 64, 96)
    for kind in ("images", "labels"):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "s.tif", stack)
    entry = tune_model_instances(model, tmp_path / "images", tmp_path / "labels")
    assert entry is not None and entry["validation"]["files"] == ["s.tif"]
    assert entry["validation"]["images"] == 2  # the two slices, each an image
    assert entry["validation"]["tp"] == 5 and entry["validation"]["object_f1"] == 1.0
    assert model_info(model)["instances"] == entry


def test_tuning_that_finds_no_object_stores_nothing(tmp_path, fake_network):
    from useg.workflows.tune_instances import tune_model_instances

    model = _model(tmp_path)
    for kind in ("images", "labels"):
        (tmp_path / kind).mkdir()
    tifffile.imwrite(tmp_path / "images" / "x.tif", np.zeros((64, 96), np.uint16))  # no object
    tifffile.imwrite(tmp_path / "labels" / "x.tif", _discs())
    with pytest.warns(UserWarning, match="no instance settings stored.*x.tif"):
        entry = tune_model_instances(model, tmp_path / "images", tmp_path / "labels")
    assert entry is None and "instances" not in model_info(model)

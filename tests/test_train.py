import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY
from safetensors import safe_open

from useg.cli import main
from useg.nets.checkpoint import load_model


def _losses(run):
    with open(run / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _cmd(dataset, out, iterations=12, extra=()):
    return [
        "train",
        "--images",
        str(dataset / "train/images"),
        "--labels",
        str(dataset / "train/labels"),
        "--out",
        str(out),
        "--iterations",
        str(iterations),
        "--checkpoint-every",
        "4",
        "--val-every",
        "6",
        "--val-images",
        str(dataset / "val/images"),
        "--val-labels",
        str(dataset / "val/labels"),
        "--quiet",
        "--log-every",
        "3",
        *TINY,
        *extra,
    ]


def test_train_writes_run_folder(dataset, tmp_path):
    out = tmp_path / "run"
    assert main(_cmd(dataset, out)) == 0
    for name in (
        "config.json",
        "log.csv",
        "curves.png",
        "last.safetensors",
        "best.safetensors",
        "state.safetensors",
    ):
        assert (out / name).exists(), name
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows][-1] == 12
    assert any(r.get("val_iou") for r in rows)
    model = load_model(out / "last.safetensors")
    assert model.config.width == 2 and model.meta["normalization"]["mode"] == "percentile"
    # sigma is in pixels whatever the files' calibration; the run and the model say so.
    config = json.loads((out / "config.json").read_text())
    assert config["sigma"] == 5.0 and config["sigma_unit"] == "pixels (finest axis)"
    assert model.meta["provenance"]["config"]["sigma_unit"] == "pixels (finest axis)"
    assert model.meta["units"]["tile"] == "pixels (voxels in 3D)"  # the header says its units
    assert "ratios" in model.meta["units"]["spacing"]
    assert not list(out.glob(".*tmp*"))
    # An existing run is not overwritten without --resume.
    assert main(_cmd(dataset, out)) == 2


def test_kill_and_resume_matches_uninterrupted(dataset, tmp_path):
    reference = tmp_path / "ref"
    assert main(_cmd(dataset, reference, iterations=40, extra=("--no-elastic",))) == 0
    expected = _losses(reference)

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [
        sys.executable,
        "-m",
        "useg",
        *_cmd(dataset, killed, iterations=40, extra=("--no-elastic",)),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "state.safetensors").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with safe_open(str(killed / "state.safetensors"), framework="pt") as f:
        killed_at = json.loads(f.metadata()["useg_state"])["info"]["step"]
    assert 4 <= killed_at < 40  # really interrupted half-way
    assert main(["train", "--resume", "--out", str(killed), "--quiet"]) == 0
    resumed = _losses(killed)
    assert [s for s, _ in resumed] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in resumed], [v for _, v in expected], rtol=1e-5)


def test_bad_training_inputs(dataset, tmp_path, capsys):
    import tifffile

    imgs, labs = tmp_path / "i", tmp_path / "l"
    imgs.mkdir(), labs.mkdir()
    tifffile.imwrite(imgs / "a.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(labs / "a.tif", np.zeros((60, 64), np.uint8))
    base = [
        "train",
        "--images",
        str(imgs),
        "--labels",
        str(labs),
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        *TINY,
    ]
    assert main(base) == 2
    assert "a.tif" in capsys.readouterr().err
    tifffile.imwrite(imgs / "b.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(labs / "a.tif", np.zeros((64, 64), np.uint8))
    assert main(base) == 2
    assert "b.tif" in capsys.readouterr().err  # no partner
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "r" / "state.safetensors").exists()


def test_divergence_is_reported_at_its_step_whatever_the_log_interval(tmp_path):
    # Losses are read back from the device only for log rows and checkpoints; the error must
    # still name the first step whose loss was not finite, and no row or state may follow it.
    from useg.errors import ConfigError
    from useg.training.config import TrainConfig
    from useg.training.loop import train
    from useg.training.samples import make_sample
    from useg.workflows.synthetic import touching_cells

    img, inst = touching_cells((64, 64), rng=0)
    samples = [make_sample(img, inst, mode="instances", w0=10, sigma=5)]
    messages = []
    for log_every, checkpoint_every in ((1, 100), (7, 100), (5, 1)):
        cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=40,
                          lr=1e6, log_every=log_every, checkpoint_every=checkpoint_every,
                          val_every=10**9, workers=0, device="cpu", augment=None, seed=1)
        out = tmp_path / f"run{log_every}_{checkpoint_every}"
        with pytest.raises(ConfigError, match="diverged at step") as err:
            train(cfg, samples, out, progress=False)
        messages.append(str(err.value))
        diverged = int(messages[-1].split("step ")[1].split()[0])
        if (out / "state.safetensors").exists():
            with safe_open(str(out / "state.safetensors"), framework="pt") as f:
                assert json.loads(f.metadata()["useg_state"])["info"]["step"] <= diverged
    assert messages[0] == messages[1] == messages[2]


def _short(dataset, out, *extra):
    return ["train", "--images", str(dataset / "train/images"), "--labels",
            str(dataset / "train/labels"), "--out", str(out), "--iterations", "6",
            "--checkpoint-every", "4", "--log-every", "3", "--quiet", *TINY, *extra]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_resume_with_more_iterations_extends_the_run(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_short(dataset, run)) == 0
    before = _weights(run / "last.safetensors")
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--iterations", "9"]) == 0
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6, 9]  # the extra steps ran and were logged
    with safe_open(str(run / "state.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["useg_state"])["info"]["step"] == 9
    after = _weights(run / "last.safetensors")
    assert max(float((after[k] - before[k]).abs().max()) for k in before) > 0
    # The schedule is recomputed over the new total: poly at the last step, 8 of 9 (Adam at
    # 1e-3: the cpu-fast recipe, which --recipe auto picks on the CPU).
    assert float(rows[-1]["lr"]) == pytest.approx(1e-3 * (1 - 8 / 9) ** 0.9)
    assert json.loads((run / "config.json").read_text())["iterations"] == 9  # for the next one
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--iterations", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "9 steps" in err, err


def test_resume_from_another_folder_reads_the_files_the_run_started_with(dataset, tmp_path,
                                                                        monkeypatch):
    # The run records its data folders as absolute paths: resumed from a folder that has
    # its own images/ and labels/, it still reads the ones it was started with.
    import shutil

    first, other = tmp_path / "first", tmp_path / "other"
    for folder in (first, other):
        shutil.copytree(dataset / "train", folder)
    sorted((other / "images").iterdir())[0].write_bytes(b"not an image")  # would fail a read
    run = tmp_path / "run"
    monkeypatch.chdir(first)
    assert main(["train", "--images", "images", "--labels", "labels", "--out", str(run),
                 "--iterations", "3", "--log-every", "3", "--quiet", *TINY]) == 0
    data = json.loads((run / "config.json").read_text())["labels"]["data"]
    assert data["images"] == str(first / "images") and data["labels"] == str(first / "labels")
    monkeypatch.chdir(other)
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--iterations", "6"]) == 0
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [3, 6]


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory):
    """A finished two-step run (tests that use it must leave it unchanged)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(_short(dataset, run, "--iterations", "2")) == 0
    return run


@pytest.mark.parametrize("option, flag", [
    (["--lr", "0.1"], "--lr"),
    (["--batch-size", "2"], "--batch-size"),
    (["--width", "4"], "--width"),
    (["--tile", "60"], "--tile"),
    (["--no-augment"], "--no-augment"),
    (["--schedule", "cosine"], "--schedule"),
    (["--images", "{other}"], "--images"),
    (["--preset", "cicek2016"], "--preset"),
])
def test_resume_refuses_an_option_that_differs_from_the_run(dataset, finished, capsys, option,
                                                           flag):
    run = finished
    state = (run / "state.safetensors").read_bytes()
    option = [o.format(other=dataset / "val/images") for o in option]
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--iterations", "4", *option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "config.json" in err, err
    assert (run / "state.safetensors").read_bytes() == state  # nothing ran


def test_resume_accepts_options_equal_to_the_run_and_harmless_ones(dataset, tmp_path):
    run = tmp_path / "run"
    assert main(_short(dataset, run, "--iterations", "2")) == 0
    # Given again as saved (the tile as given, before rounding; the default preset's name),
    # or changing only how the run is executed.
    assert main(["train", "--resume", "--out", str(run), "--quiet", "--iterations", "3",
                 "--images", str(dataset / "train/images"), "--tile", "36", "--width", "2",
                 "--lr", "0.001", "--preset", "ronneberger2015", "--seed", "3", "--workers", "1",
                 "--device", "cpu"]) == 0
    assert [s for s, _ in _losses(run)][-1] == 3
    assert json.loads((run / "config.json").read_text())["workers"] == 1


@pytest.mark.parametrize("mode", ["meanstd", "none"])
def test_validation_scores_what_predicting_the_raw_image_scores(tmp_path, mode):
    import torch

    from useg.inference.predict import predict
    from useg.nets import UNet, UNetConfig
    from useg.nets.checkpoint import save_model
    from useg.training.samples import make_sample
    from useg.training.validation import evaluate_samples
    from useg.workflows.synthetic import touching_cells

    image, cells = touching_cells((64, 64), rng=4)
    raw = image * 3.0 - 1.0  # not the 0..1 that the default percentile normalisation gives
    normalization = {"mode": mode}
    sample = make_sample(raw, cells, mode="instances", normalization=normalization)
    torch.manual_seed(0)
    net = UNet(UNetConfig(ndim=2, width=4, depth=1))  # as train() holds it: no model file
    # Shift the foreground logit so that half of the pixels are foreground on the image
    # normalised once: then any other normalisation changes the answer.
    once = {"offset": [0.0], "scale": [1.0]}
    probs = predict(net, sample.image, tile=44, device="cpu", precision="fp32", stats=once)
    with torch.no_grad():
        net.head.bias[1] -= float(np.median(np.log(probs[1] / probs[0])))
    scored = evaluate_samples(net, [sample], "cpu", tile=(44, 44), precision="fp32")
    # What a user gets from the raw image with the saved model (normalised as its file says).
    path = save_model(net, tmp_path / "m.safetensors", {"normalization": normalization})
    pred = predict(load_model(path), raw, tile=44, device="cpu", precision="fp32").argmax(0)
    assert 0.3 < pred.mean() < 0.7
    truth = sample.target
    iou = np.logical_and(pred == 1, truth == 1).sum() / np.logical_or(pred == 1, truth == 1).sum()
    assert scored["val_iou"] == pytest.approx(float(iou), abs=1e-12)
    assert scored["val_pixel_error"] == pytest.approx(float((pred != truth).mean()), abs=1e-12)


def test_validation_of_a_batch_statistics_network_is_one_pass(tmp_path):
    import torch

    from useg.inference.predict import predict
    from useg.nets import UNet, UNetConfig
    from useg.training.samples import make_sample
    from useg.training.validation import evaluate_samples
    from useg.workflows.synthetic import touching_cells

    image, cells = touching_cells((64, 64), rng=4)
    sample = make_sample(image, cells, mode="instances")
    torch.manual_seed(0)
    net = UNet(UNetConfig(ndim=2, width=4, depth=1, norm="batch", batch_stats=True))
    once = {"offset": [0.0], "scale": [1.0]}
    probs = predict(net, sample.image, device="cpu", precision="fp32", stats=once)
    with torch.no_grad():
        net.head.bias[1] -= float(np.median(np.log(probs[1] / probs[0])))
    # The training tile would normalise each tile by itself: validation predicts as
    # useg predict does, in one pass over the whole image.
    scored = evaluate_samples(net, [sample], "cpu", tile=(44, 44), precision="fp32")
    pred = predict(net, sample.image, device="cpu", precision="fp32", stats=once).argmax(0)
    assert 0.3 < pred.mean() < 0.7
    assert scored["val_pixel_error"] == pytest.approx(
        float((pred != sample.target).mean()), abs=1e-12)


def test_sigma_unit_is_checked_when_a_configuration_is_read():
    from useg.errors import ConfigError
    from useg.training.config import TrainConfig

    saved = TrainConfig(sigma=3.0).to_dict()
    assert list(saved)[list(saved).index("sigma") + 1] == "sigma_unit"  # beside its value
    assert TrainConfig.from_dict(saved).sigma == 3.0
    with pytest.raises(ConfigError, match="sigma is given in 'um'"):
        TrainConfig.from_dict({**saved, "sigma_unit": "um"})


def test_train_resumed_in_python_refuses_a_config_that_differs(finished):
    from useg.errors import ConfigError
    from useg.training.config import TrainConfig
    from useg.training.loop import train

    saved = json.loads((finished / "config.json").read_text())
    with pytest.raises(ConfigError, match="seed = 3, not 4"):
        train(TrainConfig.from_dict({**saved, "seed": 4}), [], finished, resume=True)
    with pytest.raises(ConfigError, match="trained 2 steps already"):
        train(TrainConfig.from_dict({**saved, "iterations": 1}), [], finished, resume=True)


def test_validation_of_a_same_network_does_not_tile_with_the_training_tile(tmp_path):
    # A same-padding network discards its context at every tile edge: validating with the
    # (small) training tile would pass hundreds of tiles for this volume, one with the tile
    # useg predict chooses.
    import torch

    from useg.training.config import TrainConfig
    from useg.training.loop import train
    from useg.training.samples import make_sample

    rng = np.random.default_rng(0)
    labels = np.zeros((32, 48, 48), np.uint16)
    labels[8:24, 10:30, 12:40] = 1
    image = (labels + rng.normal(0, 0.3, labels.shape)).astype(np.float32)[None]
    sample = make_sample(image, labels, mode="instances", w0=0.0)
    cfg = TrainConfig(net={"ndim": 3, "width": 2, "depth": 2, "padding": "same"},
                      tile=[16, 16, 16], iterations=2, val_every=2, log_every=1, workers=0,
                      device="cpu", augment=None, seed=0, w0=0.0)
    heads = []

    def count(module, args, output):
        if isinstance(module, torch.nn.Conv3d) and module.kernel_size == (1, 1, 1):
            heads.append(tuple(args[0].shape[2:]))

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        train(cfg, [sample], tmp_path / "run", val_samples=[sample], progress=False)
    finally:
        hook.remove()
    passes = [s for s in heads if s != (16, 16, 16)]  # the training steps' tiles are 16^3
    assert len(heads) - len(passes) == 2
    assert 1 <= len(passes) <= 8


def test_validation_runs_every_val_every_steps_whatever_the_log_interval(tmp_path):
    from useg.training.config import TrainConfig
    from useg.training.loop import train

    samples = _tiny_samples()
    cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=10,
                      log_every=3, val_every=5, checkpoint_every=100, workers=0, device="cpu",
                      augment=None, seed=1)
    train(cfg, samples, tmp_path / "run", val_samples=samples, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [3, 5, 6, 9, 10]
    validated = [int(r["step"]) for r in rows if r.get("val_iou") not in (None, "")]
    assert validated == [5, 10]


def _tiny_samples():
    from useg.training.samples import make_sample
    from useg.workflows.synthetic import touching_cells

    img, inst = touching_cells((64, 64), rng=0)
    return [make_sample(img, inst, mode="instances", w0=10, sigma=5)]


def test_a_run_killed_inside_a_checkpoint_resumes_with_every_log_row(tmp_path, monkeypatch):
    # The trainer state is the checkpoint's commit point: written last, after the log.
    from useg.training import loop, run_folder
    from useg.training.config import TrainConfig

    cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=6,
                      log_every=1, checkpoint_every=3, workers=0, device="cpu", augment=None)
    real = run_folder.write_log

    def killed(path, rows):
        if int(rows[-1]["step"]) == 6:
            raise KeyboardInterrupt  # a kill inside the last checkpoint, at its log
        return real(path, rows)

    monkeypatch.setattr(run_folder, "write_log", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, _tiny_samples(), tmp_path / "run", progress=False)
    monkeypatch.setattr(run_folder, "write_log", real)
    # Partial network section, as Python callers give it: the run must still resume.
    loop.train(TrainConfig.from_dict({**cfg.to_dict(), "net": {"ndim": 2, "width": 2,
                                                                 "depth": 1}}),
               _tiny_samples(), tmp_path / "run", resume=True, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {"in_channels", "classes"} <= set(saved["net"])  # complete, as read back


def test_loader_workers_stop_when_training_raises(tmp_path, monkeypatch):
    import multiprocessing as mp

    from useg.training import loop
    from useg.training.config import TrainConfig

    real = loop._Run._loss

    def failing(self, *args):
        if self.step == 2:
            raise RuntimeError("boom")
        return real(self, *args)

    monkeypatch.setattr(loop._Run, "_loss", failing)
    cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=6,
                      workers=1, device="cpu", augment=None)
    with pytest.raises(RuntimeError, match="boom") as info:
        loop.train(cfg, _tiny_samples(), tmp_path / "run", progress=False)
    assert info.value is not None  # the traceback (and its frames) still held here
    deadline = time.time() + 10
    while mp.active_children() and time.time() < deadline:
        time.sleep(0.1)
    assert not mp.active_children()


# ----------------------------------------------------------------------------------------------
# Options and labels that were accepted and then ignored or misread (found by a review).


def _refused(capsys, argv, *needles):
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    return err


def test_a_depth_other_than_the_pool_levels_is_refused(dataset, tmp_path, capsys):
    argv = _short(dataset, tmp_path / "run", "--pool", "2x2", "--depth", "3")
    _refused(capsys, argv, "--depth 3", "--pool")
    assert not (tmp_path / "run").exists()
    assert main(_short(dataset, tmp_path / "ok", "--pool", "2x2", "--depth", "1")) == 0


@pytest.mark.parametrize("mode", ["binary", "instances", "classes"])
def test_boundary_width_without_a_boundary_class_is_refused(dataset, tmp_path, capsys, mode):
    argv = _short(dataset, tmp_path / "run", "--label-mode", mode, "--boundary-width", "3")
    _refused(capsys, argv, "--boundary-width", mode)


def test_labels_of_one_class_are_refused(dataset, tmp_path, capsys):
    import tifffile

    labels = tmp_path / "labels"
    labels.mkdir()
    for path in sorted((dataset / "train/labels").iterdir()):
        tifffile.imwrite(labels / f"{path.stem}.tif", np.zeros((64, 64), np.uint8))
    argv = ["train", "--images", dataset / "train/images", "--labels", labels, "--out",
            tmp_path / "run", "--iterations", "2", "--quiet", *TINY]
    _refused(capsys, argv, "class 0 only", "--unlabeled")
    assert not (tmp_path / "run").exists()


def test_resume_from_a_state_of_another_network_is_one_line(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_short(dataset, run, "--iterations", "2")) == 0
    config = json.loads((run / "config.json").read_text())
    config["net"]["width"] = 3  # edited by hand: the saved state no longer fits
    (run / "config.json").write_text(json.dumps(config))
    _refused(capsys, ["train", "--resume", "--out", run, "--iterations", "3", "--quiet"],
             "state.safetensors", "does not fit", "config.json")

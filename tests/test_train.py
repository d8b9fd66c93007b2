import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors import safe_open

from useg.checkpoint import load_model
from useg.cli import main
from useg.synthetic import make_dataset

TINY = ["--width", "2", "--depth", "1", "--tile", "36", "--workers", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_dataset(root / "train", n_images=2, shape=(64, 64), seed=1)
    make_dataset(root / "val", n_images=1, shape=(64, 64), seed=2)
    return root


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
    from useg.data import make_sample
    from useg.errors import ConfigError
    from useg.synthetic import touching_cells
    from useg.train import TrainConfig, train

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

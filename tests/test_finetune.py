"""Fine-tuning: ``useg train --init MODEL`` starts from a model's network and weights."""

import json

import pytest
import torch
from conftest import TINY

from useg.cli import main
from useg.nets.checkpoint import load_model

# TINY without the network options, which --init refuses.
RUN = [a for i, a in enumerate(TINY)
       if a not in ("--width", "--depth") and TINY[i - 1] not in ("--width", "--depth")]


def _train(dataset, out, *extra):
    return main(["train", "--images", str(dataset / "train/images"), "--labels",
                 str(dataset / "train/labels"), "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def start_model(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("start") / "run"
    assert _train(dataset, out, "--iterations", "3", *TINY, "--seed", "7") == 0
    return out / "last.safetensors"


def _max_difference(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_init_starts_from_the_models_weights(dataset, start_model, tmp_path, capsys):
    # A learning rate too small to move the weights: the run's model is the one it started from.
    out = tmp_path / "tuned"
    assert _train(dataset, out, "--init", str(start_model), "--iterations", "1", "--lr",
                  "1e-12", "--optimizer", "sgd", "--momentum", "0", *RUN) == 0
    start, tuned = load_model(start_model), load_model(out / "last.safetensors")
    assert tuned.config == start.config
    assert _max_difference(start, tuned) < 1e-6
    assert "fine-tuning" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["init"] == {"model": str(start_model), "file": str(start_model)}
    assert saved["normalization"] == json.loads(json.dumps(start.meta["normalization"]))
    # Without --init the same run starts from a new network: the test above can fail.
    fresh = tmp_path / "fresh"
    assert _train(dataset, fresh, "--iterations", "1", "--lr", "1e-12", "--optimizer", "sgd",
                  "--momentum", "0", *TINY) == 0
    assert _max_difference(start, load_model(fresh / "last.safetensors")) > 1e-3


def test_fine_tuning_trains_on(dataset, start_model, tmp_path):
    out = tmp_path / "tuned"
    assert _train(dataset, out, "--init", str(start_model), "--iterations", "3", *RUN) == 0
    assert _max_difference(load_model(start_model), load_model(out / "last.safetensors")) > 0


@pytest.mark.parametrize("extra, message", [
    (["--width", "4"], "--width: the network comes from the --init model"),
    (["--depth", "2", "--padding", "same"], "--depth, --padding: the network comes from"),
    (["--label-mode", "three_class"], "has 2 output classes; label mode 'three_class' needs 3"),
])
def test_init_refusals_are_one_line(dataset, start_model, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    code = _train(dataset, out, "--init", str(start_model), "--iterations", "1", *RUN, *extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (out / "config.json").exists()


def test_init_of_a_missing_model_is_one_line(dataset, tmp_path, capsys):
    code = _train(dataset, tmp_path / "run", "--init", str(tmp_path / "nope.safetensors"),
                  "--iterations", "1", *RUN)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "nope.safetensors" in err and len(err.splitlines()) == 1


def test_packaged_model_by_name_is_the_network(dataset, tmp_path):
    from useg.training.from_folders import make_config

    cfg = make_config(2, init="em-membrane", recipe="cpu-fast", device="cpu", iterations=1)
    packaged = load_model("em-membrane")
    assert cfg.net == json.loads(json.dumps(packaged.config.to_dict()))
    assert cfg.init["model"] == "em-membrane" and cfg.init["file"].endswith(
        "em-membrane.safetensors")
    assert cfg.normalization == packaged.meta["normalization"]
    assert torch.is_tensor(next(iter(packaged.state_dict().values())))


def test_a_start_model_whose_output_is_not_finite_is_named(dataset, start_model, tmp_path,
                                                            capsys):
    from useg.nets.checkpoint import save_model

    net = load_model(start_model)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e19)
    broken = save_model(net, tmp_path / "broken.safetensors")
    code = _train(dataset, tmp_path / "run", "--init", str(broken), "--iterations", "2", *RUN)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--init model {broken}" in err and "not finite" in err

"""Precision choice: ``auto`` is never slower than fp32, forced bf16 warns where it is emulated,
and the measurement behind ``auto`` is cached once per machine."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from useg import device as dev
from useg.cli import main
from useg.errors import ConfigError, UsegWarning

AVX2 = ("AMD EPYC", frozenset({"sse4_2", "avx", "avx2", "fma"}))
SAPPHIRE = ("Intel Xeon Platinum 8480", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}))


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Every test measures afresh and keeps its cache in its own folder."""
    monkeypatch.setattr(dev, "_measured", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("USEG_PRECISION_CACHE", raising=False)


def fake_cpu(monkeypatch, cpu):
    monkeypatch.setattr(dev, "cpu_info", lambda: cpu)


def fake_measurement(monkeypatch, fp32, bf16):
    calls = []

    def measure(budget=1.0):
        calls.append(budget)
        return {"fp32": fp32, "bf16": bf16}

    monkeypatch.setattr(dev, "measure_cpu_precisions", measure)
    return calls


def cache_file(tmp_path):
    return tmp_path / "cache" / "useg" / "precision.json"


@pytest.mark.skipif(dev.cpu_has_native_bf16(), reason="this CPU has bf16 instructions")
def test_auto_is_fp32_on_this_cpu_without_bf16_instructions(monkeypatch):
    calls = fake_measurement(monkeypatch, 1.0, 0.1)
    assert dev.resolve_precision("auto", "cpu") == "fp32"
    assert calls == []  # flags alone decide: nothing to measure


def test_auto_never_measures_without_native_flags(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, AVX2)
    calls = fake_measurement(monkeypatch, 1.0, 0.1)  # even a "faster" emulation is not taken
    assert not dev.cpu_has_native_bf16()
    assert dev.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert calls == [] and not cache_file(tmp_path).exists()


@pytest.mark.parametrize("fp32, bf16, expected", [
    (1.0, 0.5, "bf16"),  # measured faster
    (1.0, 1.5, "fp32"),  # measured slower
    (1.0, 0.95, "fp32"),  # a tie is not worth the lost precision
])
def test_auto_follows_the_measurement_on_native_cpus(monkeypatch, fp32, bf16, expected):
    fake_cpu(monkeypatch, SAPPHIRE)
    calls = fake_measurement(monkeypatch, fp32, bf16)
    assert dev.cpu_has_native_bf16()
    assert dev.resolve_precision("auto", "cpu") == expected
    assert dev.resolve_precision("auto", "cpu") == expected
    assert len(calls) == 1  # once per process


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert dev.resolve_precision("auto", torch.device("cuda")) == expected


def test_forced_bf16_warns_where_emulated(monkeypatch):
    fake_cpu(monkeypatch, AVX2)
    with pytest.warns(UsegWarning, match="emulated.*much slower.*auto or fp32") as record:
        assert dev.resolve_precision("bf16", "cpu") == "bf16"
    assert len(record) == 1 and "\n" not in str(record[0].message)
    fake_cpu(monkeypatch, SAPPHIRE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dev.resolve_precision("bf16", "cpu") == "bf16"
        assert dev.resolve_precision("fp32", "cpu") == "fp32"


def test_predict_warns_for_forced_bf16_where_emulated(monkeypatch):
    from useg.inference.predict import predict
    from useg.nets import UNet

    fake_cpu(monkeypatch, AVX2)
    net = UNet("ronneberger2015", width=2, depth=1)
    with pytest.warns(UsegWarning, match="emulated"):
        predict(net, np.zeros((30, 30), np.float32), device="cpu", precision="bf16")


@pytest.mark.parametrize("bad", ["bogus", "FP32", "", "bfloat16"])
def test_unknown_precision_is_refused(bad):
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16"):
        dev.resolve_precision(bad, "cpu")


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        dev.resolve_precision("fp16", "cpu")


# ----------------------------------------------------------------------------------------------
# The cache


def test_measurement_is_cached_per_machine(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, SAPPHIRE)
    calls = fake_measurement(monkeypatch, 1.0, 0.5)
    assert dev.resolve_precision("auto", "cpu") == "bf16"
    saved = json.loads(cache_file(tmp_path).read_text())
    (entry,) = saved["entries"].values()
    assert entry["cpu"] == SAPPHIRE[0] and entry["torch"] == torch.__version__
    assert "avx512_bf16" in entry["flags"] and entry["bf16_faster"] is True
    # A new process (no memory of its own) reads the file instead of measuring.
    monkeypatch.setattr(dev, "_measured", {})
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 1
    # Another CPU model (or torch version) is another key: measured again.
    monkeypatch.setattr(dev, "_measured", {})
    fake_cpu(monkeypatch, ("Intel Xeon Gold 6430", SAPPHIRE[1]))
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 2
    assert len(json.loads(cache_file(tmp_path).read_text())["entries"]) == 2


def test_cache_is_written_atomically(monkeypatch, tmp_path):
    import useg.io.files

    fake_cpu(monkeypatch, SAPPHIRE)
    fake_measurement(monkeypatch, 1.0, 0.5)
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("previous content")

    def crash(_path):
        raise OSError("disk full")

    # A writer that fails after writing its data but before putting it in place.
    monkeypatch.setattr(useg.io.files, "_fsync", crash)
    assert dev.resolve_precision("auto", "cpu") == "bf16"  # the failure costs nothing
    assert path.read_text() == "previous content"
    assert sorted(p.name for p in path.parent.iterdir()) == ["precision.json"]


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", '{"format": "other"}',
    '{"format": "useg-precision-cache", "entries": []}',
])
def test_corrupt_cache_is_measured_again_and_replaced(monkeypatch, tmp_path, content):
    fake_cpu(monkeypatch, SAPPHIRE)
    calls = fake_measurement(monkeypatch, 1.0, 0.5)
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 1
    assert json.loads(path.read_text())["format"] == "useg-precision-cache"


def test_corrupt_cache_entry_is_measured_again(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, SAPPHIRE)
    calls = fake_measurement(monkeypatch, 1.0, 0.5)
    dev.resolve_precision("auto", "cpu")
    path = cache_file(tmp_path)
    saved = json.loads(path.read_text())
    for entry in saved["entries"].values():
        entry["bf16_faster"] = "yes"
    path.write_text(json.dumps(saved))
    monkeypatch.setattr(dev, "_measured", {})
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 2


def test_unwritable_cache_and_disabled_cache(monkeypatch, tmp_path):
    fake_cpu(monkeypatch, SAPPHIRE)
    calls = fake_measurement(monkeypatch, 1.0, 0.5)
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 1
    monkeypatch.setattr(dev, "_measured", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("USEG_PRECISION_CACHE", "0")
    assert dev.resolve_precision("auto", "cpu") == "bf16" and len(calls) == 2
    assert not cache_file(tmp_path).exists()


def test_real_measurement_is_short():
    import time

    start = time.perf_counter()
    seconds = dev.measure_cpu_precisions()
    assert time.perf_counter() - start < 4  # budget 1 s; generous for a loaded machine
    assert set(seconds) == {"fp32", "bf16"} and all(v > 0 for v in seconds.values())


# ----------------------------------------------------------------------------------------------
# Where the precision is chosen: library, training and command line


def test_training_records_the_resolved_precision(monkeypatch, tmp_path):
    from useg.training.config import TrainConfig
    from useg.training.loop import train
    from useg.training.samples import make_sample
    from useg.workflows.synthetic import touching_cells

    img, inst = touching_cells((48, 48), rng=0)
    samples = [make_sample(img, inst, mode="instances")]
    assert TrainConfig().precision == "auto"
    for cpu, fp32, bf16, expected in ((AVX2, 1.0, 0.5, "fp32"), (SAPPHIRE, 1.0, 0.5, "bf16")):
        fake_cpu(monkeypatch, cpu)
        fake_measurement(monkeypatch, fp32, bf16)
        cfg = TrainConfig(net={"ndim": 2, "width": 2, "depth": 1}, tile=36, iterations=1,
                          val_every=10**9, workers=0, device="cpu", augment=None)
        out = tmp_path / expected
        train(cfg, samples, out, progress=False)
        assert json.loads((out / "config.json").read_text())["precision"] == expected


def test_saved_configurations_keep_their_precision():
    from useg.training.config import TrainConfig

    for precision in ("fp32", "bf16"):
        assert TrainConfig.from_dict({"precision": precision}).precision == precision
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="bogus")


@pytest.fixture
def tiny(tmp_path):
    from useg.nets import UNet
    from useg.nets.checkpoint import save_model

    model = save_model(UNet("ronneberger2015", width=2, depth=1), tmp_path / "m.safetensors")
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    return model, image


def test_cli_defaults_to_auto():
    from useg.cli import build_parser

    parser = build_parser()
    for argv in (["predict", "x", "--model", "m", "--out", "o"], ["train", "--out", "o"],
                 ["densify", "--out", "o"]):
        assert parser.parse_args(argv).precision == "auto", argv


def test_cli_accepts_auto(tiny, tmp_path, capsys):
    model, image = tiny
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--quiet", "--precision", "auto"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["predict", "train", "densify"])
def test_cli_unknown_precision_is_one_line_exit_2(tiny, tmp_path, capsys, command):
    model, image = tiny
    argv = {
        "predict": ["predict", str(image), "--model", str(model)],
        "train": ["train", "--images", str(image), "--labels", str(image)],
        "densify": ["densify", str(image), "--labels", str(image)],
    }[command]
    code = main([*argv, "--out", str(tmp_path / "o"), "--precision", "bogus"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "bogus" in err and "auto" in err, err


def test_cli_forced_bf16_warns_in_one_line(monkeypatch, tiny, tmp_path, capsys):
    model, image = tiny
    fake_cpu(monkeypatch, AVX2)
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--quiet", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("useg predict: warning: bf16") and "--precision auto" in err, err


@pytest.mark.parametrize("cpu, expected", [(AVX2, "fp32"), (SAPPHIRE, "bf16")])
def test_block_parallel_run_records_the_resolved_precision(monkeypatch, tmp_path, cpu, expected):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    from useg.inference.dask import predict_dask
    from useg.nets import UNet

    fake_cpu(monkeypatch, cpu)
    fake_measurement(monkeypatch, 1.0, 0.5)
    net = UNet("ronneberger2015", width=2, depth=1)
    image = np.random.default_rng(0).random((1, 40, 40), dtype=np.float32)
    out = tmp_path / "out.zarr"
    predict_dask(net, image, str(out / "probs"), block=64, tile=36, device="cpu",
                 scheduler="synchronous", progress=False)
    record = json.loads((out / "probs" / ".useg-run" / "run.json").read_text())
    assert record["precision"] == expected

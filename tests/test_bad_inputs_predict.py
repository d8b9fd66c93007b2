"""Bad inputs of prediction and training that a fuzz run found: each one line and exit 2, or
(for valid inputs) a result, never NaN maps or a hang."""

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import tifffile
import torch

from useg.cli import main
from useg.io.normalize import image_stats, normalize
from useg.nets import UNet
from useg.nets.checkpoint import save_model


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue().strip()


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return save_model(UNet("ronneberger2015", width=4, depth=2), tmp_path / "m.safetensors")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((48, 48)).astype(np.float32))
    return path


def test_weights_that_overflow_give_one_line_not_a_nan_map(tmp_path, image):
    # Finite weights, so the loader accepts them; the network's output still overflows.
    net = UNet("ronneberger2015", width=4, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1e19)
    path = save_model(net, tmp_path / "big.safetensors")
    code, err = run_cli(["predict", image, "--model", path, "--out", tmp_path / "out",
                         "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "not finite" in err and "big.safetensors" in err and "a.tif" in err
    assert not list((tmp_path / "out").glob("*.tif"))


def test_extreme_float_images_are_normalised_without_overflow(tmp_path, model):
    rng = np.random.default_rng(1)
    values = rng.choice([-3e38, 3e38, 0.0], size=(48, 48)).astype(np.float32)
    stats = image_stats(values[None])
    assert all(np.isfinite(stats["offset"])) and all(np.isfinite(stats["scale"]))
    x = normalize(values[None], stats)
    assert x.dtype == np.float32 and np.isfinite(x).all()
    path = tmp_path / "extreme.tif"
    tifffile.imwrite(path, values)
    code, err = run_cli(["predict", path, "--model", model, "--out", tmp_path / "out",
                         "--quiet"])
    assert code == 0 and err == ""
    probs = tifffile.imread(tmp_path / "out" / "extreme_probs.tif")
    assert np.isfinite(probs).all()


def test_ordinary_images_keep_float32_arithmetic():
    x = np.random.default_rng(2).random((1, 8, 8)).astype(np.float32)
    stats = image_stats(x)
    expected = (x - np.float32(stats["offset"][0])) / np.float32(stats["scale"][0])
    assert np.array_equal(normalize(x, stats), expected)


@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_a_small_contrast_on_a_large_offset_is_not_rounded_away(model, dtype):
    # float32 cannot hold 1e9 + 0.5 exactly (its steps there are 64 apart): rounded before
    # the offset is taken away, the image would collapse to a few values and the map with it.
    from useg.inference.predict import predict
    from useg.nets.checkpoint import load_model

    rng = np.random.default_rng(3)
    image = (rng.random((48, 48)) * 1000).astype(dtype)
    net = load_model(model)
    plain = predict(net, image, device="cpu", precision="fp32")
    shifted = image + dtype(10**12)
    stats = image_stats(shifted[None])
    np.testing.assert_allclose(normalize(shifted[None], stats), normalize(image[None],
                                                                          image_stats(image[None])),
                               atol=1e-5)
    far = predict(net, shifted, device="cpu", precision="fp32")
    np.testing.assert_allclose(far, plain, atol=1e-4)


@pytest.mark.parametrize("kept", ["best", "last"])
def test_a_run_folder_is_a_model(tmp_path, image, kept):
    # A run trained without validation images keeps last.safetensors only.
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_model(UNet("ronneberger2015", width=4, depth=2), run / f"{kept}.safetensors")
    code, err = run_cli(["predict", image, "--model", run, "--out", tmp_path / "out", "--quiet"])
    assert code == 0, err
    assert (tmp_path / "out" / "a_probs.tif").exists()


def test_best_is_preferred_to_last(tmp_path):
    from useg.nets.checkpoint import resolve_model

    run = tmp_path / "run"
    run.mkdir()
    for name in ("last", "best"):
        save_model(UNet("ronneberger2015", width=4, depth=2), run / f"{name}.safetensors")
    assert resolve_model(run).name == "best.safetensors"


def test_more_torch_threads_than_cpus_is_refused(tmp_path, image, model):
    import os

    too_many = (os.cpu_count() or 1) + 1
    code, err = run_cli(["predict", image, "--model", model, "--out", tmp_path / "out",
                         "--torch-threads", too_many])
    assert code == 2 and len(err.splitlines()) == 1 and f"--torch-threads {too_many}" in err
    assert not (tmp_path / "out").exists()


def _train(dataset, out, *extra):
    from conftest import TINY

    return run_cli(["train", "--images", dataset / "train/images", "--labels",
                    dataset / "train/labels", "--out", out, "--iterations", "2", "--quiet",
                    *TINY, *extra])


@pytest.mark.timeout(120)
def test_a_batch_larger_than_memory_is_refused_before_anything(dataset, tmp_path):
    code, err = _train(dataset, tmp_path / "run", "--batch-size", "1000000000000")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--batch-size 1000000000000" in err and "GiB" in err
    assert not (tmp_path / "run").exists()


def test_momentum_without_sgd_is_refused(dataset, tmp_path):
    code, err = _train(dataset, tmp_path / "run", "--momentum", "0.5")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--momentum" in err and "adam" in err
    code, err = _train(dataset, tmp_path / "sgd", "--momentum", "0.5", "--optimizer", "sgd")
    assert code == 0, err


def test_a_gray_palette_png_is_one_channel(tmp_path):
    from PIL import Image

    from useg.io import read_image

    gray = np.random.default_rng(3).integers(0, 256, (20, 30)).astype(np.uint8)
    im = Image.new("P", (30, 20))
    im.putpalette([v for g in range(256) for v in (g, g, g)])
    im.putdata(gray.ravel().tolist())
    im.save(tmp_path / "p.png")
    image, _ = read_image(tmp_path / "p.png")
    assert image.shape == (1, 20, 30) and np.array_equal(image[0], gray)
    # A palette of colours stays three channels.
    im.putpalette([v for g in range(256) for v in (g, 255 - g, 0)])
    im.save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png")[0].shape == (3, 20, 30)


@pytest.mark.parametrize("command", ["predict", "train"])
def test_an_empty_output_path_is_refused(dataset, tmp_path, image, model, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    if command == "predict":
        code, err = run_cli(["predict", image, "--model", model, "--out", ""])
    else:
        code, err = _train(dataset, "")
    assert code == 2 and len(err.splitlines()) == 1 and "--out: an empty output path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_export_never_replaces_its_own_model(tmp_path, model):
    before = model.read_bytes()
    code, err = run_cli(["export", model, "--format", "torchscript", "--overwrite", "--out",
                         model])
    assert code == 2 and len(err.splitlines()) == 1 and "is the input" in err, err
    assert model.read_bytes() == before
    run = tmp_path / "run"
    run.mkdir()
    best = run / "best.safetensors"
    best.write_bytes(before)
    code, err = run_cli(["export", run, "--format", "torchscript", "--overwrite", "--out",
                         best])
    assert code == 2 and "is the input" in err and best.read_bytes() == before


def test_dask_output_that_holds_the_input_is_refused(tmp_path, model):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "in.zarr"
    data = np.random.default_rng(4).random((48, 48)).astype(np.float32)
    zarr.open_array(str(store), mode="w", shape=data.shape, dtype="f4")[:] = data
    listing = sorted(p.relative_to(store) for p in store.rglob("*"))
    for out in (store, store / "sub"):
        code, err = run_cli(["predict", store, "--model", model, "--out", out, "--dask",
                             "--overwrite", "--quiet"])
        assert code == 2 and len(err.splitlines()) == 1 and "holds the input" in err, err
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == listing
    assert np.array_equal(zarr.open_array(str(store), mode="r")[:], data)
    # An array inside a store, named as store:level or store/level: the store holds it too.
    group = tmp_path / "img.zarr"
    zarr.open_group(str(group), mode="w").create_array("0", shape=data.shape, dtype="f4")[:] = data
    for source in (f"{group}:0", f"{group}/0"):
        code, err = run_cli(["predict", source, "--model", model, "--out", group, "--dask",
                             "--overwrite", "--quiet"])
        assert code == 2 and len(err.splitlines()) == 1 and "holds the input" in err, err
    assert np.array_equal(zarr.open_group(str(group), mode="r")["0"][:], data)


def test_report_keeps_to_report_html_inside_the_run(dataset, tmp_path):
    run = tmp_path / "run"
    assert _train(dataset, run)[0] == 0
    config = (run / "config.json").read_text()
    code, err = run_cli(["report", run, "--overwrite", "--out", run / "config.json"])
    assert code == 2 and len(err.splitlines()) == 1 and "a file of the run" in err, err
    assert (run / "config.json").read_text() == config
    # A log edited by hand: one line, not a KeyError.
    (run / "log.csv").write_text("loss,lr\n0.5,0.001\n")
    code, err = run_cli(["report", run, "--out", tmp_path / "page.html"])
    assert code == 2 and len(err.splitlines()) == 1 and "log.csv: not a training log" in err

"""Bad inputs of prediction and training that a fuzz run found: each one line and exit 2, or
(for valid inputs) a result, never NaN maps or a hang."""

import io
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import tifffile
import torch

from useg.cli import main
from useg.io import read_image
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


# ----------------------------------------------------------------------------------------------
# Found by a review: inputs that were taken silently for something else, and options that were
# accepted and then ignored.


@pytest.fixture
def model3d(tmp_path):
    torch.manual_seed(0)
    net = UNet("ronneberger2015", width=2, depth=1, ndim=3)
    return save_model(net, tmp_path / "m3.safetensors")


def test_a_2d_image_is_refused_by_a_3d_model_never_its_channels_as_slices(tmp_path, model3d):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8),
                     photometric="rgb")
    for extra in ([], ["--dask"]):
        out = tmp_path / ("o.zarr" if extra else "o")
        code, err = run_cli(["predict", rgb, "--model", model3d, "--out", out, "--quiet",
                             *extra])
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "rgb.tif" in err and "2D image" in err and "3D model" in err
        assert not out.exists() or not any(out.rglob("*.tif"))


def test_dask_names_the_file_whose_values_overflow_its_statistics(tmp_path, model3d):
    # Finite values whose mean and spread overflow: refused before any output, naming the file
    # read (not "image", what an in-memory array is called).
    volume = np.full((8, 32, 32), 1.5e308)
    volume[4:] = -1.5e308
    tifffile.imwrite(tmp_path / "vol.tif", volume)
    out = tmp_path / "o.zarr"
    code, err = run_cli(["predict", tmp_path / "vol.tif", "--model", model3d, "--out", out,
                         "--dask", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "vol.tif: holds NaN or infinite values" in err and "image:" not in err


def test_a_tiff_of_several_series_is_refused_not_read_in_part(tmp_path, model):
    path = tmp_path / "s.tif"
    for value in range(3):
        tifffile.imwrite(path, np.full((48, 48), value, np.uint8), append=True)
    code, err = run_cli(["predict", path, "--model", model, "--out", tmp_path / "o", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "s.tif" in err and "3 separate images" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # A single stack, and one image with a reduced-resolution copy, read as before.
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((3, 48, 48), np.uint8),
                     photometric="minisblack")
    assert read_image(tmp_path / "one.tif")[0].shape == (1, 3, 48, 48)
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tif:
        tif.write(np.zeros((48, 48), np.uint8))
        tif.write(np.zeros((12, 12), np.uint8), subfiletype=1)
    assert read_image(tmp_path / "thumb.tif")[0].shape == (1, 48, 48)


def test_dask_names_the_input_file_it_cannot_predict(tmp_path, model):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((48, 48, 3), np.uint8), photometric="rgb")
    code, err = run_cli(["predict", rgb, "--model", model, "--out", tmp_path / "c.zarr",
                         "--dask", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "rgb.tif: " in err and "3 channel" in err and "image:" not in err
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((4, 48, 48), np.float32), photometric="minisblack")
    code, err = run_cli(["predict", stack, "--model", model, "--out", tmp_path / "o.zarr",
                         "--dask", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "stack.tif" in err and "2D model" in err and "slice by slice" in err


def test_dask_refuses_an_input_with_nan_before_writing_a_run(tmp_path, model):
    zarr = pytest.importorskip("zarr")
    store = tmp_path / "in.zarr"
    data = np.random.default_rng(4).random((48, 48)).astype(np.float32)
    data[5, 7] = np.nan
    zarr.open_array(str(store), mode="w", shape=data.shape, dtype="f4")[:] = data
    out = tmp_path / "o.zarr"
    for _ in range(2):  # a rerun says the same, never "rerun to resume"
        code, err = run_cli(["predict", store, "--model", model, "--out", out, "--dask",
                             "--quiet"])
        assert code == 2 and len(err.splitlines()) == 1, err
        assert "in.zarr" in err and "NaN" in err and "resume" not in err
    assert not list(out.rglob("run.json")) if out.exists() else True


def test_seed_distance_that_would_be_ignored_is_refused(tmp_path, image, model):
    code, err = run_cli(["predict", image, "--model", model, "--out", tmp_path / "o",
                         "--instances", "--seed-distance", "5", "--seed-threshold", "0.6",
                         "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--seed-distance" in err and "--seed-threshold" in err
    assert not (tmp_path / "o").exists()
    # A three_class model takes its seeds from its interior class.
    net = UNet("ronneberger2015", width=4, depth=2, classes=3)
    three = save_model(net, tmp_path / "three.safetensors",
                       {"labels": {"mode": "three_class"}})
    code, err = run_cli(["predict", image, "--model", three, "--out", tmp_path / "o3",
                         "--instances", "--seed-distance", "5", "--quiet"])
    assert code == 2 and "three_class" in err and "--seed-distance" in err, err


def test_instances_of_a_model_with_other_classes_is_refused_before_predicting(tmp_path, image):
    net = UNet("ronneberger2015", width=4, depth=2, classes=3)
    path = save_model(net, tmp_path / "c3.safetensors")  # no label mode: read as binary
    code, err = run_cli(["predict", image, "--model", path, "--out", tmp_path / "o",
                         "--instances", "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "c3.safetensors" in err and "3" in err and "binary" in err
    assert not (tmp_path / "o").exists()


def test_result_names_drop_the_whole_ome_tif_extension(tmp_path, model):
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((48, 48)).astype(np.float32))
    code, err = run_cli(["predict", path, "--model", model, "--out", tmp_path / "o", "--quiet"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cell_labels.tif",
                                                                  "cell_probs.tif"]


def test_an_out_named_like_an_image_is_refused(tmp_path, image, model):
    code, err = run_cli(["predict", image, "--model", model, "--out", tmp_path / "res.tif",
                         "--quiet"])
    assert code == 2 and len(err.splitlines()) == 1 and "res.tif" in err and "folder" in err
    assert not (tmp_path / "res.tif").exists()


def test_export_refuses_a_name_of_the_other_format(tmp_path, model):
    for fmt, name in (("torchscript", "m.onnx"), ("onnx", "m.pt")):
        code, err = run_cli(["export", model, "--format", fmt, "--out", tmp_path / name])
        assert code == 2 and len(err.splitlines()) == 1 and name in err and fmt in err, err
        assert not (tmp_path / name).exists()


def test_results_of_an_earlier_run_that_this_one_does_not_write_are_removed(tmp_path, image,
                                                                            model):
    out = tmp_path / "o"
    assert run_cli(["predict", image, "--model", model, "--out", out, "--quiet"])[0] == 0
    mine = out / "b_probs.tif"  # a user's file named like a result: never touched
    tifffile.imwrite(mine, np.zeros((4, 4), np.float32))
    code, err = run_cli(["predict", image, "--model", model, "--out", out, "--quiet",
                         "--overwrite", "--no-probs"])
    assert code == 0 and "a_probs.tif: removed" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_probs.tif"]


def test_an_array_spec_without_dask_says_to_use_dask(tmp_path, model):
    zarr = pytest.importorskip("zarr")
    zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(48, 48), dtype="f4")
    for spec in (tmp_path / "v.zarr", f"{tmp_path}/g.zarr/raw", f"{tmp_path}/h.h5:/raw"):
        code, err = run_cli(["predict", spec, "--model", model, "--out", tmp_path / "o",
                             "--quiet"])
        assert code == 2 and len(err.splitlines()) == 1 and "--dask" in err, err

import importlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from useg.cli import main
from useg.inference.predict import predict
from useg.io import read_image
from useg.nets import UNet
from useg.nets.checkpoint import save_model


@pytest.fixture
def model_path(tmp_path):
    return save_model(UNet("ronneberger2015", width=4, depth=2), tmp_path / "m.safetensors")


def test_predict_folder_of_png_and_stack(tmp_path, model_path, rng):
    src = tmp_path / "in"
    src.mkdir()
    img = (rng.random((70, 90)) * 255).astype(np.uint8)
    Image.fromarray(img).save(src / "a.png")
    tifffile.imwrite(src / "b.tif", (rng.random((4, 40, 50)) * 255).astype(np.uint8),
                     photometric="minisblack")
    out = tmp_path / "out"
    assert main(["predict", str(src), "--model", str(model_path), "--out", str(out),
                 "--quiet", "--tile", "60"]) == 0
    probs, _ = read_image(out / "a_probs.tif")
    assert probs.shape == (2, 70, 90)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    # The CLI gives what the Python API gives.
    from useg.nets.checkpoint import load_model

    expected = predict(load_model(model_path), img, tile=60, device="cpu")
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    labels = tifffile.imread(out / "a_labels.tif")
    assert np.array_equal(labels, expected.argmax(0))
    stack = tifffile.imread(out / "b_labels.tif")
    assert stack.shape == (4, 40, 50)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("corrupt", "corrupt"),
    ("rgb", "channel"),
    ("nan", "NaN"),
    ("small", "smaller than the network's minimum"),
    ("empty", "empty"),
])
def test_bad_input_one_line_exit_2(tmp_path, model_path, capsys, case, message):
    path = tmp_path / f"{case}.tif"
    if case == "corrupt":
        path.write_bytes(b"II*\x00garbage")
    elif case == "rgb":
        tifffile.imwrite(path, np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    elif case == "nan":
        tifffile.imwrite(path, np.full((40, 40), np.nan, np.float32))
    elif case == "small":
        tifffile.imwrite(path, np.zeros((3, 3), np.uint8))
    elif case == "empty":
        tifffile.imwrite(path, np.zeros((0, 40), np.uint8))
    code = main(["predict", str(path), "--model", str(model_path), "--out", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and path.name in err
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_bad_model_file(tmp_path, capsys):
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, np.zeros((40, 40), np.uint8))
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model")
    assert main(["predict", str(img), "--model", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_interrupted_write_leaves_no_partial_file(tmp_path, model_path, monkeypatch):
    import useg.io

    img = tmp_path / "a.tif"
    tifffile.imwrite(img, np.zeros((40, 40), np.uint8))
    real = useg.io.write_image
    calls = []

    def write_then_die(path, *a, **k):
        calls.append(path)
        if "labels" in str(path):
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(useg.io, "write_image", write_then_die)
    assert main(["predict", str(img), "--model", str(model_path), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 130
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["a_probs.tif"]  # complete, and nothing half-written beside it


def _png(path, rng, shape=(40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("layout", ["two folders", "two files", "png and tif in one folder"])
def test_two_inputs_writing_one_result_are_refused_before_predicting(
        tmp_path, model_path, rng, capsys, monkeypatch, layout):
    predict_module = importlib.import_module("useg.inference.files")
    if layout == "png and tif in one folder":
        first = _png(tmp_path / "a/x.png", rng)
        second = tmp_path / "a/x.tif"
        tifffile.imwrite(second, np.zeros((40, 40), np.uint8))
        inputs = [tmp_path / "a"]
    else:
        first, second = _png(tmp_path / "a/x.png", rng), _png(tmp_path / "b/x.png", rng)
        inputs = [first, second] if layout == "two files" else [tmp_path / "a", tmp_path / "b"]
    predicted = []
    monkeypatch.setattr(predict_module, "predict_file", lambda *a, **k: predicted.append(a) or {})
    out = tmp_path / "out"
    code = main(["predict", *map(str, inputs), "--model", str(model_path), "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(first) in err and str(second) in err, err
    assert "x_probs.tif" in err
    assert predicted == [] and not out.exists()  # refused before the first image


def test_results_keep_the_path_relative_to_the_input_folder(tmp_path, model_path, rng):
    from useg import io
    from useg.inference.files import predict_file
    from useg.nets.checkpoint import load_model

    _png(tmp_path / "in/x.png", rng)
    _png(tmp_path / "in/day1/x.png", rng)  # folders are not searched recursively
    plan = io.plan_results([tmp_path / "in"], tmp_path / "out", probabilities=False)
    assert [(p.relative_to(tmp_path), n, r["labels"].relative_to(tmp_path))
            for p, n, r in plan] == [(Path("in/x.png"), Path("x.png"), Path("out/x_labels.tif"))]
    # A name with sub-folders (an image found below the folder given) mirrors them under out.
    written = predict_file(load_model(model_path), tmp_path / "in/day1/x.png", tmp_path / "out",
                           name=Path("day1/x.png"), tile=60, device="cpu")
    assert written == {"probabilities": tmp_path / "out/day1/x_probs.tif",
                       "labels": tmp_path / "out/day1/x_labels.tif"}
    assert all(p.exists() for p in written.values())


def test_existing_results_are_kept_unless_overwrite(tmp_path, model_path, rng, capsys):
    img = _png(tmp_path / "x.png", rng)
    out = tmp_path / "out"
    out.mkdir()
    labels = out / "x_labels.tif"
    labels.write_bytes(b"an earlier result")
    argv = ["predict", str(img), "--model", str(model_path), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(labels) in err and "--overwrite" in err, err
    assert labels.read_bytes() == b"an earlier result"
    assert not (out / "x_probs.tif").exists()  # nothing was predicted
    assert main([*argv, "--overwrite"]) == 0
    assert tifffile.imread(labels).shape == (40, 40)


def test_a_result_never_replaces_an_input(tmp_path, model_path, rng, capsys):
    folder = tmp_path / "in"
    _png(folder / "x.png", rng)
    tifffile.imwrite(folder / "x_labels.tif", np.zeros((40, 40), np.uint8))
    code = main(["predict", str(folder), "--model", str(model_path), "--out", str(folder),
                 "--overwrite", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "replace the input" in err, err
    assert not tifffile.imread(folder / "x_labels.tif").any()


@pytest.mark.parametrize("option", [["--workers", "2"], ["--scheduler", "threads"],
                                    ["--block", "64"]])
def test_dask_options_without_dask_are_refused(tmp_path, model_path, rng, capsys, option):
    img = _png(tmp_path / "x.png", rng)
    out = tmp_path / "out"
    code = main(["predict", str(img), "--model", str(model_path), "--out", str(out), "--quiet",
                 *option])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and option[0] in err, err
    assert "--dask" in err and not out.exists()


def test_torch_threads_sets_the_threads_of_the_prediction(tmp_path, model_path, rng, capsys,
                                                          monkeypatch):
    import torch

    predict_module = importlib.import_module("useg.inference.files")
    img = _png(tmp_path / "x.png", rng)
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen = []
    real = predict_module.predict_file

    def record(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(predict_module, "predict_file", record)
    try:
        assert main(["predict", str(img), "--model", str(model_path), "--out",
                     str(tmp_path / "out"), "--quiet", "--torch-threads", str(wanted)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [wanted]
    assert main(["predict", str(img), "--model", str(model_path), "--out",
                 str(tmp_path / "o2"), "--torch-threads", "0"]) == 2
    assert "--torch-threads" in capsys.readouterr().err


def test_a_corrupt_tiff_is_one_line_in_a_real_process(tmp_path, model_path):
    # pytest captures library log records; a real process showed tifffile's own line too.
    import subprocess
    import sys

    path = tmp_path / "corrupt.tif"
    path.write_bytes(b"II*\x00garbage")
    done = subprocess.run([sys.executable, "-m", "useg", "predict", str(path), "--model",
                           str(model_path), "--out", str(tmp_path / "o"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt.tif" in lines[0], done.stderr

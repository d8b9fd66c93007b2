import numpy as np
import pytest
import tifffile
from PIL import Image

from useg.checkpoint import save_model
from useg.cli import main
from useg.io import read_image
from useg.nets import UNet
from useg.predict import predict


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
    from useg.checkpoint import load_model

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

"""``useg export``: ONNX (run by onnxruntime) and TorchScript exports equal the PyTorch network on
valid tiles of several sizes, carry the model file's header, and plug into useg's tiler."""

import json

import numpy as np
import pytest
import torch

import useg
from useg.cli import main
from useg.inference.tile_choice import tile_geometry
from useg.inference.tiling import predict_tiled
from useg.io import normalize as norm
from useg.nets import UNet, load_model, min_input_shape, pool_step, save_model
from useg.nets.export import TORCHSCRIPT_EXTRA_FILE, export_model

META = {"normalization": {"mode": "percentile", "low": 1.0, "high": 99.0},
        "labels": {"mode": "binary", "names": ["background", "cell"]}}


def _small(ndim):
    torch.manual_seed(ndim)
    if ndim == 2:
        net = UNet("ronneberger2015", width=4, depth=2, norm="batch")
    else:
        net = UNet("cicek2016", width=2, depth=2)
    for m in net.modules():  # running statistics far from the identity, so that they count
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.weight is not None:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _model_file(tmp_path, ndim):
    return load_model(save_model(_small(ndim), tmp_path / f"m{ndim}.safetensors", META))


def _tiles(net):
    """Three valid tiles: the smallest, and two larger ones that differ per axis."""
    m, s = min_input_shape(net.config), pool_step(net.config)
    return [m, tuple(a + b for a, b in zip(m, s, strict=True)),
            tuple(a + (i + 1) * b for i, (a, b) in enumerate(zip(m, s, strict=True)))]


def _reference(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="onnx not installed (pip install useg[export])")
    return pytest.importorskip("onnxruntime",
                               reason="onnxruntime not installed (pip install useg[export])")


@pytest.mark.parametrize("ndim", [2, 3])
def test_onnx_matches_pytorch(tmp_path, ort, ndim):
    import onnx

    net = _model_file(tmp_path, ndim)
    path = export_model(net.path, tmp_path / "m.onnx", format="onnx")
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    header = json.loads(props["useg"])
    assert header["normalization"] == META["normalization"]
    assert json.loads(props["labels"]) == META["labels"]
    geometry = json.loads(props["geometry"])
    assert geometry["min_input_shape"] == list(min_input_shape(net.config))
    assert geometry["pool_step"] == list(pool_step(net.config))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    tiles = _tiles(net)
    assert len({t[-2:] for t in tiles if t[-1] != t[-2]}) >= 1  # a non-square tile
    for tile in tiles:
        x = rng.standard_normal((2, 1, *tile)).astype(np.float32)
        (y,) = session.run(None, {"image": x})
        ref = _reference(net, x)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= 1e-4, tile


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("ndim", [2, 3])
def test_torchscript_matches_pytorch(tmp_path, ndim):
    net = _model_file(tmp_path, ndim)
    path = export_model(net.path, tmp_path / "m.pt", format="torchscript")
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    header = json.loads(extra[TORCHSCRIPT_EXTRA_FILE])
    assert header["labels"] == META["labels"]
    assert header["export"]["halo"] == list(net.halo)
    rng = np.random.default_rng(1)
    for tile in _tiles(net):
        x = rng.standard_normal((1, 1, *tile)).astype(np.float32)
        with torch.no_grad():
            y = loaded(torch.from_numpy(x)).numpy()
        ref = _reference(net, x)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= 1e-4, tile


@pytest.mark.parametrize("ndim, shape, tile_request", [
    (2, (1, 70, 90), (52, 60)), (3, (1, 12, 14, 18), (48, 52, 52))])
def test_onnx_session_in_the_tiler_equals_useg_predict(tmp_path, ort, ndim, shape, tile_request):
    net = _model_file(tmp_path, ndim)
    path = export_model(net, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(2).random(shape).astype(np.float32) * 200
    expected = useg.predict(net, image, tile=tile_request, device="cpu", precision="fp32")

    stats = norm.image_stats(image, net.meta["normalization"])

    def onnx_predictor(x):
        (logits,) = session.run(None, {"image": norm.normalize(x, stats, channel_axis=1)})
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    tile, h, margin, step = tile_geometry(net, image.shape[1:], tile_request,
                                          torch.device("cpu"), False)
    got = predict_tiled(onnx_predictor, image, tile=tile, out_channels=net.config.classes,
                        halo=h, margin=margin, step=step)
    assert got.shape == expected.shape == (net.config.classes, *shape[1:])
    assert np.abs(got - expected).max() <= 1e-4


def test_cli_export(tmp_path, capsys):
    net = _model_file(tmp_path, 2)
    out = tmp_path / "sub" / "m.pt"
    assert main(["export", str(net.path), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.safetensors"), "--out",
                 str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.safetensors" in err


def test_onnx_without_the_extra_says_what_to_install(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    net = _model_file(tmp_path, 2)
    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", str(net.path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install useg[export]" in err
    assert not (tmp_path / "m.onnx").exists()


def test_batch_statistics_refused(tmp_path):
    net = UNet("cicek2016", width=2, depth=1, batch_stats=True)
    with pytest.raises(useg.UsegError, match="statistics of the batch"):
        export_model(net, tmp_path / "m.pt", format="torchscript")

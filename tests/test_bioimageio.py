"""``useg export --format bioimageio``: BioImage Model Zoo packages that bioimageio.core's own
model test accepts (offline), whose test output is what ``useg.predict`` gives, with the
network's geometry, the model's normalisation and a one-line error without the extra."""

import socket
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import useg
from useg.cli import main
from useg.errors import InputError
from useg.io import normalize as norm
from useg.io.arrays import read_tile
from useg.nets import UNet, halo, load_model, min_input_shape, output_shape, pool_step, save_model
from useg.workflows.bioimageio import CITATIONS, example_shape, export_bioimageio

_SKIP = "bioimageio.core not installed (pip install useg[bioimageio])"
META = {"normalization": {"mode": "percentile", "low": 2.0, "high": 99.0},
        "labels": {"mode": "three_class", "classes": ["background", "interior", "boundary"]}}


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access during a bioimageio test: {args}")


@pytest.fixture(scope="module")
def offline():
    """Any connection attempt fails the test: packages must be written and tested offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        yield


@pytest.fixture(scope="module")
def core():
    return pytest.importorskip("bioimageio.core", reason=_SKIP)


@pytest.fixture(scope="module")
def em_package(tmp_path_factory, core, offline):
    out = tmp_path_factory.mktemp("em") / "em-membrane.zip"
    assert main(["export", "em-membrane", "--format", "bioimageio", "--out", str(out),
                 "--author", "A. Person"]) == 0
    return load_model("em-membrane"), out


@pytest.fixture(scope="module")
def small3d_package(tmp_path_factory, core, offline):
    torch.manual_seed(3)
    net = UNet("cicek2016", width=2, depth=2)
    for m in net.modules():  # running statistics far from the identity, so that they count
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    folder = tmp_path_factory.mktemp("small3d")
    model = load_model(save_model(net.eval(), folder / "small3d.safetensors", META))
    return model, export_bioimageio(model.path, folder / "small3d.zip")


@pytest.fixture(params=["em_package", "small3d_package"])
def package(request):
    return request.getfixturevalue(request.param)


def _arrays(path):
    with zipfile.ZipFile(path) as z:
        return [np.load(z.open(name)) for name in ("test_input.npy", "test_output.npy")]


def test_core_model_test_passes(package, core, offline):
    """bioimageio.core's own test: the description validates, and both weight formats
    reproduce the test output from the test input at several valid sizes and batch sizes."""
    _, path = package
    summary = core.test_description(path)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details
              if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    assert "pytorch_state_dict" in names and "torchscript" in names


def test_test_output_is_useg_predict(package):
    """The test input is an image mirror-padded by the halo as useg reads it, and the test
    output equals useg.predict of that image (with the test input's statistics, which the zoo
    computes per sample)."""
    model, path = package
    x, y = _arrays(path)
    assert x.shape[:2] == (1, model.config.in_channels)
    assert y.shape[:2] == (1, model.config.classes)
    h = halo(model.config)
    image = x[0][(slice(None), *(slice(n, -n) for n in h))]
    np.testing.assert_array_equal(read_tile(image, [-n for n in h], x.shape[2:]), x[0])
    stats = norm.image_stats(x[0], model.meta.get("normalization"))
    probs = useg.predict(model, image, device="cpu", precision="fp32", stats=stats)
    np.testing.assert_allclose(y[0], probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)


def test_geometry_normalisation_and_fields(package, core):
    """Parameterized input sizes (min, pooling step), outputs referencing the input less twice
    the halo, the header's normalisation as scale_range, softmax, both weights, citations."""
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    model, path = package
    cfg = model.config
    descr = load_description(path)
    assert isinstance(descr, v0_5.ModelDescr), descr
    (ipt,), (out,) = descr.inputs, descr.outputs
    spatial = [a for a in ipt.axes if a.type == "space"]
    assert [str(a.id) for a in spatial] == list("zyx"[3 - cfg.ndim:])
    assert [a.size.min for a in spatial] == list(min_input_shape(cfg))
    assert [a.size.step for a in spatial] == list(pool_step(cfg))
    outs = [a for a in out.axes if a.type == "space"]
    assert [a.size.offset for a in outs] == [-2 * h for h in halo(cfg)]
    assert {(str(a.size.tensor_id), str(a.size.axis_id)) for a in outs} == {
        ("image", str(a.id)) for a in spatial}
    x, y = _arrays(path)
    assert list(y.shape[2:]) == [n - 2 * h for n, h in zip(x.shape[2:], halo(cfg), strict=True)]
    assert list(y.shape[2:]) == list(example_shape(model))
    normalization = model.meta.get("normalization") or {"low": 1.0, "high": 99.8}
    steps = [p for p in ipt.preprocessing if p.id != "ensure_dtype"]
    assert [p.id for p in steps] == ["scale_range"]
    assert steps[0].kwargs.min_percentile == normalization["low"]
    assert steps[0].kwargs.max_percentile == normalization["high"]
    assert [str(a) for a in steps[0].kwargs.axes] == [str(a.id) for a in spatial]
    assert [p.id for p in out.postprocessing if p.id != "ensure_dtype"] == ["softmax"]
    channels = next(a for a in out.axes if a.type == "channel").channel_names
    assert len(channels) == cfg.classes
    arch = descr.weights.pytorch_state_dict.architecture
    assert (arch.import_from, str(arch.callable)) == ("useg.nets.unet", "unet_from_config")
    assert arch.kwargs == cfg.to_dict()
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    assert {str(c.doi) for c in descr.cite} == {doi for _, doi in CITATIONS}
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert str(descr.license) == pyproject["project"]["license"]["text"]
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        readme = z.read("README.md").decode()
    assert {"cover.png", "README.md", "useg.json", "weights.pt",
            "weights_torchscript.pt"} <= names
    assert "## Validation" in readme and "differs from useg" in readme


def test_authors_from_the_command_line(em_package):
    from bioimageio.spec import load_description

    assert [a.name for a in load_description(em_package[1]).authors] == ["A. Person"]
    assert em_package[0].meta["labels"]["classes"] == ["membrane", "cell interior"]


def test_same_padding_output_equals_input(tmp_path, core, offline):
    from bioimageio.spec import load_description

    net = UNet("ronneberger2015", width=2, depth=1, padding="same")
    path = export_bioimageio(load_model(save_model(net, tmp_path / "s.safetensors")),
                             tmp_path / "s.zip")
    (out,) = load_description(path).outputs
    assert [a.size.offset for a in out.axes if a.type == "space"] == [0, 0]
    x, y = _arrays(path)
    assert x.shape[2:] == y.shape[2:]


def test_example_shape_from_an_image():
    net = UNet("ronneberger2015", width=2, depth=2)
    m, s = output_shape(net.config, min_input_shape(net.config)), pool_step(net.config)
    assert example_shape(net, (m[0] + 3 * s[0] + 1, m[1])) == (m[0] + 3 * s[0], m[1])
    with pytest.raises(InputError, match="smaller than the network's smallest output"):
        example_shape(net, (m[0] - 1, m[1]))


def test_missing_extra_is_one_line(tmp_path, monkeypatch, capsys):
    """Without bioimageio.spec: one line naming the extra, exit code 2, nothing written."""
    monkeypatch.setitem(sys.modules, "bioimageio.spec.model", None)  # import fails
    out = tmp_path / "m.zip"
    assert main(["export", "em-membrane", "--format", "bioimageio", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install useg[bioimageio]" in err
    assert not out.exists()


def test_bioimageio_options_need_the_format(tmp_path, capsys):
    assert main(["export", "em-membrane", "--out", str(tmp_path / "m.onnx"),
                 "--author", "A. Person"]) == 2
    assert "--format bioimageio only" in capsys.readouterr().err


def test_a_test_image_that_does_not_fit_is_named(tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    from PIL import Image

    from useg.cli import main

    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")  # 3 channels for a 1-channel model
    code = main(["export", "em-membrane", "--format", "bioimageio", "--test-image",
                 str(tmp_path / "rgb.png"), "--out", str(tmp_path / "m.zip")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--test-image {tmp_path / 'rgb.png'}" in err and "channel" in err
    assert not (tmp_path / "m.zip").exists()

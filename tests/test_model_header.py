"""Hostile model files: every one is refused with one line, quickly and before allocating."""

import json
import math
import time
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import useg.nets.checkpoint as checkpoint
from useg.cli import main
from useg.errors import ModelFileError
from useg.nets import UNet
from useg.nets.checkpoint import load_model, save_model

_NET = UNet("ronneberger2015", width=2, depth=1)
_TENSORS = {k: v.detach().clone().contiguous() for k, v in _NET.state_dict().items()}
_HEADER = {
    "format": "useg-model", "format_version": 1, "config": _NET.config.to_dict(),
    "spacing": None, "normalization": {"mode": "percentile", "low": 1.0, "high": 99.8},
    "labels": {"mode": "binary"}, "provenance": {"trainer": "useg"},
}


def _write(path, header=None, tensors=None):
    header = _HEADER if header is None else header
    tensors = _TENSORS if tensors is None else tensors
    save_file(tensors, str(path), metadata={"useg": json.dumps(header)})
    return path


def _with(section, key, value):
    header = json.loads(json.dumps(_HEADER))
    target = header if section is None else header[section]
    target[key] = value
    return header


class _Spy(UNet):
    """Counts the networks built with real (not ``meta``) tensors."""

    real = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if next(self.parameters()).device.type != "meta":
            _Spy.real += 1


@pytest.fixture
def spy(monkeypatch):
    _Spy.real = 0
    monkeypatch.setattr(checkpoint, "UNet", _Spy)
    return _Spy


def _nan_tensors():
    tensors = dict(_TENSORS)
    tensors["downs.0.conv.0.weight"] = torch.full_like(tensors["downs.0.conv.0.weight"], math.nan)
    return tensors


def _reshaped():
    tensors = dict(_TENSORS)
    tensors["head.weight"] = torch.zeros(3, 2, 1, 1)
    return tensors


_CASES = {
    "depth 50": (_with("config", "depth", 50), None, "depth"),
    "width 100000": (_with("config", "width", 100000), None, "width"),
    "width 4096 depth 8": (
        _with(None, "config", {**_HEADER["config"], "width": 4096, "depth": 8}), None,
        "do not match"),
    "width 4096": (_with("config", "width", 4096), None, "shape"),
    "fractional width": (_with("config", "width", 2.5), None, "width"),
    "list config": (_with(None, "config", list(_HEADER["config"].items())), None, "config"),
    "list header": ([_HEADER], None, "JSON object"),
    "string version": (_with(None, "format_version", "1"), None, "format_version"),
    "newer version": (_with(None, "format_version", 7), None, "newer"),
    "nan normalisation": (_with("normalization", "low", math.nan), None, "normalization"),
    "string normalisation": (_with("normalization", "high", "99"), None, "normalization"),
    "normalisation list": (_with(None, "normalization", [1, 2]), None, "normalization"),
    "fixed without scale": (
        _with(None, "normalization", {"mode": "fixed", "offset": [0]}), None, "scale"),
    "bool as int": (_with("config", "classes", True), None, "classes"),
    "string bool": (_with("config", "up_bias", "yes"), None, "up_bias"),
    "pool of wrong rank": (_with("config", "pool", [[2, 2, 2]]), None, "pool"),
    "even kernel": (_with("config", "kernel", [[4, 4], [3, 3]]), None, "kernel"),
    "ndim 7": (_with("config", "ndim", 7), None, "ndim"),
    "infinite dropout": (_with("config", "dropout", math.inf), None, "dropout"),
    "bad spacing": (_with(None, "spacing", [1, -1]), None, "spacing"),
    "list label mode": (_with("labels", "mode", ["binary"]), None, "labels mode"),
    "numbered classes": (_with("labels", "classes", [0, 1]), None, "labels classes"),
    "shape mismatch": (None, _reshaped(), "head.weight"),
    "missing tensor": (None, {k: v for k, v in _TENSORS.items() if k != "head.bias"}, "missing"),
    "extra tensor": (None, {**_TENSORS, "extra": torch.zeros(2)}, "unexpected"),
    "nan weights": (None, _nan_tensors(), "downs.0.conv.0.weight"),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_hostile_model_is_refused_quickly_without_allocating(tmp_path, spy, case):
    header, tensors, words = _CASES[case]
    load_model(_write(tmp_path / "ok.safetensors"))  # torch's one-time set-up, not timed
    spy.real = 0
    path = _write(tmp_path / "bad.safetensors", header, tensors)
    start = time.perf_counter()
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert time.perf_counter() - start < 2.0
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    assert words in message
    # Only the NaN weights are found after loading: no other case builds a real network.
    assert spy.real == (2 if case == "nan weights" else 0)


@pytest.mark.parametrize("case", ["depth 50", "list header", "nan weights", "extra tensor"])
def test_predict_with_a_hostile_model_is_one_line_and_exit_2(tmp_path, capsys, case):
    header, tensors, _ = _CASES[case]
    bad = _write(tmp_path / "bad.safetensors", header, tensors)
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, np.zeros((40, 40), np.uint8))
    code = main(["predict", str(img), "--model", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "bad.safetensors" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_fixed_normalisation_of_unequal_offset_and_scale_is_refused(tmp_path):
    net = UNet("ronneberger2015", width=2, depth=1, in_channels=3)
    header = {**json.loads(json.dumps(_HEADER)), "config": net.config.to_dict(),
              "normalization": {"mode": "fixed", "offset": [0.0], "scale": [1.0, 2.0, 4.0]}}
    path = _write(tmp_path / "m.safetensors", header,
                  {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()})
    with pytest.raises(ModelFileError, match="offset and scale must have as many entries"):
        load_model(path)


def test_a_normalisation_that_overflows_names_the_model_not_the_image(tmp_path, capsys):
    header = _with(None, "normalization", {"mode": "fixed", "offset": [0.0], "scale": [1e-320]})
    path = _write(tmp_path / "tiny.safetensors", header)
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, np.full((40, 40), 200, np.uint8))
    code = main(["predict", str(img), "--model", str(path), "--out", str(tmp_path / "o"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "tiny.safetensors" in err and "normalization" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_an_export_header_holds_the_whole_configuration(tmp_path):
    # A model file may leave configuration fields to their defaults; its exports may not.
    from useg.nets.export import export_header

    partial = {"ndim": 2, "width": 2, "depth": 1}
    model = load_model(_write(tmp_path / "m.safetensors", _with(None, "config", partial)))
    config = export_header(model)["config"]
    assert config == model.config.to_dict() and {"in_channels", "classes"} <= set(config)


def test_valid_models_still_load(tmp_path, spy):
    assert load_model(_write(tmp_path / "ok.safetensors")).config == _NET.config
    assert load_model("em-membrane").config.ndim == 2
    net = UNet("cicek2016", width=2, depth=1, norm="instance")
    assert load_model(save_model(net, tmp_path / "3d.safetensors")).config == net.config
    net = UNet("ronneberger2015", width=2, depth=2, pool=((1, 2), (2, 2)),
               kernel=((3, 3), (1, 3), (5, 5)))
    fixed = {"normalization": {"mode": "fixed", "offset": [0.5], "scale": [2]}}
    assert load_model(save_model(net, tmp_path / "p.safetensors", fixed)).config == net.config


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)
_FIELDS = (
    [(None, k) for k in _HEADER]
    + [("config", k) for k in _HEADER["config"]]
    + [("normalization", k) for k in ("mode", "low", "high", "offset", "scale")]
)


@settings(max_examples=150, deadline=2000,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_json)
def test_random_json_in_any_field_loads_or_is_refused_in_one_line(tmp_path, spy, field, value):
    path = _write(tmp_path / "h.safetensors", _with(*field, value))
    spy.real = 0
    try:
        model = load_model(path)
    except ModelFileError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))
        assert spy.real == 0
    else:
        assert model.config.width == 2 and spy.real == 1

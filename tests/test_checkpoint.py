import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from useg.errors import ModelFileError
from useg.nets import UNet, min_input_shape
from useg.nets.checkpoint import load_model, model_info, save_model


def test_round_trip_same_outputs(tmp_path):
    torch.manual_seed(0)
    net = UNet("cicek2016", width=2, in_channels=2, batch_stats=False).eval()
    path = save_model(net, tmp_path / "m.safetensors", {"normalization": {"mode": "none"}})
    loaded = load_model(path)
    assert loaded.config == net.config
    assert loaded.meta["normalization"] == {"mode": "none"}
    x = torch.randn(1, 2, *min_input_shape(net.config))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert model_info(path)["config"]["ndim"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_folder_form(tmp_path):
    save_model(UNet("ronneberger2015", width=2, depth=1), tmp_path / "model.safetensors")
    assert load_model(tmp_path).config.width == 2


def test_rejects_foreign_files(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ModelFileError, match="not a useg model"):
        load_model(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="garbage.safetensors"):
        load_model(garbage)
    with pytest.raises(ModelFileError, match="no such model"):
        load_model(tmp_path / "missing.safetensors")
    mismatched = tmp_path / "mismatch.safetensors"
    header = {"format": "useg-model", "format_version": 1,
              "config": UNet("ronneberger2015", width=2, depth=1).config.to_dict()}
    save_file({"w": torch.zeros(2)}, str(mismatched), metadata={"useg": json.dumps(header)})
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(mismatched)


class _Exploit:
    def __reduce__(self):
        return (open, ("/tmp/useg_pickle_was_executed", "w"))


def test_pickle_is_never_executed(tmp_path):
    import os

    marker = "/tmp/useg_pickle_was_executed"
    if os.path.exists(marker):
        os.remove(marker)
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"state": _Exploit(), "x": np.zeros(3)}))
    with pytest.raises(ModelFileError):
        load_model(bad)
    assert not os.path.exists(marker)


def test_packaged_em_model_loads_and_names_its_classes(tmp_path):
    model = load_model("em-membrane")
    assert model.config.ndim == 2 and model.config.classes == 2
    assert "interior" in json.dumps(model.meta["labels"]).lower()
    import os

    path = save_model(model, tmp_path / "copy.safetensors")
    umask = os.umask(0o022)
    try:
        # Permissions of an ordinary new file (mkstemp alone would give 0600).
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
        assert save_model(model, tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)

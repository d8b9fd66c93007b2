"""Model files: network weights in safetensors, everything else as JSON in its header.

A useg model file is one ``.safetensors`` file whose metadata holds a ``"useg"`` entry: a JSON
document with the network configuration, how inputs are normalised, what the classes mean and
where the model came from. Loading it never executes code (no pickle). A folder holding
``model.safetensors`` is accepted wherever a model file is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from useg.errors import ModelFileError
from useg.io.files import atomic_write
from useg.nets.config import UNetConfig
from useg.nets.unet import UNet

__all__ = ["FORMAT", "load_model", "model_info", "resolve_model", "save_model"]

FORMAT = "useg-model"
FORMAT_VERSION = 1
# The models that ship with the package (src/useg/models).
_PACKAGED = Path(__file__).resolve().parents[1] / "models"


def _usual_permissions(path: Path) -> None:
    """Give a finished temporary file the permissions of an ordinary new file (0666 - umask);
    safetensors creates owner-only files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_model(model: UNet, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write a model file atomically (:func:`useg.io.files.atomic_write`), creating its folder.

    Parameters
    ----------
    model : UNet
        The network; its configuration is stored with the weights.
    path : path-like
        Target ``.safetensors`` file.
    meta : dict, optional
        JSON-serialisable extras: ``normalization``, ``labels``, ``provenance``...

    Examples
    --------
    >>> import tempfile, os
    >>> net = UNet("ronneberger2015", width=4, depth=1)
    >>> p = save_model(net, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    >>> load_model(p).config == net.config
    True
    """
    path = Path(path)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        **(meta or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"useg": json.dumps(header)})
        _usual_permissions(tmp)
    return path


def resolve_model(name: str | os.PathLike) -> Path:
    """Path of a model given as a file, a folder with ``model.safetensors`` or a packaged name."""
    path = Path(name)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.is_file():
        return path
    packaged = _PACKAGED / f"{name}.safetensors"
    if packaged.is_file():
        return packaged
    names = sorted(p.stem for p in _PACKAGED.glob("*.safetensors"))
    hint = f" (packaged models: {', '.join(names)})" if names else ""
    raise ModelFileError(f"{name}: no such model file{hint}")


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON header of a model file without loading its weights."""
    path = resolve_model(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a safetensors model file ({exc})") from None
    if "useg" not in metadata:
        raise ModelFileError(f"{path}: a safetensors file, but not a useg model (no 'useg' header)")
    try:
        header = json.loads(metadata["useg"])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: corrupt useg header ({exc})") from None
    if header.get("format") != FORMAT or "config" not in header:
        raise ModelFileError(f"{path}: not a useg model (header format {header.get('format')!r})")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by a newer useg (format {header['format_version']}); upgrade useg"
        )
    return header


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Load a model file; the header is available as ``model.meta``, the file as ``model.path``.

    Raises :class:`~useg.errors.ModelFileError` for anything that is not a useg model file.
    """
    path = resolve_model(path)
    header = model_info(path)
    try:
        config = UNetConfig.from_dict(header["config"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid network configuration ({exc})") from None
    model = UNet(config)
    tensors = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensors[key] = f.get_tensor(key)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{path}: weights do not match the configuration "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ModelFileError(
                f"{path}: tensor {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected[key].shape)}"
            )
    model.load_state_dict(tensors)
    model.meta = header
    model.path = path  # for messages that name the model
    return model.to(device).eval()

"""Model files: network weights in safetensors, everything else as JSON in its header.

A useg model file is one ``.safetensors`` file whose metadata holds a ``"useg"`` entry: a JSON
document with the network configuration, how inputs are normalised, what the classes mean and
where the model came from. Loading it never executes code (no pickle). A folder is accepted
wherever a model file is: its ``model.safetensors``, or a training run's ``best.safetensors``
(highest validation score), or its ``last.safetensors`` (runs without validation images)
(:data:`FOLDER_MODELS`, in that order).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from useg.errors import ModelFileError, one_line
from useg.io.files import atomic_write, make_folder
from useg.nets.config import UNetConfig
from useg.nets.unet import UNet

__all__ = ["FOLDER_MODELS", "FORMAT", "check_header", "load_model", "model_info", "model_name",
           "operating_threshold", "packaged_models", "resolve_model", "save_model",
           "update_header"]

FORMAT = "useg-model"
# The header entry of a two-class model's operating point (``"operating_point"``).
OPERATING_KEY = "threshold_on_probabilities_1"
#: The model files a folder given as a model stands for, in order of preference: an exported
#: or copied model, a training run's best checkpoint, its last one.
FOLDER_MODELS = ("model.safetensors", "best.safetensors", "last.safetensors")
FORMAT_VERSION = 1
# The models that ship with the package (src/useg/models).
_PACKAGED = Path(__file__).resolve().parents[1] / "models"


def _usual_permissions(path: Path) -> None:
    """Give a finished temporary file the permissions of an ordinary new file (0666 - umask);
    safetensors creates owner-only files."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def model_name(model: Any) -> str:
    """How messages name a network: ``model <file>`` for one loaded by :func:`load_model`,
    else ``this model``."""
    path = getattr(model, "path", None)
    return f"model {path}" if path is not None else "this model"


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
    make_folder(path.parent)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"useg": json.dumps(header)})
        _usual_permissions(tmp)
    return path


def update_header(path: str | os.PathLike, changes: dict[str, Any]) -> Path:
    """Replace entries of a model file's header (not its network configuration), atomically.

    Used to record what was learnt about a model after it was written, e.g. the
    post-processing chosen on validation data (``"instances"``).
    """
    if {"format", "format_version", "config"} & set(changes):
        raise ValueError("update_header changes the extras of a header, not its format or "
                         "network configuration")
    model = load_model(path)
    meta = {k: v for k, v in model.meta.items()
            if k not in ("format", "format_version", "config")}
    return save_model(model, model.path, {**meta, **changes})


def resolve_model(name: str | os.PathLike) -> Path:
    """Path of a model given as a file, a folder (the first of :data:`FOLDER_MODELS` it holds:
    a run folder gives its kept model) or a packaged name.

    A packaged model is looked up only for a plain name (letters, digits, ``.``, ``_``, ``-``;
    no path separator, not starting with a dot), so that no name reaches a file outside the
    packaged models (``../../x``, ``/etc/x``); anything else is a path.

    Raises
    ------
    ModelFileError
        ``no such model file or packaged model: NAME (packaged: a, b)``.

    Examples
    --------
    >>> resolve_model("em-membrane").name
    'em-membrane.safetensors'
    >>> resolve_model("../models/em-membrane")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    useg.errors.ModelFileError: no such model file or packaged model: ../models/em-membrane ...
    """
    text = os.fspath(name)
    path = Path(text)
    if _exists(path, Path.is_dir):
        path = next((path / f for f in FOLDER_MODELS if _exists(path / f, Path.is_file)),
                    path / FOLDER_MODELS[0])
    if _exists(path, Path.is_file):
        return path
    if isinstance(text, str) and _MODEL_NAME.fullmatch(text):
        packaged = _PACKAGED / f"{text}.safetensors"
        if packaged.is_file():
            return packaged
    raise ModelFileError(f"no such model file or packaged model: {text} "
                         f"(packaged: {', '.join(packaged_models()) or 'none'})")


def packaged_models() -> list[str]:
    """The names of the packaged models (``src/useg/models``), sorted, as
    :func:`resolve_model` takes them.

    Examples
    --------
    >>> "em-membrane" in packaged_models()
    True
    """
    return sorted(p.stem for p in _PACKAGED.glob("*.safetensors"))


# What a packaged model's name may be: a file name in src/useg/models, without separators.
_MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _exists(path: Path, test: Any) -> bool:
    """``test(path)`` (``Path.is_file``...), False for a path the system cannot look up (too
    long, a NUL character) instead of an OSError."""
    try:
        return bool(test(path))
    except (OSError, ValueError):
        return False


def model_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON header of a model file without loading its weights.

    The header is validated (:func:`check_header`) before it is returned.
    """
    path = resolve_model(path)
    header, _ = _read_header(path)
    return header


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[tuple[int, ...], str]]]:
    """The validated JSON header and the tensors' (shape, dtype) as the file declares them."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            declared = {}
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                piece = f.get_slice(key)
                declared[key] = (tuple(int(n) for n in piece.get_shape()), str(piece.get_dtype()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a safetensors model file ({one_line(exc)})") from None
    if "useg" not in metadata:
        raise ModelFileError(f"{path}: a safetensors file, but not a useg model (no 'useg' header)")
    try:
        header = json.loads(metadata["useg"])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: corrupt useg header ({one_line(exc)})") from None
    check_header(path, header, declared, path.stat().st_size)
    return header, declared


# Sane upper bounds of the fields of a network configuration read from a file: far above any
# useful network, far below what would exhaust a machine before the weights are checked.
_INT_RANGES = {
    "ndim": (1, 3), "in_channels": (1, 4096), "classes": (1, 4096), "width": (1, 4096),
    "depth": (0, 8),
}
_BOOLS = ("norm_affine", "batch_stats", "up_bias", "up_keep_channels", "double_within_level")
_CHOICES = {"padding": ("valid", "same"), "norm": ("none", "batch", "instance")}
_MAX_POOL, _MAX_KERNEL = 16, 31
_NORM_MODES = ("none", "fixed", "percentile", "meanstd")
_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_INT_DTYPES = {"I64": 8, "I32": 4}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _short(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _check_config(config: Any) -> str | None:
    """The problem with a network configuration from a file, or None; types and ranges only."""
    if not isinstance(config, dict):
        return f"'config' must be a JSON object, got {_short(config)}"
    known = {f.name for f in dataclasses.fields(UNetConfig)} - {"extra"}
    unknown = sorted(set(config) - known)
    if unknown:
        return f"unknown network configuration keys {_short(unknown)}"
    for name, (lo, hi) in _INT_RANGES.items():
        if name in config and not (_is_int(config[name]) and lo <= config[name] <= hi):
            return f"config {name} must be an integer in [{lo}, {hi}], got {_short(config[name])}"
    for name in _BOOLS:
        if name in config and not isinstance(config[name], bool):
            return f"config {name} must be true or false, got {_short(config[name])}"
    for name, choices in _CHOICES.items():
        if name in config and config[name] not in choices:
            return f"config {name} must be one of {', '.join(choices)}, got {_short(config[name])}"
    if "dropout" in config and not (_is_number(config["dropout"]) and 0 <= config["dropout"] < 1):
        return f"config dropout must be a number in [0, 1), got {_short(config['dropout'])}"
    defaults = UNetConfig()
    ndim, depth = config.get("ndim", defaults.ndim), config.get("depth", defaults.depth)
    for name, levels, hi in (("pool", depth, _MAX_POOL), ("kernel", depth + 1, _MAX_KERNEL)):
        value = config.get(name)
        if value is None:
            continue
        if not (isinstance(value, list) and len(value) == levels
                and all(isinstance(lv, list) and len(lv) == ndim for lv in value)
                and all(_is_int(n) and 1 <= n <= hi for lv in value for n in lv)):
            return (f"config {name} must be {levels} lists of {ndim} integers in [1, {hi}], "
                    f"got {_short(value)}")
        if name == "kernel" and any(n % 2 == 0 for lv in value for n in lv):
            return f"config kernel sizes must be odd, got {_short(value)}"
    return None


def _check_normalization(spec: Any, in_channels: int) -> str | None:
    """The problem with a normalisation spec from a file, or None."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        return f"'normalization' must be a JSON object, got {_short(spec)}"
    mode = spec.get("mode", "percentile")
    if mode not in _NORM_MODES:
        return f"normalization mode must be one of {', '.join(_NORM_MODES)}, got {_short(mode)}"
    if mode == "percentile":
        low, high = spec.get("low", 1.0), spec.get("high", 99.8)
        if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
            return (f"normalization percentiles must be numbers with 0 <= low < high <= 100, "
                    f"got low {_short(low)}, high {_short(high)}")
    if mode == "fixed":
        for name in ("offset", "scale"):
            value = spec.get(name)
            if not (isinstance(value, list) and len(value) in (1, in_channels)
                    and all(_is_number(v) for v in value)):
                return (f"normalization {name} must be a list of 1 or {in_channels} finite "
                        f"numbers, got {_short(value)}")
        if len(spec["offset"]) != len(spec["scale"]):
            return (f"normalization offset and scale must have as many entries, got "
                    f"{_short(spec['offset'])} and {_short(spec['scale'])}")
        if any(v == 0 for v in spec["scale"]):
            return f"normalization scale must not be 0, got {_short(spec['scale'])}"
    return None


def operating_threshold(header: dict[str, Any]) -> float | None:
    """The threshold on class 1's probability that a two-class model's header gives as its
    operating point (chosen on validation data, with the scores measured there), or None.

    ``useg predict`` writes class 1 where the probability exceeds it instead of the most likely
    class (:func:`useg.labels.most_likely_class`), so that the class map is the one those scores
    describe. :func:`check_header` has checked the value.

    Examples
    --------
    >>> operating_threshold({"operating_point": {"threshold_on_probabilities_1": 0.4}})
    0.4
    >>> operating_threshold({}) is None
    True
    """
    point = header.get("operating_point")
    return None if point is None else float(point[OPERATING_KEY])


def _check_extras(header: dict[str, Any]) -> str | None:
    """The problem with the optional entries of a header, or None."""
    spacing = header.get("spacing")
    if spacing is not None and not (
            isinstance(spacing, list) and 1 <= len(spacing) <= 3
            and all(_is_number(v) and v > 0 for v in spacing)):
        return f"'spacing' must be null or 1 to 3 positive numbers, got {_short(spacing)}"
    for name in ("labels", "provenance", "instances", "operating_point"):
        if header.get(name) is not None and not isinstance(header[name], dict):
            return f"{name!r} must be a JSON object, got {_short(header[name])}"
    point = header.get("operating_point")
    if point is not None:
        value = point.get(OPERATING_KEY)
        if not (_is_number(value) and 0 < value < 1):
            return (f"operating_point {OPERATING_KEY} must be a number in (0, 1), got "
                    f"{_short(value)}")
        classes = (header.get("config") or {}).get("classes", 2)
        if classes != 2:
            return f"an operating_point needs a network of two classes, this one has {classes}"
    labels = header.get("labels") or {}
    if labels.get("mode") is not None and not isinstance(labels["mode"], str):
        return f"labels mode must be a string, got {_short(labels['mode'])}"
    classes = labels.get("classes")
    if classes is not None and not (isinstance(classes, list)
                                    and all(isinstance(c, str) for c in classes)):
        return f"labels classes must be a list of names, got {_short(classes)}"
    return None


def _expected_tensors(config: UNetConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of a network's tensors, from a network built on the ``meta``
    device (which allocates no memory for them)."""
    with torch.device("meta"):
        net = UNet(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def check_header(path: str | os.PathLike, header: Any,
                 declared: dict[str, tuple[tuple[int, ...], str]], file_size: int) -> UNetConfig:
    """Validate a model file before anything proportional to what it claims is allocated.

    ``header`` is the parsed JSON header, ``declared`` the tensors' (shape, safetensors dtype)
    as the file lists them and ``file_size`` its size in bytes. Checks the types and ranges of
    every configuration field, the normalisation, the format, that the tensors the
    configuration implies are exactly those in the file, with their shapes, and that the file
    is large enough to hold them. Returns the network configuration; raises
    :class:`~useg.errors.ModelFileError` (one line naming the file and the problem).
    """
    def fail(problem: str) -> ModelFileError:
        return ModelFileError(f"{path}: {problem}")

    if not isinstance(header, dict):
        raise fail(f"the useg header must be a JSON object, got {_short(header)}")
    if header.get("format") != FORMAT or "config" not in header:
        raise fail(f"not a useg model (header format {_short(header.get('format'))})")
    version = header.get("format_version", FORMAT_VERSION)
    if not (_is_int(version) and version >= 1):
        raise fail(f"format_version must be a positive integer, got {_short(version)}")
    if version > FORMAT_VERSION:
        raise fail(f"written by a newer useg (format {version}); upgrade useg")
    problem = _check_config(header["config"])
    if problem:
        raise fail(problem)
    try:
        config = UNetConfig.from_dict(header["config"])
    except (TypeError, ValueError) as exc:
        raise fail(f"invalid network configuration ({one_line(exc)})") from None
    problem = (_check_normalization(header.get("normalization"), config.in_channels)
               or _check_extras(header))
    if problem:
        raise fail(problem)
    expected = _expected_tensors(config)
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise fail(f"weights do not match the configuration "
                   f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for key, (shape, dtype) in expected.items():
        have_shape, have_dtype = declared[key]
        if have_shape != shape:
            raise fail(f"tensor {key} has shape {have_shape}, expected {shape}")
        kinds = _FLOAT_DTYPES if dtype.is_floating_point else _INT_DTYPES
        if have_dtype not in kinds:
            raise fail(f"tensor {key} has dtype {have_dtype}, expected one of {', '.join(kinds)}")
    need = sum(math.prod(shape) * {**_FLOAT_DTYPES, **_INT_DTYPES}[declared[key][1]]
               for key, (shape, _) in expected.items())
    if need > file_size:
        raise fail(f"the weights need {need:,} bytes, the file has {file_size:,} bytes")
    return config


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Load a model file; the header is available as ``model.meta``, the file as ``model.path``.

    Raises :class:`~useg.errors.ModelFileError` for anything that is not a useg model file.
    """
    path = resolve_model(path)
    header, _ = _read_header(path)
    # The header and the tensors' shapes are valid: allocating the network is now bounded by
    # the size of the file.
    config = UNetConfig.from_dict(header["config"])
    model = UNet(config)
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable weights ({one_line(exc)})") from None
    for key in sorted(tensors):
        value = tensors[key]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{path}: tensor {key} holds NaN or infinite weights")
    model.load_state_dict(tensors)
    model.meta = header
    model.path = path  # for messages that name the model
    return model.to(device).eval()

"""Export of a model file to ONNX or TorchScript, usable without useg (``useg export``).

The exported network takes ``(N, C, [Z,] Y, X)`` float32 inputs of any valid spatial size (the
smallest valid size plus a multiple of the pooling step per axis: :func:`export_geometry`) and
returns the logits ``(N, classes, ...)``; a softmax over axis 1 gives the probabilities
``useg predict`` writes. Batch norm runs with its running statistics (eval mode). The model
file's JSON header (normalisation, labels, ...) and the geometry travel with the export: as the
ONNX model's ``metadata_props`` (key ``useg``, and ``normalization``, ``labels``, ``geometry``
each as JSON) or as the TorchScript archive's extra file ``useg.json``.

ONNX needs the ``onnx`` package (``pip install useg[export]``, which also installs
``onnxruntime`` to run the export).
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from useg.errors import ConfigError, check_choice, require
from useg.io.files import atomic_write, check_output_file, make_folder
from useg.nets.checkpoint import load_model, resolve_model
from useg.nets.geometry import halo, min_input_shape, output_shape, pool_step
from useg.nets.unet import UNet

__all__ = ["FORMATS", "TORCHSCRIPT_EXTRA_FILE", "export_geometry", "export_header",
           "export_model"]

FORMATS = ("onnx", "torchscript")
#: The name of the JSON header inside a TorchScript export (``torch.jit.load(...,
#: _extra_files={"useg.json": ""})``).
TORCHSCRIPT_EXTRA_FILE = "useg.json"
# ONNX operator set of the export (onnxruntime >= 1.12 runs it).
_OPSET = 17


def export_geometry(model: UNet) -> dict[str, Any]:
    """The input and output sizes of an exported network, per spatial axis ((Z,) Y, X).

    An input length is valid when it is ``min_input_shape + k * pool_step`` (k = 0, 1, ...);
    the output is the input less ``2 * halo`` (0 for same padding).

    Examples
    --------
    >>> export_geometry(UNet("ronneberger2015", width=4, depth=2))["min_input_shape"]
    [44, 44]
    """
    cfg = model.config
    smallest = min_input_shape(cfg)
    return {
        "input_axes": "NC" + "ZYX"[3 - cfg.ndim:],
        "output_axes": "NC" + "ZYX"[3 - cfg.ndim:],
        "in_channels": cfg.in_channels,
        "classes": cfg.classes,
        "padding": cfg.padding,
        "min_input_shape": list(smallest),
        "pool_step": list(pool_step(cfg)),
        "halo": list(halo(cfg)),
        "min_output_shape": list(output_shape(cfg, smallest)),
        "valid_input": "min_input_shape + k * pool_step per axis, k = 0, 1, 2, ...",
        "output": "input - 2 * halo per axis; logits: softmax over axis 1 gives probabilities",
        # Instance norm normalises each input by itself: tiles then do not stitch seamlessly,
        # so such a network is run once on the whole (mirror-padded) image.
        "tile_independent": not any(
            isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats
            for m in model.modules()),
    }


def export_header(model: UNet) -> dict[str, Any]:
    """The model file's header (network configuration, normalisation, labels, ...) with the
    geometry of the export (:func:`export_geometry`) under ``"export"``."""
    header = dict(getattr(model, "meta", None) or {})
    # The complete configuration: a model file may leave fields to their defaults, an export's
    # reader must not have to know them.
    header["config"] = model.config.to_dict()
    header["export"] = export_geometry(model)
    return header


def _prepared(model: UNet) -> UNet:
    """A float32 CPU copy of ``model`` in eval mode (batch norm with running statistics,
    dropout off); a network that normalises with the statistics of what it sees is refused."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
            raise ConfigError(
                f"{getattr(model, 'path', 'model')}: uses batch norm with the statistics of the "
                "batch when predicting (--batch-stats); only networks with running statistics "
                "are exported")
    net = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _example(model: UNet) -> torch.Tensor:
    cfg = model.config
    shape = [m + s for m, s in zip(min_input_shape(cfg), pool_step(cfg), strict=True)]
    return torch.zeros((1, cfg.in_channels, *shape), dtype=torch.float32)


def _onnx_bytes(net: UNet, header: dict[str, Any]) -> bytes:
    onnx = require("onnx", "export", "exporting to ONNX")
    axes = "zyx"[3 - net.config.ndim:]
    dynamic = {
        "image": {0: "batch", **{2 + i: a for i, a in enumerate(axes)}},
        "logits": {0: "batch", **{2 + i: f"out_{a}" for i, a in enumerate(axes)}},
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        # dynamo=False: the traced exporter keeps the crops of the skip connections symbolic,
        # so one export takes every valid size; the torch.export one needs onnxscript.
        torch.onnx.export(net, (_example(net),), buffer, dynamo=False, input_names=["image"],
                          output_names=["logits"], dynamic_axes=dynamic, opset_version=_OPSET,
                          do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    entries = {"useg": header, "normalization": header.get("normalization"),
               "labels": header.get("labels"), "geometry": header["export"]}
    for key, value in entries.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)
    proto.producer_name = "useg"
    proto.doc_string = ("useg U-Net: input image (N, C, [Z,] Y, X) float32, normalised as "
                        "'normalization' says; output logits. See metadata 'geometry'.")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(net: UNet, header: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            # Tracing records the shapes the crops use as operations on the input's size, so
            # the trace takes every valid size (tests/test_export.py checks three).
            traced = torch.jit.trace(net, _example(net), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer,
                       _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(header)})
    return buffer.getvalue()


def export_model(model: UNet | str | os.PathLike, out: str | os.PathLike,
                 format: str = "onnx", *, overwrite: bool = False) -> Path:
    """Export a network (a :class:`UNet` or a model file, :func:`load_model`) to ``out``.

    Parameters
    ----------
    model : UNet or path
        The network, or a model file, a run folder or a packaged model name.
    out : path
        The file to write (atomically, :func:`useg.io.files.atomic_write`); its folder is made.
    format : {"onnx", "torchscript"}
    overwrite : bool
        Replace ``out`` when it exists (refused otherwise, before anything is exported).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        An unknown format, ONNX without the onnx package (one line: ``pip install
        useg[export]``), a network that normalises with batch statistics when predicting, or
        an ``out`` that exists, without ``overwrite``.
    OutputError
        An ``out`` that cannot be written (:func:`useg.io.files.check_output_file`).
    ModelFileError
        A model file that is not one.
    """
    check_choice("format", format, FORMATS)
    source = [] if isinstance(model, UNet) else [resolve_model(model)]
    out = check_output_file(out, overwrite=overwrite, inputs=source)
    other = {"onnx": (".pt", ".pth", ".ts", ".zip", ".safetensors"),
             "torchscript": (".onnx", ".safetensors")}[format]
    if out.suffix.lower() in other:
        # A tool that goes by the extension would misread the file.
        raise ConfigError(f"{out}: a {out.suffix} name for a {format} export; name it "
                          f"{'.onnx' if format == 'onnx' else '.pt'} or choose its format")
    if not isinstance(model, UNet):
        model = load_model(model)
    net = _prepared(model)
    header = export_header(model)
    data = (_onnx_bytes if format == "onnx" else _torchscript_bytes)(net, header)
    make_folder(out.parent)
    with atomic_write(out) as tmp:
        tmp.write_bytes(data)
    return out

"""``useg export MODEL --format onnx|torchscript --out FILE``: a model usable without useg.

The export is :func:`useg.nets.export.export_model`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX or TorchScript",
        description="Export a model to ONNX (needs: pip install useg[export]) or TorchScript. "
        "The export takes (N, C, [Z,] Y, X) float32 images of any valid size (the smallest "
        "valid size plus a multiple of the pooling step per axis) and returns logits; the "
        "model file's header (normalisation, labels) and that geometry travel with it, as ONNX "
        "metadata (key 'useg') or as the TorchScript extra file useg.json.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="model file (.safetensors), run folder, or packaged model name")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx",
                   help="default: onnx")
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the file to write (e.g. model.onnx, model.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.nets.export import export_model

    path = export_model(args.model, args.out, format=args.format)
    print(f"wrote {path} ({args.format})")
    return 0

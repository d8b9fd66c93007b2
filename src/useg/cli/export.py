"""``useg export MODEL --format onnx|torchscript|bioimageio --out FILE``: a model usable without
useg.

ONNX and TorchScript are :func:`useg.nets.export.export_model`, a BioImage Model Zoo package is
:func:`useg.workflows.bioimageio.export_bioimageio`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from useg.cli import out_path

# The formats of useg.nets.export.FORMATS, then the zoo's (useg.workflows.bioimageio.FORMAT);
# spelled out so that parsing imports neither torch nor bioimageio.
_FORMATS = ("onnx", "torchscript", "bioimageio")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX, TorchScript or a BioImage Model Zoo package",
        description="Export a model to ONNX (needs: pip install useg[export]) or TorchScript. "
        "The export takes (N, C, [Z,] Y, X) float32 images of any valid size (the smallest "
        "valid size plus a multiple of the pooling step per axis) and returns logits; the "
        "model file's header (normalisation, labels) and that geometry travel with it, as ONNX "
        "metadata (key 'useg') or as the TorchScript extra file useg.json. --format bioimageio "
        "writes a BioImage Model Zoo package (spec 0.5 zip; needs: pip install "
        "useg[bioimageio]): the same geometry, the normalisation as preprocessing, class "
        "probabilities (softmax postprocessing), pytorch_state_dict and torchscript weights, "
        "test tensors computed by useg, a cover image and the papers to cite.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="model file (.safetensors), run folder, or packaged model name")
    p.add_argument("--format", choices=_FORMATS, default="onnx", help="default: onnx")
    p.add_argument("--out", type=out_path, required=True, metavar="FILE",
                   help="the file to write (e.g. model.onnx, model.pt, model.zip); a file that "
                   "exists is refused unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --out file when it exists")
    p.add_argument("--test-image", type=Path, metavar="IMAGE",
                   help="bioimageio: the image whose centred crop to a valid size is the test "
                   "input (default: a synthetic touching-cells image)")
    p.add_argument("--author", action="append", metavar="NAME",
                   help="bioimageio: an author of the model (repeat for several; default: "
                   "useg contributors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.errors import ConfigError

    if args.format != "bioimageio" and (args.test_image or args.author):
        raise ConfigError("--test-image and --author apply to --format bioimageio only")
    if args.format == "bioimageio":
        from useg.workflows.bioimageio import export_bioimageio

        path = export_bioimageio(args.model, args.out, test_image=args.test_image,
                                 authors=args.author, overwrite=args.overwrite)
    else:
        from useg.nets.export import export_model

        path = export_model(args.model, args.out, format=args.format,
                            overwrite=args.overwrite)
    print(f"wrote {path} ({args.format})")
    return 0

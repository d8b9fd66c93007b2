"""``useg predict``: segment images or volumes with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from useg.cli import _dask
from useg.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict probability maps and label masks",
        description="Predict images (PNG/TIFF, 2D or 3D stacks; files or folders) with overlap "
        "tiles. Writes <name>_probs.tif (class probabilities, channels first) and "
        "<name>_labels.tif (most likely class) into --out.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", required=True,
                   help="model file (.safetensors), run folder, or packaged model name")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--tile", type=_dask.sizes, default=None,
                   help="input tile, e.g. 572 or 572x572 (default: as large as memory allows)")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass")
    p.add_argument("--tta", action="store_true",
                   help="average over flips and quarter turns (8x slower in 2D)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision (bf16 is much faster on recent CPUs)")
    p.add_argument("--no-probs", action="store_true", help="write label masks only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _dask.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dask:
        return _dask.run(args)
    from tqdm.auto import tqdm

    from useg import io
    from useg.checkpoint import load_model
    from useg.device import resolve_device
    from useg.predict import predict_file

    device = resolve_device(args.device)
    files: list[Path] = []
    for item in args.inputs:
        if not item.exists():
            raise InputError(f"{item}: no such file or folder")
        files.extend(io.list_images(item))
    if not files:
        raise InputError(f"{', '.join(map(str, args.inputs))}: no PNG or TIFF images found")
    model = load_model(args.model, device=device)
    if args.tile is not None and len(args.tile) not in (1, model.config.ndim):
        raise InputError(
            f"--tile needs 1 or {model.config.ndim} sizes for this {model.config.ndim}D model"
        )
    tile = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    show = not args.quiet and sys.stderr.isatty()
    outer = tqdm(files, unit="image", desc="images", disable=not show or len(files) == 1)
    for path in outer:
        written = predict_file(
            model, path, args.out, write_probabilities=not args.no_probs, tile=tile,
            device=device, precision=args.precision, tta=args.tta, batch_size=args.batch_size,
            progress=not args.quiet,
        )
        if args.quiet or not show:
            print(f"{path} -> {', '.join(str(p) for p in written.values())}")
    return 0

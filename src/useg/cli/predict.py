"""``useg predict``: segment images or volumes with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from useg.cli import _dask, add_precision_argument
from useg.errors import ConfigError, InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict probability maps and label masks",
        description="Predict images (PNG/TIFF, 2D or 3D stacks; files or folders) with overlap "
        "tiles. Writes <name>_probs.tif (class probabilities, channels first) and "
        "<name>_labels.tif (most likely class) into --out; images found in a folder keep their "
        "path relative to it. Two inputs that would write the same file, and results that exist "
        "already (without --overwrite), are refused before anything is predicted.",
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
    add_precision_argument(p)
    p.add_argument("--no-probs", action="store_true", help="write label masks only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads (default: torch's; with --dask: per worker, cores / "
                   "workers for local workers)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results (refused otherwise; with --dask the default "
                   "resumes a run with the same settings and --overwrite starts afresh)")
    _dask.add_arguments(p)
    p.set_defaults(func=run)


# Options that only the block-parallel (--dask) path can use.
_DASK_ONLY = {"scheduler": "--scheduler", "workers": "--workers", "block": "--block"}


def run(args: argparse.Namespace) -> int:
    from useg.device import check_precision

    check_precision(args.precision)
    if args.torch_threads is not None and args.torch_threads < 1:
        raise ConfigError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    if args.dask:
        return _dask.run(args)
    given = [flag for dest, flag in _DASK_ONLY.items() if getattr(args, dest) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --dask (block-parallel prediction of "
                          "one large image); add --dask or leave them out")
    from tqdm.auto import tqdm

    from useg import io
    from useg.checkpoint import load_model
    from useg.device import resolve_device, resolve_precision
    from useg.predict import predict_file

    device = resolve_device(args.device)
    for item in args.inputs:
        if not item.exists():
            raise InputError(f"{item}: no such file or folder")
    # Every result of the run is named, and checked against the others and against what
    # exists, before the first image is predicted: a refusal then costs nothing.
    plan = io.plan_results(args.inputs, args.out, probabilities=not args.no_probs,
                           overwrite=args.overwrite)
    if not plan:
        raise InputError(f"{', '.join(map(str, args.inputs))}: no PNG or TIFF images found")
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    precision = resolve_precision(args.precision, device)  # once, not per image
    model = load_model(args.model, device=device)
    if args.tile is not None and len(args.tile) not in (1, model.config.ndim):
        raise InputError(
            f"--tile needs 1 or {model.config.ndim} sizes for this {model.config.ndim}D model"
        )
    tile = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    show = not args.quiet and sys.stderr.isatty()
    outer = tqdm(plan, unit="image", desc="images", disable=not show or len(plan) == 1)
    for path, name, _ in outer:
        written = predict_file(
            model, path, args.out, write_probabilities=not args.no_probs, tile=tile,
            device=device, precision=precision, tta=args.tta, batch_size=args.batch_size,
            progress=not args.quiet, name=name,
        )
        if args.quiet or not show:
            print(f"{path} -> {', '.join(str(p) for p in written.values())}")
    return 0

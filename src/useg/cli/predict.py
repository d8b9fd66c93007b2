"""``useg predict``: segment images or volumes with a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from useg.cli import (
    add_precision_argument,
    float_range,
    non_negative_float,
    non_negative_int,
    out_path,
    positive_float,
    positive_int,
    sizes,
)
from useg.cli.dask_options import add_dask_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict probability maps and label masks",
        description="Predict images (PNG/TIFF/NIfTI, 2D or 3D stacks; files or folders) with "
        "overlap tiles. Writes <name>_probs.tif (class probabilities, channels first) and "
        "<name>_labels.tif (most likely class; for a two-class model whose file states an "
        "operating point chosen on validation, such as em-membrane, class 1 where its "
        "probability exceeds that threshold) into --out, and with --instances "
        "<name>_instances.tif (one id per object, 0 = background); images found in a folder "
        "keep their path relative to it; a NIfTI input (.nii, .nii.gz) gives NIfTI results "
        "with its affine. Two inputs that would write the same file, and "
        "results that exist already (without --overwrite), are refused before anything is "
        "predicted.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", required=True,
                   help="model file (.safetensors), run folder, or packaged model name")
    p.add_argument("--out", type=out_path, required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--tile", type=sizes, default=None,
                   help="input tile in pixels (voxels in 3D), e.g. 572 or 572x572, rounded up "
                        "to one the network takes (for a same-padding network, to one that "
                        "stitches exactly); default: the least work that --memory allows")
    p.add_argument("--memory", type=positive_float, default=None, metavar="GIB",
                   help="memory for one forward pass's activations, in GiB, from which the tile "
                   "is chosen (instead of --tile): more memory, larger tiles, less context "
                   "computed again at tile edges, faster; default 1 for 2D models, 4 for 3D "
                   "(at most a quarter of RAM), a quarter of a GPU's free memory; per worker "
                   "with --dask")
    p.add_argument("--batch-size", type=positive_int, default=1, help="tiles per forward pass")
    p.add_argument("--tta", action="store_true",
                   help="average over flips and quarter turns (8x slower in 2D, 16x in 3D; "
                   "flips alone, 4x and 8x, for a model that pools or convolves Y and X "
                   "differently); "
                   "it helps a model trained with flips or rotations, and can hurt one "
                   "trained without (useg warns)")
    add_precision_argument(p)
    p.add_argument("--no-probs", action="store_true", help="write label masks only")
    g = p.add_argument_group(
        "objects", "--instances splits the foreground into objects (seeded watershed). Its "
        "settings default to those chosen on validation data when the model was trained "
        "(stored in the model file), else to built-in defaults; each option below overrides one.")
    g.add_argument("--instances", action="store_true",
                   help="also write <name>_instances.tif (uint16, or uint32 past 65,535 objects)")
    g.add_argument("--instance-threshold", type=float_range(0.0, 1.0, low_open=True,
                                                            high_open=True),
                   default=None, help="probability above which a pixel is object (interior)")
    g.add_argument("--seed-distance", type=non_negative_float, default=None,
                   help="in pixels of the finest axis: how far inside an object its seed lies; "
                   "larger merges more")
    g.add_argument("--seed-threshold", type=float_range(0.0, 1.0, low_open=True, high_open=True),
                   default=None, help="seed each object from a piece of interior above this "
                   "probability, grown over the boundary probability (for cells that fill the "
                   "image, as neurons in EM), instead of from distance maxima")
    g.add_argument("--merge-below", type=float_range(0.0, 1.0, low_open=True, high_open=True),
                   default=None, help="then join touching objects while the mean boundary "
                   "probability between them is below this (for bodies split by too many seeds)")
    g.add_argument("--min-size", type=non_negative_int, default=None,
                   help="in pixels (voxels in 3D): smaller objects are removed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--torch-threads", type=positive_int, default=None,
                   help="torch threads (default: torch's; with --dask: per worker, cores / "
                   "workers for local workers)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing results (refused otherwise; with --dask the default "
                   "resumes a run with the same settings and --overwrite starts afresh)")
    add_dask_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.workflows.segment import segment_paths

    show = not args.quiet and sys.stderr.isatty()

    def report(path: Path, written: dict[str, Path]) -> None:
        if not show:
            print(f"{path} -> {', '.join(str(p) for p in written.values())}")

    instance_options = {"threshold": args.instance_threshold,
                        "seed_distance": args.seed_distance, "min_size": args.min_size,
                        "seed_threshold": args.seed_threshold, "merge_below": args.merge_below}
    result = segment_paths(
        args.inputs, args.out, args.model, instances=args.instances,
        instance_options=instance_options, on_settings=lambda line: print(line, file=sys.stderr),
        dask=args.dask, scheduler=args.scheduler,
        workers=args.workers, block=args.block, device=args.device, tile=args.tile,
        memory_gib=args.memory,
        batch_size=args.batch_size, tta=args.tta, precision=args.precision,
        write_probabilities=not args.no_probs, overwrite=args.overwrite,
        torch_threads=args.torch_threads, progress=not args.quiet, on_written=report,
    )
    if args.dask:
        _print_summary(args.inputs[0], args.out, result)
    return 0


def _print_summary(source: Path, out: Path, summary: dict) -> None:
    rate = summary["voxels"] / max(summary["seconds"], 1e-9)
    print(
        f"{source} -> {out}: {len(summary['computed'])} blocks computed, "
        f"{summary['skipped']} already done, of {summary['blocks']} "
        f"({summary['seconds']:.1f} s, {rate / 1e6:.2f} Mvoxel/s)"
    )

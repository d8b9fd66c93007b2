"""``useg densify``: segment a whole volume from a few annotated slices of it (semi-automated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from useg.cli import out_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from useg.cli.train import RESUME_HELP, add_common_training_args, record_given_options

    p = sub.add_parser(
        "densify", help="dense segmentation of a volume from a few annotated slices",
        description="Train a 3D U-Net on the annotated voxels of one volume (a label volume "
        "with an --unlabeled value, or dense labels of which only --slices count) and write the "
        "dense segmentation of the same volume: OUT/<name>_labels.tif (most likely class) and "
        "OUT/<name>_probs.tif (class probabilities). OUT is a training run folder as for "
        "'useg train'; --resume continues an interrupted run.",
    )
    record_given_options(p)
    p.add_argument("volume", nargs="?", type=Path, help="image volume (TIFF stack)")
    p.add_argument("--labels", type=Path, help="sparse annotation, same shape as the volume")
    p.add_argument("--out", type=out_path, required=True, help="run and output folder")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("--no-probs", action="store_true", help="write the label volume only")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result files that exist in --out (refused otherwise)")
    add_common_training_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.cli.train import training_options
    from useg.workflows.densify import densify_file

    result, written = densify_file(
        args.volume, args.labels, args.out, options=training_options(args), resume=args.resume,
        given=args.given_options, write_probabilities=not args.no_probs,
        progress=not args.quiet, say=print, overwrite=args.overwrite,
    )
    print(f"model: {result.model}")
    for path in written:
        print(f"wrote {path}")
    return 0

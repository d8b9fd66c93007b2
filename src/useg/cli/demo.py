"""``useg demo``: the built-in end-to-end example."""

from __future__ import annotations

import argparse
from pathlib import Path

from useg.cli import non_negative_int, out_path, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train, predict and evaluate on the built-in default data",
        description="Train a small U-Net for a few minutes (the cpu-fast recipe, within a "
        "4-minute training budget) on built-in synthetic touching cells (or ISBI 2012 from the "
        "shared data folder), predict a large held-out image with overlap tiles, score it beside "
        "the best threshold of the raw image, and write report.md with overlays. Rerunning "
        "resumes.",
    )
    p.add_argument("--out", type=out_path, default=Path("runs/demo"), help="output folder")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="training steps (default 1500, fewer if they do not fit in 4 minutes)")
    p.add_argument("--data", choices=["synthetic", "isbi", "auto"], default="synthetic",
                   help="synthetic (default): built-in touching cells; isbi: ISBI 2012 from the "
                   "shared data folder; auto: ISBI 2012 when present, else synthetic")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.workflows.demo import run_demo

    report = run_demo(args.out, iterations=args.iterations, device=args.device, data=args.data,
                      seed=args.seed, progress=not args.quiet, say=print)
    print(f"report: {report}")
    return 0

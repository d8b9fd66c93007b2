"""``useg report RUN [--out FILE]``: a run folder's report, one self-contained HTML page.

The report is :func:`useg.report.write_report`; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from useg.cli import add_precision_argument, out_path, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write a run's report page (HTML)",
        description="Write one self-contained HTML page about a training run (useg train "
        "writes it at its end, as RUN/report.html): the loss and validation curves, a gallery "
        "of image, probability, segmentation and ground truth for the run's validation images "
        "(its training images, labelled as such, without them) predicted with its model as "
        "useg predict would, the validation scores recorded in training and the scores of the "
        "gallery images, and the run's configuration and command. Open it in any browser; it "
        "needs no other file.",
    )
    p.add_argument("run", metavar="RUN", type=Path, help="run folder (useg train --out)")
    p.add_argument("--out", type=out_path, metavar="FILE",
                   help="the page to write (default: RUN/report.html, the run's own report, "
                   "which useg train and useg report rewrite); another file that exists is "
                   "refused unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the --out file when it exists")
    p.add_argument("--max-images", type=positive_int, default=6,
                   help="gallery images at most (default 6)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    add_precision_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from useg.report import write_report

    path = write_report(args.run, args.out, max_images=args.max_images, device=args.device,
                        precision=args.precision, overwrite=args.overwrite)
    print(f"wrote {path}")
    return 0

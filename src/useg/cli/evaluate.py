"""``useg evaluate PRED GT``: score predictions against ground truth, print a table, write JSON.

The scoring is :func:`useg.evaluation.files.evaluate_folders`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from useg.cli import non_negative_int

_DESCRIPTION = """\
Score predictions against ground truth. PRED and GT are image files (.png, .tif, .tiff, .nii,
.nii.gz) or folders of them; files are paired by name stem (pred/12.tif with gt/12.png,
gt/12.nii.gz), and every file must have a partner.

--mode isbi: PRED is a probability of cell interior (0 = membrane, the ISBI 2012 submission
format; use --membrane for a membrane probability) or a binary map. Integer files are divided
by 255 when their values reach at most 255, else by 65535, unless they only hold 0 and 1; float
files must lie in [0, 1]. GT is binary (nonzero = interior), with some interior in every slice.
Reports, per threshold, pixel error, Rand error, adapted Rand error / V_rand, variation of
information and V_info, warping error with split and merger counts, and membrane IoU; stacks
are scored per 2D slice.

--mode instances: PRED and GT are label images (0 = background). Reports object F1, precision
and recall at IoU 0.5 (at the first of --iou-thresholds without 0.5), the Data Science Bowl 2018
average precision over IoU 0.5:0.95, the aggregated Jaccard index (AJI), the Cell Tracking
Challenge SEG score, the mean IoU of objects matched at IoU 0.5, V_rand (GT background
ignored), variation of information (background included), foreground IoU and the numbers of
objects. The mean row pools the object counts of all pairs for F1, precision and recall, sums
the numbers of objects and averages every other score over the pairs.

An option of one mode given with the other is refused. --json never replaces an input file nor
an existing file other than an earlier report.
"""


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers in [0, 1], got {text!r}")
    return values


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground truth (ISBI 2012 or instance metrics)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred", metavar="PRED", type=Path, help="prediction file or folder")
    p.add_argument("gt", metavar="GT", type=Path, help="ground-truth file or folder")
    p.add_argument("--mode", choices=("isbi", "instances"), default="isbi", help="default: isbi")
    # --json is checked by evaluate_folders before any file is read: a folder, a device, an input
    # file or an existing file that is no earlier report is refused.
    p.add_argument("--json", metavar="OUT.json", type=Path,
                   help="also write the scores here (a new file, or an earlier report to replace)")
    p.add_argument(
        "--thresholds",
        type=_float_list,
        default=None,
        metavar="T1,T2,...",
        help="isbi: binarisation thresholds (default: 0.1,...,0.9)",
    )
    # The options of one mode default to None, so that evaluate_folders refuses them when given
    # with the other mode rather than ignoring them.
    p.add_argument("--membrane", action="store_true", default=None,
                   help="isbi: PRED is a membrane probability")
    p.add_argument(
        "--channel",
        type=non_negative_int,
        default=None,
        help="isbi: channel (from 0) of a multi-channel PRED to score (default: the only channel)",
    )
    p.add_argument(
        "--unassigned",
        choices=("fill", "singletons"),
        default=None,
        help="isbi: predicted membrane pixels for V_rand/V_info: grown into the nearest region "
        "(fill, default) or one segment each (singletons)",
    )
    p.add_argument(
        "--iou-thresholds",
        type=_float_list,
        default=None,
        metavar="T1,T2,...",
        help="instances: IoU thresholds of the object F1 (default: 0.5,0.6,0.7,0.8,0.9)",
    )
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------------------------
# output


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


_ISBI_COLUMNS = (
    ("threshold", "threshold", "{:g}"),
    ("pixel_err", "pixel_error", "{:.4f}"),
    ("rand_err", "rand_error", "{:.4f}"),
    ("V_rand", "v_rand", "{:.4f}"),
    ("V_info", "v_info", "{:.4f}"),
    ("VOI_split", "voi_split", "{:.4f}"),
    ("VOI_merge", "voi_merge", "{:.4f}"),
    ("warp_err", "warping_error", "{:.6f}"),
    ("splits", "warping_splits", "{:d}"),
    ("mergers", "warping_mergers", "{:d}"),
    ("IoU_mem", "iou_membrane", "{:.4f}"),
)


def _print_isbi(results: list[dict], summary: dict) -> None:
    what = "one pair" if len(results) == 1 else f"mean over {len(results)} pairs"
    print(f"ISBI 2012 scores ({what})")
    header = [c[0] for c in _ISBI_COLUMNS]
    rows = [
        [fmt.format(row[key]) for _, key, fmt in _ISBI_COLUMNS] for row in summary["per_threshold"]
    ]
    print(_table(header, rows))
    best = summary["best"]
    parts = [
        f"{name} {best[key]['value']:.4g} @ {best[key]['threshold']:g}"
        for name, key in (
            ("pixel error", "pixel_error"),
            ("Rand error", "rand_error"),
            ("V_rand", "v_rand"),
            ("V_info", "v_info"),
            ("warping error", "warping_error"),
        )
    ]
    print("best: " + "; ".join(parts))


def _print_instances(results: list[dict], mean: dict) -> None:
    keys = list(results[0]["scores"]["object_f1"])
    t0 = "0.5" if "0.5" in keys else keys[0]
    header = ["pair", f"F1@{t0}", f"P@{t0}", f"R@{t0}", "AP50:95", "AJI", "SEG", "mIoU@0.5",
              "V_rand", "VOI_split", "VOI_merge", "IoU_fg", "n_pred", "n_gt"]

    def line(name: str, s: dict) -> list[str]:
        f1 = s["object_f1"][t0]
        return [
            name,
            f"{f1['f1']:.4f}",
            f"{f1['precision']:.4f}",
            f"{f1['recall']:.4f}",
            f"{s['average_precision']:.4f}",
            f"{s['aji']:.4f}",
            f"{s['seg']:.4f}",
            f"{s['mean_matched_iou']:.4f}",
            "-" if s["v_rand"] is None else f"{s['v_rand']:.4f}",
            f"{s['voi_split']:.4f}",
            f"{s['voi_merge']:.4f}",
            f"{s['iou_foreground']:.4f}",
            f"{s['n_pred']:d}",
            f"{s['n_gt']:d}",
        ]

    rows = [line(Path(r["pred"]).name, r["scores"]) for r in results]
    if len(results) > 1:
        rows.append(line("mean", mean))
    print("Instance segmentation scores")
    print(_table(header, rows))
    if len(results) > 1:
        print("mean: F1, P and R from the pooled object counts, n_pred and n_gt summed, "
              "the rest averaged over the pairs")
    if any(r["scores"]["v_rand"] is None for r in results):
        print("V_rand -: the reference has no object, so its Rand score is undefined (left "
              "out of the mean)")
    f1s = ", ".join(f"{t}: {mean['object_f1'][t]['f1']:.4f}" for t in keys)
    print(f"object F1 by IoU threshold (pooled): {f1s}")


def run(args: argparse.Namespace) -> int:
    from useg.evaluation.files import evaluate_folders

    report = evaluate_folders(
        args.pred, args.gt, mode=args.mode, thresholds=args.thresholds, membrane=args.membrane,
        channel=args.channel, unassigned=args.unassigned, iou_thresholds=args.iou_thresholds,
        json_path=args.json,
    )
    if args.mode == "isbi":
        _print_isbi(report["pairs"], report["mean"])
    else:
        _print_instances(report["pairs"], report["mean"])
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0

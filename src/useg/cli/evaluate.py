"""``useg evaluate PRED GT``: score predictions against ground truth, print a table, write JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from useg.errors import InputError

_DESCRIPTION = """\
Score predictions against ground truth. PRED and GT are image files (.png, .tif, .tiff) or
folders of them; files are paired by name stem (pred/12.tif with gt/12.png), and every file
must have a partner.

--mode isbi: PRED is a probability of cell interior (0 = membrane, the ISBI 2012 submission
format; use --membrane for a membrane probability) or a binary map. Integer files are divided
by 255 when their values reach at most 255, else by 65535, unless they only hold 0 and 1; float
files must lie in [0, 1]. GT is binary (nonzero = interior).
Reports, per threshold, pixel error, Rand error, adapted Rand error / V_rand, variation of
information and V_info, warping error with split and merger counts, and membrane IoU; stacks
are scored per 2D slice.

--mode instances: PRED and GT are label images (0 = background). Reports the Cell Tracking
Challenge SEG score, object precision/recall/F1 at IoU thresholds, adapted Rand error (GT
background ignored), variation of information (background included) and foreground IoU.
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
    p.add_argument("--json", metavar="OUT.json", type=Path, help="also write the scores here")
    p.add_argument(
        "--thresholds",
        type=_float_list,
        default=None,
        metavar="T1,T2,...",
        help="isbi: binarisation thresholds (default: 0.1,...,0.9)",
    )
    p.add_argument("--membrane", action="store_true", help="isbi: PRED is a membrane probability")
    p.add_argument(
        "--channel",
        type=int,
        default=None,
        help="isbi: channel of a multi-channel PRED to score (default: the only channel)",
    )
    p.add_argument(
        "--unassigned",
        choices=("fill", "singletons"),
        default="fill",
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
# pairing and reading


def _pairs(pred: Path, gt: Path) -> list[tuple[Path, Path]]:
    from useg.io import list_images

    pred_files = list_images(pred)
    gt_files = list_images(gt)
    if pred.is_file() and gt.is_file():
        return [(pred, gt)]

    def stems(files: list[Path], side: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in files:
            stem = f.stem
            if stem.lower().endswith(".ome"):  # a.ome.tif pairs with a.png
                stem = stem[:-4]
            if stem in out:
                raise InputError(f"{f}: same name stem as {out[stem]} in {side}; cannot pair them")
            out[stem] = f
        return out

    by_pred = stems(pred_files, "PRED")
    by_gt = stems(gt_files, "GT")
    if pred.is_file():  # one prediction against the matching file of a GT folder
        by_gt = {s: f for s, f in by_gt.items() if s in by_pred}
    if gt.is_file():
        by_pred = {s: f for s, f in by_pred.items() if s in by_gt}
    for stem, f in by_pred.items():
        if stem not in by_gt:
            raise InputError(f"{f}: no ground-truth file with the name stem {stem!r} in {gt}")
    for stem, f in by_gt.items():
        if stem not in by_pred:
            raise InputError(f"{f}: no prediction file with the name stem {stem!r} in {pred}")
    return [(by_pred[s], by_gt[s]) for s in by_pred]


def _read_probability(path: Path, channel: int | None) -> np.ndarray:
    from useg.io import read_image

    image, _ = read_image(path)
    n = image.shape[0]
    if channel is None:
        if n != 1:
            raise InputError(f"{path}: has {n} channels; choose one with --channel")
        channel = 0
    if not -n <= channel < n:
        raise InputError(f"{path}: has {n} channels, no channel {channel}")
    p = image[channel]
    if p.dtype == bool:
        return p.astype(np.float64)
    if np.issubdtype(p.dtype, np.integer):
        top = int(p.max())
        if p.min() < 0 or top > 65535:
            raise InputError(f"{path}: integer values outside 0..65535 cannot be probabilities")
        scale = 1 if top <= 1 else 255 if top <= 255 else 65535
        return p.astype(np.float64) / scale
    p = p.astype(np.float64)
    if p.min() < 0 or p.max() > 1:
        raise InputError(
            f"{path}: float values in [{p.min():g}, {p.max():g}]; probabilities must lie in [0, 1]"
        )
    return p


def _read_labels(path: Path) -> np.ndarray:
    from useg.io import read_labels

    return read_labels(path)[0]


def _same_shape(pred: np.ndarray, gt: np.ndarray, pred_path: Path, gt_path: Path) -> None:
    if pred.shape != gt.shape:
        raise InputError(
            f"{pred_path}: shape {pred.shape} does not match {gt_path} with shape {gt.shape}"
        )


# --------------------------------------------------------------------------------------------
# scoring


def _score_isbi(pairs, args) -> tuple[list[dict], dict]:
    from useg.metrics import isbi_best, isbi_scores

    results = []
    for pred_path, gt_path in pairs:
        prob = _read_probability(pred_path, args.channel)
        gt = _read_labels(gt_path)
        _same_shape(prob, gt, pred_path, gt_path)
        if np.unique(gt).size > 2:
            raise InputError(
                f"{gt_path}: ground truth has more than two values; --mode isbi needs a binary "
                "map (use --mode instances for label images)"
            )
        scores = isbi_scores(
            prob, gt, args.thresholds, membrane=args.membrane, unassigned=args.unassigned
        )
        results.append({"pred": str(pred_path), "gt": str(gt_path), "scores": scores})
    rows = []
    for i, t in enumerate(args.thresholds):
        per_pair = [r["scores"]["per_threshold"][i] for r in results]
        row: dict = {"threshold": float(t)}
        for key, value in per_pair[0].items():
            if key == "threshold":
                continue
            values = [r[key] for r in per_pair]
            row[key] = int(sum(values)) if isinstance(value, int) else float(np.mean(values))
        rows.append(row)
    return results, {"per_threshold": rows, "best": isbi_best(rows)}


def _score_instances(pairs, args) -> tuple[list[dict], dict]:
    from useg import metrics

    results = []
    for pred_path, gt_path in pairs:
        pred = _read_labels(pred_path)
        gt = _read_labels(gt_path)
        _same_shape(pred, gt, pred_path, gt_path)
        are, _, _ = metrics.adapted_rand_error(pred, gt, ignore_labels=(0,))
        voi_split, voi_merge = metrics.variation_of_information(pred, gt)
        f1 = metrics.object_f1(pred, gt, thresholds=args.iou_thresholds)
        scores = {
            "seg": metrics.seg_score(pred, gt),
            "adapted_rand_error": are,
            "v_rand": 1.0 - are,
            "voi_split": voi_split,
            "voi_merge": voi_merge,
            "iou_foreground": metrics.iou(pred > 0, gt > 0, labels=(1,))[1],
            "object_f1": {f"{t:g}": v for t, v in f1.items()},
        }
        results.append({"pred": str(pred_path), "gt": str(gt_path), "scores": scores})
    mean: dict = {}
    for key, value in results[0]["scores"].items():
        if isinstance(value, float):
            mean[key] = float(np.mean([r["scores"][key] for r in results]))
    # Object counts are pooled over images before computing precision, recall and F1.
    pooled = {}
    for t in results[0]["scores"]["object_f1"]:
        tp, fp, fn = (
            sum(r["scores"]["object_f1"][t][k] for r in results) for k in ("tp", "fp", "fn")
        )
        if tp + fp + fn == 0:
            prec = rec = f1 = 1.0
        else:
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * tp / (2 * tp + fp + fn)
        pooled[t] = {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "fp": fp, "fn": fn}
    mean["object_f1"] = pooled
    return results, mean


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
    t0 = keys[0]
    header = ["pair", "SEG", f"F1@{t0}", "V_rand", "VOI_split", "VOI_merge", "IoU_fg"]

    def line(name: str, s: dict) -> list[str]:
        return [
            name,
            f"{s['seg']:.4f}",
            f"{s['object_f1'][t0]['f1']:.4f}",
            f"{s['v_rand']:.4f}",
            f"{s['voi_split']:.4f}",
            f"{s['voi_merge']:.4f}",
            f"{s['iou_foreground']:.4f}",
        ]

    rows = [line(Path(r["pred"]).name, r["scores"]) for r in results]
    if len(results) > 1:
        rows.append(line("mean", mean))
    print("Instance segmentation scores")
    print(_table(header, rows))
    f1s = ", ".join(f"{t}: {mean['object_f1'][t]['f1']:.4f}" for t in keys)
    print(f"object F1 by IoU threshold (pooled): {f1s}")


def run(args: argparse.Namespace) -> int:
    from useg.io import write_json
    from useg.metrics import DEFAULT_IOU_THRESHOLDS, DEFAULT_ISBI_THRESHOLDS

    # Defaults are filled here so that building the parser does not import SciPy.
    if args.thresholds is None:
        args.thresholds = DEFAULT_ISBI_THRESHOLDS
    if args.iou_thresholds is None:
        args.iou_thresholds = DEFAULT_IOU_THRESHOLDS
    pairs = _pairs(args.pred, args.gt)
    if args.mode == "isbi":
        if any(not 0 <= t <= 1 for t in args.thresholds):
            raise InputError(f"--thresholds must lie in [0, 1], got {list(args.thresholds)}")
        results, summary = _score_isbi(pairs, args)
        _print_isbi(results, summary)
        report = {"mode": "isbi", "pairs": results, "mean": summary}
    else:
        if any(not 0 <= t < 1 for t in args.iou_thresholds):
            raise InputError(
                f"--iou-thresholds must lie in [0, 1), got {list(args.iou_thresholds)}"
            )
        results, mean = _score_instances(pairs, args)
        _print_instances(results, mean)
        report = {"mode": "instances", "pairs": results, "mean": mean}
    if args.json is not None:
        if not args.json.parent.is_dir():
            raise InputError(f"{args.json}: the folder {args.json.parent} does not exist")
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0

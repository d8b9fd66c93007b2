"""3D U-Net from sparse slice annotations on FlyEM FIB-SEM: the shape of Cicek et al. 2016,
Tables 1 and 2, on a CPU budget.

Run: .venv/bin/python bench/sparse3d.py [--quick] [--minutes M] [--threads 1]

Data: /work/shared/data/flyem_medulla_fibsem_3d (useg.paths.dataset), a crop of the FIB-SEM cube
(10 nm isotropic voxels; default crop 80 x 160 x 160 from its centre). Target: the boundary
class of the dense body labels (useg.data.boundary_target, width 1; body 0 = unlabeled, ignored).

Semi-automated setting, as the paper's: the network is trained on a few annotated orthogonal
slices of the crop and segments the same crop; the score is the IoU of the boundary class on
the voxels that were NOT annotated (and are labelled in the ground truth).

Table 1: 3D U-Net, annotated slices (z, y, x) = (1,1,1), (2,2,1), (3,3,2), (5,5,3), evenly
         spaced along each axis.
Table 2: 3D U-Net against a 2D U-Net given the same annotated slices (3,3,2): the 2D network
         has the same configuration with 2D convolutions and is trained on the annotated
         z-slices (Y, X) and the annotated y- and x-slices (Z, X) and (Z, Y) (isotropic voxels,
         so these are equally valid 2D images); it segments the crop z-slice by z-slice.

Scores: IoU of the boundary class on the unannotated voxels (1) for the most likely class
(argmax), the paper's measure, and (2) with the decision threshold on the boundary probability
chosen to maximise the IoU on the ANNOTATED voxels (0.05..0.95 in steps of 0.05; no
unannotated voxel is looked at), which a user of ``useg densify`` can do as well. With class
balancing the argmax over-predicts the boundary by an amount that varies from run to run on a
short budget; (2) removes most of that noise.

Budget: a fixed number of training steps (``STEPS``: 1250 per Table 1 run, 2500 for the 3D
and 15000 for the 2D run of Table 2), so that a rerun reproduces the numbers whatever the load
of the machine; they are what 15 minutes of wall time per table bought on the lightly loaded
2-core machine (the issue allows 60 per table; under heavy load a table takes up to ~3x
longer). ``--minutes M`` instead calibrates the steps to M minutes of wall time per table,
shared equally by the table's runs (a short timed run of each network first).
Network (CPU-sized): the cicek2016
preset at width 8 and depth 2 with SAME padding, tile 44^3 (44^3 output), batch norm with
running statistics at prediction; Adam 1e-3 with the poly schedule, bf16 autocast, and NO
augmentation by default (``--augment``: the paper's 3D augmentation, B-spline elastic
deformation with control points every 32 voxels and std 4, rotations in all planes, flips,
scaling, gray values).

Why these departures from the paper (measured while writing this bench, 80x160x160 crop):
the paper's Table 1 effect is overfitting: a network that can fit a few slices generalises
badly from them. On a CPU budget of minutes the network must get there, or the amount of
annotation cannot matter. (a) With sparse slices only the voxels of the annotated planes in a
tile are supervised (about 2% of a 44^3 output), and a valid 84^3 input tile costs 3x the
compute of a same 44^3 one for the same supervised voxels: the valid network with batch
statistics (``--padding valid --stats batch --tile3d 84 84 84``, 257 steps per run) scored
0.355, 0.379, 0.380, 0.361 for the four settings, no trend, as good on the unannotated as on
the annotated voxels (underfitting). (b) With augmentation, 800 steps of the same-padding
network still underfit (annotated 0.52, unannotated 0.50 calibrated IoU) and (1,1,1) against
(5,5,3) gave 0.502 against 0.520 with class balancing, 0.503 against 0.484 without: noise.
Without augmentation the network fits the slices (1,1,1: 0.62 on the annotated voxels, 0.50 on
the others) and more slices help (5,5,3: 0.555). Augmentation pays off only after far more
steps than this budget allows. Batch statistics would force prediction with the training
tile, which a same-padding network (it discards a margin of every tile) cannot do efficiently.
One run per cell (no repeats): the budget does not allow more; run-to-run noise of the
calibrated IoU was about +-0.02 in these trials.

Results: bench/results/sparse3d.json and .md; figure docs/figures/sparse3d.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from useg import io
from useg.checkpoint import load_model
from useg.data import IGNORE, boundary_target, make_sample
from useg.nets import preset
from useg.normalize import image_stats
from useg.paths import dataset
from useg.predict import predict
from useg.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 5, 3))
TABLE2_SETTING = (3, 3, 2)
STEPS = {"table1_3d": 1250, "table2_3d": 2500, "table2_2d": 15000}
SPACING_UM = (0.01, 0.01, 0.01)  # FIB-SEM, 10 nm isotropic (PROVENANCE.md)


def machine_info(threads: int) -> dict:
    import scipy

    return {
        "cpu_count": os.cpu_count(),
        "threads_used": threads,
        "load_average_at_start": list(os.getloadavg()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def slice_positions(counts, shape) -> dict[int, list[int]]:
    """``n`` evenly spaced slices along each axis: centres of ``n`` equal bins."""
    return {a: [int((i + 0.5) * shape[a] / n) for i in range(n)]
            for a, n in enumerate(counts) if n > 0}


def annotated_mask(slices, shape) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for axis, indices in slices.items():
        for i in indices:
            index = [slice(None)] * len(shape)
            index[axis] = i
            mask[tuple(index)] = True
    return mask


def boundary_iou(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    p, t = (pred == 1) & mask, (target == 1) & mask
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def calibrated_iou(prob, target, annotated, evaluate) -> tuple[float, float]:
    """Threshold maximising the IoU on the annotated voxels, and the IoU it gives elsewhere."""
    thresholds = np.round(np.arange(0.05, 0.951, 0.05), 2)
    scores = [boundary_iou((prob > t).astype(np.uint8), target, annotated) for t in thresholds]
    best = float(thresholds[int(np.argmax(scores))])
    return best, boundary_iou((prob > best).astype(np.uint8), target, evaluate)


def load_crop(crop, quick: bool):
    root = dataset("flyem_medulla_fibsem_3d")
    if root is None:
        sys.exit("flyem_medulla_fibsem_3d not found; set USEG_DATA")
    raw, _ = io.read_image(root / "raw_zyx.tif")
    bodies, _ = io.read_labels(root / "labels_bodies_zyx.tif")
    start = [(n - c) // 2 for n, c in zip(bodies.shape, crop, strict=True)]
    box = tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))
    return raw[(slice(None), *box)], bodies[box], [[s, s + c] for s, c in zip(start, crop,
                                                                           strict=True)]


class Experiment:
    """Everything shared by the runs: data, target, normalisation, network settings."""

    def __init__(self, args):
        self.args = args
        self.image, self.bodies, self.box = load_crop(args.crop, args.quick)
        self.target = boundary_target(self.bodies, 1, ignore=0)
        stats = image_stats(self.image)
        self.normalization = {"mode": "fixed", "offset": stats["offset"], "scale": stats["scale"]}
        self.tmp = Path(tempfile.mkdtemp(prefix="useg-sparse3d-"))
        self.runs = 0

    def config(self, ndim: int, iterations: int) -> TrainConfig:
        a = self.args
        net = preset("cicek2016", ndim=ndim, in_channels=1, classes=2, width=a.width,
                     depth=a.depth, padding=a.padding, batch_stats=a.stats == "batch")
        return TrainConfig(
            net=net.to_dict(), tile=a.tile3d if ndim == 3 else a.tile2d, iterations=iterations,
            optimizer="adam", lr=a.lr, schedule="poly", precision=a.precision,
            augment={} if a.augment else None,
            label_mode="classes", unlabeled=IGNORE, w0=0.0, normalization=self.normalization,
            checkpoint_every=10**9, log_every=1, seed=a.seed, workers=a.workers, device="cpu",
        )

    def samples_3d(self, slices):
        return [make_sample(self.image, self.target, mode="classes", unlabeled=IGNORE,
                            slices=slices, w0=0.0, spacing=SPACING_UM,
                            normalization=self.normalization, name="flyem")]

    def samples_2d(self, slices):
        """Each annotated slice as a 2D image, whatever its orientation."""
        samples = []
        for axis, indices in slices.items():
            for i in indices:
                img = np.take(self.image, i, axis=axis + 1)
                tgt = np.take(self.target, i, axis=axis)
                samples.append(make_sample(img, tgt, mode="classes", unlabeled=IGNORE, w0=0.0,
                                           spacing=SPACING_UM[:2],
                                           normalization=self.normalization,
                                           name=f"{'zyx'[axis]}={i}"))
        return samples

    def predict(self, model) -> np.ndarray:
        """Boundary probability of every voxel of the crop."""
        stats = {"offset": self.normalization["offset"], "scale": self.normalization["scale"]}
        # Batch statistics: predict with the training tile, as densify does.
        tile = None
        cfg = model.config
        if cfg.norm == "batch" and cfg.batch_stats and cfg.padding == "valid":
            tile = self.args.tile3d if model.config.ndim == 3 else self.args.tile2d
        kw = dict(device="cpu", precision=self.args.precision, stats=stats, tile=tile)
        if model.config.ndim == 3:
            return predict(model, self.image, **kw)[1]
        return np.stack([predict(model, self.image[:, z], **kw)[1]
                         for z in range(self.image.shape[1])])

    def run(self, ndim: int, counts, iterations: int, step_times: list | None = None) -> dict:
        shape = self.target.shape
        slices = slice_positions(counts, shape)
        samples = self.samples_3d(slices) if ndim == 3 else self.samples_2d(slices)
        cfg = self.config(ndim, iterations)
        stamps = []
        self.runs += 1
        t0 = time.perf_counter()
        path = train(cfg, samples, self.tmp / f"run{self.runs}", progress=False,
                     callback=lambda step, row: stamps.append(time.perf_counter()))
        t1 = time.perf_counter()
        model = load_model(path)
        prob = self.predict(model)
        pred = (prob > 0.5).astype(np.uint8)  # the argmax of two classes
        t2 = time.perf_counter()
        annotated = annotated_mask(slices, shape)
        evaluate = ~annotated & (self.target != IGNORE)
        threshold, calibrated = calibrated_iou(prob, self.target,
                                               annotated & (self.target != IGNORE), evaluate)
        if step_times is not None:
            step_times.extend(np.diff(stamps).tolist())
        return {
            "net": f"{ndim}D",
            "slices_zyx": list(counts),
            "slice_indices": {"zyx"[a]: v for a, v in slices.items()},
            "annotated_fraction": float(annotated.mean()),
            "iterations": iterations,
            "train_s": t1 - t0,
            "predict_s": t2 - t1,
            "iou_boundary_unannotated": boundary_iou(pred, self.target, evaluate),
            "iou_boundary_annotated": boundary_iou(pred, self.target,
                                                   annotated & (self.target != IGNORE)),
            "iou_boundary_unannotated_calibrated": calibrated,
            "threshold_from_annotated": threshold,
            "predicted_boundary_fraction": float(pred.mean()),
            "true_boundary_fraction": float((self.target == 1).mean()),
            "pixel_accuracy_unannotated": float((pred[evaluate] == self.target[evaluate]).mean()),
            "prediction": pred,
        }


def calibrate(exp: Experiment, ndim: int) -> dict:
    """Seconds per training step (median after warm-up) and per prediction of the crop."""
    times: list[float] = []
    r = exp.run(ndim, TABLE2_SETTING, exp.args.calibration_steps, times)
    return {"step_s": float(np.median(times[2:])), "predict_s": r["predict_s"],
            "overhead_s": r["train_s"] - float(np.sum(times))}


def steps_for(budget_s: float, cal: dict) -> int:
    return max(10, int((budget_s - cal["predict_s"] - cal["overhead_s"]) / cal["step_s"]))


def strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "prediction"}


def figure(exp: Experiment, run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = {"zyx".index(k): v for k, v in run["slice_indices"].items()}
    annotated = annotated_mask(slices, exp.target.shape)
    # An unannotated z-slice and an unannotated y-slice, between annotated ones.
    z = (slices[0][0] + slices[0][1]) // 2 if len(slices[0]) > 1 else slices[0][0] // 2
    y = (slices[1][0] + slices[1][1]) // 2 if len(slices[1]) > 1 else slices[1][0] // 2
    sparse = np.where(annotated, exp.target, IGNORE)
    views = [("z", z, lambda a: a[z]), ("y", y, lambda a: a[:, y])]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.8),
                             gridspec_kw={"height_ratios": [1.0, exp.target.shape[0] /
                                                            exp.target.shape[1]]})
    # not annotated, annotated interior, annotated boundary
    cmap = matplotlib.colors.ListedColormap(["#d9d9d9", "#9ecae1", "#d62728"])
    for row, (name, index, take) in enumerate(views):
        axes[row, 0].imshow(take(exp.image[0]), cmap="gray")
        axes[row, 1].imshow(take(sparse) + 1, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        axes[row, 2].imshow(take(run["prediction"]), cmap="gray_r", interpolation="nearest")
        axes[row, 3].imshow(take(np.where(exp.target == 1, 1, 0)), cmap="gray_r",
                            interpolation="nearest")
        titles = [f"raw, {name} = {index}", "annotation (grey: none, red: boundary)",
                  "3D U-Net prediction (boundary)", "ground truth (boundary)"]
        for ax, title in zip(axes[row], titles, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    counts = run["slices_zyx"]
    fig.suptitle(
        f"FlyEM FIB-SEM crop {tuple(exp.target.shape)}: 3D U-Net trained on {counts[0]}+"
        f"{counts[1]}+{counts[2]} annotated z/y/x slices; IoU (boundary, unannotated voxels) "
        f"{run['iou_boundary_unannotated']:.3f}. The slices shown are not annotated: only the "
        "lines where annotated planes cross them are.", fontsize=9, wrap=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def budget_text(result: dict) -> str:
    if result["minutes_per_table"] is None:
        return (f"fixed steps (3D {result['steps']['table1_3d']} per Table 1 run, Table 2: 3D "
                f"{result['steps']['table2_3d']}, 2D {result['steps']['table2_2d']})")
    return f"{result['minutes_per_table']} min wall time per table"


def markdown(result: dict) -> str:
    lines = [
        "# Sparse 3D annotation: the shape of the 3D U-Net paper's Tables 1 and 2",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Data: FlyEM medulla FIB-SEM crop {result['crop']} (box {result['box_zyx']}), boundary "
        "class of the body labels (width 1). Score: IoU of the boundary class on the voxels "
        "that were not annotated. Budget: "
        f"{budget_text(result)}, {result['threads']} thread(s), "
        f"machine load average at start {result['machine']['load_average_at_start'][0]:.1f} "
        f"on {result['machine']['cpu_count']} cores. Network: {result['network']}.",
        "",
        "## Table 1: 3D U-Net, more annotated slices",
        "",
        "IoU: boundary class on the unannotated voxels, argmax; 'calibrated': threshold "
        "chosen on the annotated voxels (in brackets); 'annotated': argmax IoU on the annotated "
        "voxels themselves (training data).",
        "",
        "| slices z,y,x | annotated voxels | steps | train s | IoU (argmax) | IoU (calibrated) "
        "| IoU annotated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["table1"]:
        lines.append(
            f"| {','.join(map(str, r['slices_zyx']))} | {100 * r['annotated_fraction']:.1f}% | "
            f"{r['iterations']} | {r['train_s']:.0f} | {r['iou_boundary_unannotated']:.3f} | "
            f"{r['iou_boundary_unannotated_calibrated']:.3f} ({r['threshold_from_annotated']}) "
            f"| {r['iou_boundary_annotated']:.3f} |")
    mono = result["table1_monotone"]
    lines += ["", "IoU rises with every added set of slices: argmax "
              f"**{'yes' if mono['argmax'] else 'no'}**, calibrated "
              f"**{'yes' if mono['calibrated'] else 'no'}**.", "",
              f"## Table 2: 3D against 2D U-Net, slices {result['table2_setting']}", "",
              "| network | steps | train s | IoU (argmax) | IoU (calibrated) | IoU annotated |",
              "|---|---|---|---|---|---|"]
    for r in result["table2"]:
        lines.append(f"| {r['net']} | {r['iterations']} | {r['train_s']:.0f} | "
                     f"{r['iou_boundary_unannotated']:.3f} | "
                     f"{r['iou_boundary_unannotated_calibrated']:.3f} "
                     f"({r['threshold_from_annotated']}) | {r['iou_boundary_annotated']:.3f} |")
    ratio = result["table2_ratio_3d_over_2d"]
    lines += ["", f"IoU ratio 3D / 2D: argmax {ratio['argmax']:.3f}, calibrated "
              f"{ratio['calibrated']:.3f}.", "",
              "Figure: `docs/figures/sparse3d.png`. One run per cell (no repeats within the "
              "budget); see `bench/sparse3d.py` for the protocol.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small crop, 2 minutes per table (numbers meaningless)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="calibrate steps to this wall time per table (default: STEPS)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")
    parser.add_argument("--crop", type=int, nargs=3, default=None)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--tile3d", type=int, nargs=3, default=None)
    parser.add_argument("--tile2d", type=int, nargs=2, default=None)
    parser.add_argument("--padding", default="same", choices=["same", "valid"])
    parser.add_argument("--stats", default="running", choices=["running", "batch"],
                        help="batch norm statistics at prediction")
    parser.add_argument("--augment", action="store_true",
                        help="the paper's 3D augmentation (default: none, see the docstring)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--steps3d", type=int, default=None,
                        help="training steps of every 3D run (overrides STEPS)")
    parser.add_argument("--steps2d", type=int, default=None,
                        help="training steps of the 2D run (overrides STEPS)")
    parser.add_argument("--calibration-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args()
    if args.quick and args.minutes is None:
        args.minutes = 2.0
    args.crop = args.crop or ([40, 96, 96] if args.quick else [80, 160, 160])
    args.tile3d = args.tile3d or ([32, 32, 32] if args.quick else [44, 44, 44])
    args.tile2d = args.tile2d or [128, 128]
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)

    exp = Experiment(args)
    cal3 = cal2 = None
    if args.minutes is None:
        print(f"crop {args.crop}, fixed steps {STEPS}", flush=True)
        steps3, steps3_t2, steps2_t2 = (STEPS["table1_3d"], STEPS["table2_3d"],
                                        STEPS["table2_2d"])
    else:
        budget = 60.0 * args.minutes
        print(f"crop {args.crop}, {budget / 60:.0f} min per table; calibrating...", flush=True)
        cal3 = calibrate(exp, 3)
        cal2 = calibrate(exp, 2)
        print(f"3D: {cal3['step_s']:.2f} s/step, predict {cal3['predict_s']:.0f} s; "
              f"2D: {cal2['step_s']:.3f} s/step, predict {cal2['predict_s']:.0f} s", flush=True)
        steps3 = steps_for(budget / len(SETTINGS), cal3)
        steps3_t2 = steps_for(budget / 2, cal3)
        steps2_t2 = steps_for(budget / 2, cal2)
    steps3 = args.steps3d or steps3
    steps3_t2 = args.steps3d or steps3_t2
    steps2_t2 = args.steps2d or steps2_t2

    table1 = []
    print(f"\nTable 1: 3D U-Net, {steps3} steps per run")
    print(f"{'slices z,y,x':>13} {'annot.':>7} {'train s':>8} {'IoU argmax':>11} "
          f"{'IoU calibrated':>15}")
    for counts in SETTINGS:
        r = exp.run(3, counts, steps3)
        table1.append(r)
        print(f"{','.join(map(str, counts)):>13} {100 * r['annotated_fraction']:6.1f}% "
              f"{r['train_s']:8.0f} {r['iou_boundary_unannotated']:11.3f} "
              f"{r['iou_boundary_unannotated_calibrated']:15.3f}", flush=True)
    monotone = {}
    for name, key in (("argmax", "iou_boundary_unannotated"),
                      ("calibrated", "iou_boundary_unannotated_calibrated")):
        ious = [r[key] for r in table1]
        monotone[name] = all(b > a for a, b in zip(ious, ious[1:], strict=False))

    print(f"\nTable 2: slices {TABLE2_SETTING}: 3D ({steps3_t2} steps) vs 2D ({steps2_t2} steps)")
    table2 = [exp.run(3, TABLE2_SETTING, steps3_t2), exp.run(2, TABLE2_SETTING, steps2_t2)]
    for r in table2:
        print(f"{r['net']:>4} {r['train_s']:8.0f} s {r['iou_boundary_unannotated']:8.3f} "
              f"{r['iou_boundary_unannotated_calibrated']:8.3f}", flush=True)
    ratio = {name: table2[0][key] / max(table2[1][key], 1e-9)
             for name, key in (("argmax", "iou_boundary_unannotated"),
                               ("calibrated", "iou_boundary_unannotated_calibrated"))}

    result = {
        "benchmark": "3D U-Net from sparse slice annotations (Cicek 2016 Tables 1-2 shape)",
        "command": " ".join([".venv/bin/python", "bench/sparse3d.py", *sys.argv[1:]]),
        "machine": machine,
        "threads": args.threads,
        "quick": args.quick,
        "minutes_per_table": args.minutes,
        "steps": {"table1_3d": steps3, "table2_3d": steps3_t2, "table2_2d": steps2_t2},
        "crop": args.crop,
        "box_zyx": exp.box,
        "network": (f"cicek2016 width {args.width} depth {args.depth}, {args.padding} padding, "
                    f"batch norm with {args.stats} statistics at prediction; 3D tile "
                    f"{args.tile3d}, 2D tile {args.tile2d}; Adam lr {args.lr}, poly schedule, "
                    f"{args.precision}, "
                    f"{'paper augmentation' if args.augment else 'no augmentation'}"),
        "calibration": {"3d": cal3, "2d": cal2},
        "table1": [strip(r) for r in table1],
        "table1_monotone": monotone,
        "table2_setting": list(TABLE2_SETTING),
        "table2": [strip(r) for r in table2],
        "table2_ratio_3d_over_2d": ratio,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "sparse3d_quick" if args.quick else "sparse3d"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown(result))
    if not args.no_figure:
        figure(exp, table1[-1], ROOT / "docs" / "figures" /
               ("sparse3d_quick.png" if args.quick else "sparse3d.png"))
    print(f"\nIoU rises with the number of annotated slices: {monotone}; 3D/2D IoU ratio "
          f"{ratio}\nwrote {out / (name + '.json')}")


if __name__ == "__main__":
    main()

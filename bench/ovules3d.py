"""Cells in 3D as objects: the PlantSeg ovule sample (confocal, membrane stain, dense cell ids),
3D U-Net boundary map to one label per cell, against the raw membrane signal.

Run: .venv/bin/python bench/ovules3d.py [--quick] [--steps N] [--threads 1]

Data: the shared folder's plantseg_ovule_3d (useg.io.datasets.dataset): one 32 x 128 x 128
volume (Z, Y, X; 0.235 x 0.15 x 0.15 um voxels) with every cell labelled (50 ids). It is tiny,
so the three disjoint sets are slabs of it along X: train x 0-63, validation x 64-95, test
x 96-127 (each with all of Z and Y). Cells cut by a slab border are cells of both slabs.

useg: ``useg train --label-mode boundary`` (the 3D U-Net's target for dense cell labels: 1
where the id changes) on the training slab, then ``useg predict --instances`` (target
``boundary``: seeds from the distance transform of the confident interior, watershed over the
boundary probability) on the validation and test slabs. The instance settings (threshold, seed
distance, minimum size) are chosen on the validation slab by the adapted Rand error, then
applied once to the test slab. Network (CPU-sized): cicek2016 at width 8, depth 2, SAME padding,
24 x 64 x 64 tiles, Adam 1e-3, ``STEPS`` steps, the paper's 3D augmentation off.

Baseline (no learning): the raw membrane signal, scaled to [0, 1] by its 1st and 99.8th
percentiles, taken as the boundary probability, with the same instance step and the same
choice of settings on the validation slab.

Scores on the test slab (useg.evaluation.rand, ignoring the few unlabelled voxels): adapted Rand
error (1 - F-score of the Rand index, ISBI/SNEMI3D) and the variation of information (split,
merge, in bits); cell counts.

Results: bench/results/ovules3d.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from _common import RESULTS, ROOT, command_line, machine_info, write_json

from useg import io
from useg.evaluation.rand import adapted_rand_error, variation_of_information
from useg.io.datasets import dataset
from useg.postprocess.instances import InstanceParams, instances_from_probabilities
from useg.training.options import TrainOptions
from useg.workflows.segment import segment_paths
from useg.workflows.tune_instances import train_and_tune

SLABS = {"train": (0, 64), "val": (64, 96), "test": (96, 128)}
SPACING = (0.235, 0.15, 0.15)
STEPS = 600
NETWORK = {"preset": "cicek2016", "width": 8, "depth": 2, "padding": "same",
           "tile": (24, 64, 64), "optimizer": "adam", "lr": 1e-3}
GRID = {"threshold": (0.3, 0.5, 0.7), "seed_distance": (0.0, 1.0, 2.0, 4.0),
        "min_size": (0, 50, 200)}


def write_slabs(root: Path, tmp: Path) -> dict[str, dict[str, Path]]:
    raw = io.read_image(root / "raw.tif")[0][0]
    labels = io.read_labels(root / "labels.tif")[0]
    folders = {}
    for split, (a, b) in SLABS.items():
        folders[split] = {}
        for kind, array in (("images", raw), ("labels", labels)):
            d = tmp / split / kind
            d.mkdir(parents=True)
            path = d / "ovule.tif"
            tifffile.imwrite(path, np.ascontiguousarray(array[..., a:b]), imagej=True,
                             resolution=(1 / SPACING[2], 1 / SPACING[1]),
                             metadata={"spacing": SPACING[0], "unit": "um", "axes": "ZYX"})
            folders[split][kind] = d
    return folders


def scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    are, precision, recall = adapted_rand_error(seg, gt, ignore_labels=(0,))
    split, merge = variation_of_information(seg, gt, ignore_labels=(0,))
    return {"adapted_rand_error": are, "rand_precision": precision, "rand_recall": recall,
            "voi_split": split, "voi_merge": merge,
            "cells_found": int(len(np.unique(seg[seg > 0]))),
            "cells_true": int(len(np.unique(gt[gt > 0])))}


def choose(probs: np.ndarray, gt: np.ndarray, spacing) -> tuple[InstanceParams, float]:
    best = None
    names = list(GRID)
    for values in itertools.product(*(GRID[n] for n in names)):
        params = InstanceParams(**dict(zip(names, values, strict=True)))
        seg = instances_from_probabilities(probs, "boundary", params, spacing=spacing)
        are = adapted_rand_error(seg, gt, ignore_labels=(0,))[0]
        if best is None or are < best[1]:
            best = (params, are)
    return best


def membrane_probs(raw: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(raw, (1.0, 99.8))
    b = np.clip((raw.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.stack([1.0 - b, b])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers meaningless)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps ({STEPS})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.steps = args.steps or (10 if args.quick else STEPS)
    torch.set_num_threads(args.threads)
    machine = machine_info("scikit-image")
    root = dataset("plantseg_ovule_3d")
    relative = tuple(s / min(SPACING) for s in SPACING)
    with tempfile.TemporaryDirectory(prefix="useg-ovules-") as name:
        tmp = Path(name)
        folders = write_slabs(root, tmp)
        t0 = time.perf_counter()
        options = TrainOptions(**NETWORK, iterations=args.steps, label_mode="boundary",
                               val_every=max(1, args.steps // 6),
                               checkpoint_every=max(1, args.steps // 3), seed=args.seed,
                               workers=1, device="cpu", no_augment=True)
        model, _ = train_and_tune(
            tmp / "run", images=folders["train"]["images"], labels=folders["train"]["labels"],
            val_images=folders["val"]["images"], val_labels=folders["val"]["labels"],
            options=options, progress=False)
        train_s = time.perf_counter() - t0
        probs, gts, raws = {}, {}, {}
        for split in ("val", "test"):
            segment_paths([folders[split]["images"]], tmp / f"pred_{split}", model,
                          device="cpu", progress=False)
            probs[split] = io.read_image(tmp / f"pred_{split}" / "ovule_probs.tif")[0]
            gts[split] = io.read_labels(folders[split]["labels"] / "ovule.tif")[0]
            raws[split] = io.read_image(folders[split]["images"] / "ovule.tif")[0][0]
        predict_s = time.perf_counter() - t0 - train_s
        rows = {}
        for method, maps in (("useg 3D U-Net", probs),
                             ("raw membrane signal (no learning)",
                              {s: membrane_probs(raws[s]) for s in raws})):
            params, val_are = choose(maps["val"], gts["val"], relative)
            seg = instances_from_probabilities(maps["test"], "boundary", params, spacing=relative)
            rows[method] = {"settings": params.to_dict(), "val_adapted_rand_error": val_are,
                            "test": scores(seg, gts["test"])}
    result = {"benchmark": "3D cells as objects, PlantSeg ovule sample", "command": command_line(),
              "machine": machine, "threads": args.threads, "steps": args.steps,
              "network": NETWORK, "slabs_x": SLABS, "spacing_um": SPACING, "grid": GRID,
              "train_s": train_s, "predict_s": predict_s, "methods": rows, "quick": args.quick}
    lines = ["# 3D cells as objects: PlantSeg ovule sample (train x 0-63, choose x 64-95, "
             "report x 96-127)", "",
             f"Command: `{result['command']}`; CPU {machine['cpu']['model']}, {args.threads} "
             f"thread(s), {machine['date']}. useg: {args.steps} steps, {train_s / 60:.1f} min "
             "training.", "",
             "| method | val adapted Rand (choice) | test adapted Rand | VOI split | VOI merge "
             "| cells found / true | settings |", "|---|---|---|---|---|---|---|"]
    for method, r in rows.items():
        t = r["test"]
        lines.append(f"| {method} | {r['val_adapted_rand_error']:.3f} | "
                     f"{t['adapted_rand_error']:.3f} | {t['voi_split']:.3f} | "
                     f"{t['voi_merge']:.3f} | {t['cells_found']} / {t['cells_true']} | "
                     f"{r['settings']} |")
    lines += ["", "One volume of 50 cells: a smoke-scale 3D check, not a benchmark of accuracy.",
              ""]
    out = ROOT / "runs" / "ovules3d-quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ovules3d.json", result)
    (out / "ovules3d.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Nuclei as objects: H&E glioblastoma nuclei (GBM-40), from annotated images to one label per
nucleus, against a classical baseline and, where it runs offline, a peer.

Run: .venv/bin/python bench/nuclei.py [--quick] [--steps N] [--modes instances three_class]
     [--peer-python /work/peer_venv/bin/python --peer-minutes M]

Data: the shared folder's gbm40_nuclei_he (useg.io.datasets.dataset): 40 RGB patches of
512 x 512 px with every nucleus drawn. Protocol (PROVENANCE.md): train on gbm01-30, choose on
gbm31-35 (validation), report gbm36-40 (test) once. Nothing reported is chosen on the test
images: the checkpoint (the trainer's ``best``), the instance settings (threshold, seed distance,
minimum size; ``useg train`` searches them on the validation images and stores them in the
model file), the target (``--modes``: the one of higher validation object F1 is the answer;
the others are reported beside it as an ablation) and the baseline's settings are all chosen
on gbm31-35.

useg: what a user runs, through the library functions behind the commands: ``useg train``
(``useg.workflows.tune_instances.train_and_tune``) with the label mode of each candidate
target, then ``useg predict --instances`` (``useg.workflows.segment.segment_paths``). Network
(CPU-sized): the ronneberger2015 preset at width 16, depth 3, 252 x 252 input tiles, Adam
lr 1e-3 with the poly schedule, the paper's weight map and augmentation, ``STEPS`` steps
(fixed, so that a rerun reproduces the numbers whatever the load of the machine).

Classical baseline (what a microscopist tries first, scikit-image): hematoxylin channel of a
colour deconvolution (``skimage.color.rgb2hed``), Gaussian smoothing, Otsu threshold per image,
distance transform, seeds at its local maxima at least ``min_distance`` apart, watershed,
objects under ``min_size`` px removed; ``min_distance`` and ``min_size`` chosen on gbm31-35.

Peer: bench/peers/cellpose_nuclei.py run with another Python (``--peer-python``) where Cellpose
installs; trained from scratch on gbm01-30 in ``--peer-minutes`` (default: the training time of
useg's chosen run), with the same number of threads, settings chosen on gbm31-35.

Scores (useg.evaluation.objects.object_scores, pooled over the five test images): object F1,
precision and recall at IoU 0.5, average precision over IoU 0.5:0.95 (DSB 2018), aggregated
Jaccard index, SEG, mean IoU of matched objects.

Results: bench/results/nuclei.json and .md; figure docs/figures/nuclei.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ROOT, command_line, machine_info, publish

from useg import io
from useg.evaluation.objects import object_scores
from useg.io.datasets import dataset
from useg.postprocess.segments import remove_small_objects
from useg.training.options import TrainOptions
from useg.workflows.segment import segment_paths
from useg.workflows.tune_instances import train_and_tune

SPLITS = {"train": range(1, 31), "val": range(31, 36), "test": range(36, 41)}
STEPS = 1500
NETWORK = {"preset": "ronneberger2015", "width": 16, "depth": 3, "tile": (252, 252),
           "optimizer": "adam", "lr": 1e-3}


def link_splits(root: Path, tmp: Path, quick: bool) -> dict[str, dict[str, Path]]:
    """Folders of links to the shared files, one per split (nothing is copied)."""
    folders = {}
    for split, ids in SPLITS.items():
        ids = list(ids)[:3] if quick else list(ids)
        folders[split] = {}
        for kind in ("images", "labels"):
            d = tmp / split / kind
            d.mkdir(parents=True)
            for i in ids:
                (d / f"gbm{i:02d}.tif").symlink_to(root / kind / f"gbm{i:02d}.tif")
            folders[split][kind] = d
    return folders


def pooled_scores(preds: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Object scores of each image and pooled: counts summed for F1, precision and recall;
    AP, AJI, SEG and mean matched IoU averaged over images."""
    per = {name: object_scores(preds[name], refs[name]) for name in refs}
    tp = sum(s["object_f1"][0.5]["tp"] for s in per.values())
    fp = sum(s["object_f1"][0.5]["fp"] for s in per.values())
    fn = sum(s["object_f1"][0.5]["fn"] for s in per.values())
    mean = {k: float(np.mean([s[k] for s in per.values()]))
            for k in ("average_precision", "aji", "seg", "mean_matched_iou")}
    return {
        "f1": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1), "tp": tp, "fp": fp, "fn": fn, **mean,
        "objects_found": int(sum(s["n_pred"] for s in per.values())),
        "objects_true": int(sum(s["n_gt"] for s in per.values())),
        "per_image": {name: {"f1": s["object_f1"][0.5]["f1"], "ap": s["average_precision"],
                             "aji": s["aji"]} for name, s in per.items()},
    }


def read_split(folders: dict[str, Path]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    images, labels = {}, {}
    for path in sorted(folders["images"].iterdir()):
        images[path.stem] = io.read_image(path)[0]
        labels[path.stem] = io.read_labels(folders["labels"] / path.name)[0]
    return images, labels


# ----------------------------------------------------------------------------------------------
# useg


def run_useg(mode: str, folders, tmp: Path, args) -> dict[str, Any]:
    options = TrainOptions(
        **{k: v for k, v in NETWORK.items()}, iterations=args.steps, label_mode=mode,
        val_every=max(1, args.steps // 10), checkpoint_every=max(1, args.steps // 5),
        seed=args.seed, workers=1, device="cpu", precision="auto")
    run_dir = tmp / f"run_{mode}"
    t0 = time.perf_counter()
    model, entry = train_and_tune(
        run_dir, images=folders["train"]["images"], labels=folders["train"]["labels"],
        val_images=folders["val"]["images"], val_labels=folders["val"]["labels"],
        options=options, progress=False)
    train_s = time.perf_counter() - t0
    out = {}
    for split in ("val", "test"):
        t1 = time.perf_counter()
        segment_paths([folders[split]["images"]], tmp / f"pred_{mode}_{split}", model,
                      instances=True, device="cpu", progress=False, write_probabilities=False)
        out[f"{split}_predict_s"] = time.perf_counter() - t1
    return {"mode": mode, "model": str(model), "train_s": train_s, "instance_settings": entry,
            "val_object_f1": entry["validation"]["object_f1"] if entry else None, **out,
            "pred_dirs": {s: str(tmp / f"pred_{mode}_{s}") for s in ("val", "test")}}


def read_predictions(folder: Path, names) -> dict[str, np.ndarray]:
    return {n: io.read_labels(folder / f"{n}_instances.tif")[0] for n in names}


# ----------------------------------------------------------------------------------------------
# classical baseline

CLASSICAL_GRID = {"min_distance": (3, 5, 7, 9, 12), "min_size": (0, 30, 60, 120)}


def classical(image: np.ndarray, min_distance: int, min_size: int) -> np.ndarray:
    """Hematoxylin, Otsu, distance-transform watershed (scikit-image)."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import relabel_sequential, watershed

    rgb = np.moveaxis(image, 0, -1)
    hema = gaussian(rgb2hed(rgb)[..., 0], sigma=1.0)
    mask = hema > threshold_otsu(hema)
    mask = ndi.binary_fill_holes(mask)
    dist = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(mask)[0],
                           exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=mask)
    if min_size:  # useg's: skimage renamed this option in 0.26
        labels = remove_small_objects(labels, min_size)
    return relabel_sequential(labels)[0]


def run_classical(val, test) -> dict[str, Any]:
    t0 = time.perf_counter()
    best = None
    for d in CLASSICAL_GRID["min_distance"]:
        for s in CLASSICAL_GRID["min_size"]:
            preds = {n: classical(img, d, s) for n, img in val[0].items()}
            f1 = pooled_scores(preds, val[1])["f1"]
            if best is None or f1 > best[0]:
                best = (f1, d, s)
    f1, d, s = best
    test_preds = {n: classical(img, d, s) for n, img in test[0].items()}
    return {"settings": {"min_distance": d, "min_size": s}, "val_object_f1": f1,
            "grid": {k: list(v) for k, v in CLASSICAL_GRID.items()},
            "seconds": time.perf_counter() - t0, "test": pooled_scores(test_preds, test[1]),
            "test_predictions": test_preds}


# ----------------------------------------------------------------------------------------------
# peer


def run_peer(args, folders, tmp: Path, test) -> dict[str, Any]:
    if not args.peer_python:
        return {"ran": False, "why": "no --peer-python given (see bench/peers/README.md)"}
    out = tmp / "peer"
    script = ROOT / "bench" / "peers" / "cellpose_nuclei.py"
    cmd = [args.peer_python, str(script), "--minutes", str(args.peer_minutes),
           "--threads", str(args.threads), "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        return {"ran": False, "why": done.stderr.strip().splitlines()[-1:] or ["failed"],
                "command": " ".join(cmd)}
    record = json.loads((out / "peer.json").read_text())
    preds = read_predictions(out, test[1])
    return {"ran": True, "command": " ".join(cmd), "seconds": seconds, "record": record,
            "test": pooled_scores(preds, test[1]), "test_predictions": preds}


# ----------------------------------------------------------------------------------------------


def figure(image, methods: dict[str, np.ndarray], ref, name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    panels = [("image " + name, None)] + list(methods.items()) + [("ground truth", ref)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.6))
    rgb = np.moveaxis(image, 0, -1)
    for ax, (title, labels) in zip(axes, panels, strict=True):
        ax.imshow(rgb)
        if labels is not None:
            edge = find_boundaries(labels, mode="inner")
            overlay = np.zeros((*labels.shape, 4))
            overlay[edge] = (0.0, 1.0, 0.2, 1.0)
            ax.imshow(overlay)
            title = f"{title}: {int(labels.max())} objects"
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _row(name: str, val_f1, s: dict, seconds) -> str:
    val = "" if val_f1 is None else f"{val_f1:.3f}"
    return (f"| {name} | {val} | {s['f1']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | "
            f"{s['average_precision']:.3f} | {s['aji']:.3f} | {s['seg']:.3f} | "
            f"{s['mean_matched_iou']:.3f} | {s['objects_found']} / {s['objects_true']} | "
            f"{seconds / 60:.1f} |")


def markdown(result: dict) -> str:
    lines = [
        "# Nuclei as objects: GBM-40 H&E (train gbm01-30, choose gbm31-35, report gbm36-40)", "",
        f"Command: `{result['command']}`; CPU {result['machine']['cpu']['model']}, "
        f"{result['threads']} thread(s), {result['machine']['date']}.", "",
        "Test scores pooled over gbm36-40 (F1, precision, recall: counts summed; AP over IoU "
        "0.5:0.95, AJI, SEG, mean matched IoU: mean over images). Every setting was chosen on "
        "gbm31-35 ('val F1': object F1@0.5 there).", "",
        "| method | val F1@0.5 | F1@0.5 | precision | recall | AP 0.5:0.95 | AJI | SEG "
        "| matched IoU | objects found / true | minutes |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    chosen = result["useg_chosen_mode"]
    for r in result["useg"]:
        mark = " (chosen on validation)" if r["mode"] == chosen else " (ablation)"
        lines.append(_row(f"useg, --label-mode {r['mode']}{mark}", r["val_object_f1"], r["test"],
                          r["train_s"] + r["test_predict_s"]))
    c = result["classical"]
    lines.append(_row(f"classical: hematoxylin, Otsu, watershed {c['settings']}",
                      c["val_object_f1"], c["test"], c["seconds"]))
    p = result["peer"]
    if p.get("ran"):
        r = p["record"]
        lines.append(_row(f"peer: {r.get('peer', 'cellpose')} {r.get('version', '')}, from "
                          f"scratch, {r['training']['epochs']} epochs in "
                          f"{r['training']['budget_minutes']} min",
                          r["selection"]["val_f1"], p["test"], p["seconds"]))
    else:
        lines += ["", f"Peer not run: {p['why']}"]
    lines += ["", "Minutes: wall time of training and predicting (useg), of the whole pipeline "
              "with its choice of settings (classical), of the peer's process; the machine was "
              "shared with another benchmark, one thread each.", "",
              "useg instance settings chosen on validation: " + "; ".join(
        f"{r['mode']}: {r['instance_settings']['params']}" for r in result["useg"]
        if r["instance_settings"]), "", "Figure: `docs/figures/nuclei.png`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers meaningless)")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps ({STEPS})")
    parser.add_argument("--modes", nargs="+", default=["instances", "three_class"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peer-python", default=None)
    parser.add_argument("--peer-minutes", type=float, default=None,
                        help="the peer's training budget (default: useg's training time)")
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.quick else STEPS)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    machine = machine_info("scikit-image")
    root = dataset("gbm40_nuclei_he")
    with tempfile.TemporaryDirectory(prefix="useg-nuclei-") as tmp_name:
        tmp = Path(tmp_name)
        folders = link_splits(root, tmp, args.quick)
        val, test = read_split(folders["val"]), read_split(folders["test"])
        runs = []
        for mode in args.modes:
            r = run_useg(mode, folders, tmp, args)
            preds = read_predictions(Path(r["pred_dirs"]["test"]), test[1])
            r["test"] = pooled_scores(preds, test[1])
            r["test_predictions"] = preds
            runs.append(r)
            print(f"useg {mode}: val F1 {r['val_object_f1']:.3f}, test F1 "
                  f"{r['test']['f1']:.3f}, AP {r['test']['average_precision']:.3f}, "
                  f"train {r['train_s'] / 60:.1f} min", flush=True)
        chosen = max(runs, key=lambda r: r["val_object_f1"] or 0.0)
        base = run_classical(val, test)
        print(f"classical: val F1 {base['val_object_f1']:.3f}, test F1 {base['test']['f1']:.3f}",
              flush=True)
        if args.peer_minutes is None:  # the same budget as useg's chosen run
            args.peer_minutes = round(chosen["train_s"] / 60, 1)
        peer = run_peer(args, folders, tmp, test)
        name = sorted(test[1])[0]
        methods = {f"useg ({chosen['mode']})": chosen["test_predictions"][name],
                   "classical": base["test_predictions"][name]}
        if peer.get("ran"):
            methods["peer"] = peer["test_predictions"][name]
        out_fig = (ROOT / "runs" / "nuclei-quick" if args.quick else ROOT / "docs" / "figures")
        figure(test[0][name], methods, test[1][name], name, out_fig / "nuclei.png")
    for r in runs + [base, peer]:
        r.pop("test_predictions", None)
        r.pop("pred_dirs", None)
    result = {"benchmark": "nuclei instances, GBM-40 H&E", "command": command_line(),
              "machine": machine, "threads": args.threads, "quick": args.quick,
              "steps": args.steps, "network": NETWORK, "seed": args.seed,
              "splits": {k: [f"gbm{i:02d}" for i in v] for k, v in SPLITS.items()},
              "useg": runs, "useg_chosen_mode": chosen["mode"], "classical": base, "peer": peer}
    out = ROOT / "runs" / "nuclei-quick" if args.quick else RESULTS
    publish(out, "nuclei", result, markdown(result))


if __name__ == "__main__":
    sys.exit(main())

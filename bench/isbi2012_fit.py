"""ISBI 2012: how well a recipe's networks fit the slices they were trained on (diagnostic).

Run: .venv/bin/python bench/isbi2012_fit.py [--recipe NAME] [--seeds 0 1 2] [--unregularised]

An exploration for issue #18, not a recipe choice. Every recipe bench/isbi2012_recipe.py tried
since ``-4500`` stops near the same validation pixel error, and averaging seeds' maps does not
lower it (bench/isbi2012_ensemble.py), so the spread between networks is not what holds it up.
This bench asks whether the held-out slices are simply harder to fit than the training slices
(over-fitting) or whether the networks do not fit their own training slices better either:

* each kept model of ``--recipe`` (bench/isbi2012_recipe.py's runs and models): the pixel error
  of its interior map (8-fold TTA) on the training slices 0..14 and on the validation slices
  15..19 at every threshold of a grid. A row gives each set's smallest pixel error with its
  threshold (a diagnostic, not an operating point: the thresholds differ between sets and are
  chosen on the slices scored) and the pixel error at 0.5, the per-slice pixel errors of the
  training slices at the validation set's best threshold, and the mean training loss over the
  last tenth of its run (from the run's log under runs/, when that is still there);
* the pixel error that moving every drawn membrane edge by one pixel would cost on each set
  (the drawn membranes dilated, and eroded, by one pixel against themselves; mean of the two),
  so that each network's pixel error can be read in those units too: the training slices have
  more membrane edge per pixel than the validation slices, so the same placement of edges costs
  more pixel error there;
* ``--unregularised``: the same recipe and seed 0 trained again with augmentation and dropout
  off, scored the same way: does the network fit its training slices when nothing holds it
  back? Its run is kept in bench/results/isbi2012_fit_runs/ (its model under runs/, not
  committed), so publishing again does not train it again.

Nothing here looks at the test slices.

Results: bench/results/isbi2012_fit.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ROOT, command_line, cpu_line, keep_run, kept_run, machine_info, publish
from isbi2012 import TRAIN_SLICES, VAL_SLICES, isbi_root, load_slices, samples
from isbi2012_ensemble import kept
from isbi2012_recipe import CANDIDATES, MODELS, PRECISION, _predicted, config_of
from scipy import ndimage as ndi

from useg.evaluation.pixel import pixel_error
from useg.nets.checkpoint import load_model
from useg.training.run_folder import LOG, read_log

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(4, 17))  # 0.20 .. 0.80
DEFAULT_RECIPE = "dice-wide-w0-3-flat-cubic-4500-half-dice"
# What --unregularised turns off: every augmentation (a tile is cut as it is) and dropout.
NO_AUGMENT = {"elastic": False, "rotate": False, "flip_probability": 0.0, "scale": [1.0, 1.0],
              "gray": False}
FIT_RUNS = RESULTS / "isbi2012_fit_runs"
FIT_MODELS = ROOT / "runs" / "isbi2012_fit"


def pixel_errors(probs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pixel error of ``probs > t`` against ``truth`` at every threshold of the grid, the
    smallest with its threshold, and the value at 0.5."""
    curve = {t: pixel_error(probs > t, truth) for t in THRESHOLDS}
    best = min(curve, key=curve.get)
    return {"best": curve[best], "best_threshold": best, "at_0.5": curve[0.5],
            "curve": {f"{t:g}": v for t, v in curve.items()}}


def edge_shift_cost(truth: np.ndarray) -> float:
    """Pixel error of the drawn membranes (``~truth``, slice by slice) dilated by one pixel, and
    eroded by one pixel (4-connected), against themselves: the mean of the two."""
    cross = ndi.generate_binary_structure(2, 1)
    errors = [pixel_error(op(~t, cross), ~t) for t in truth
              for op in (ndi.binary_dilation, ndi.binary_erosion)]
    return float(np.mean(errors))


def loss_at_end(folder: Path) -> float | None:
    """Mean training loss over the last tenth of the steps logged in the run folder ``folder``
    (the trainer's log), or None without one."""
    losses = [row["loss"] for row in read_log(folder / LOG) if "loss" in row]
    return float(np.mean(losses[-max(len(losses) // 10, 1):])) if losses else None


def fit_row(model, root: Path, label: str, folder: Path) -> dict[str, Any]:
    """A model's pixel errors on the training and the validation slices, and the training loss
    at the end of its run (from its run folder, when that is still there)."""
    train_p, train_t = _predicted(model, root, TRAIN_SLICES, quick=False)
    val_p, val_t = _predicted(model, root, VAL_SLICES, quick=False)
    row = {"model": label, "checkpoint_step": int(model.meta.get("step", 0)),
           "train_loss_at_end": loss_at_end(folder),
           "train": pixel_errors(train_p, train_t), "validation": pixel_errors(val_p, val_t)}
    at = row["validation"]["best_threshold"]
    row["train_per_slice_at_val_best"] = {
        str(i): pixel_error(p > at, t) for i, p, t in zip(TRAIN_SLICES, train_p, train_t,
                                                           strict=True)}
    print(f"{label}: train {row['train']['best']:.4f} (at {row['train']['best_threshold']:g}), "
          f"validation {row['validation']['best']:.4f} (at {at:g})", flush=True)
    return row


def unregularised(recipe: str, root: Path) -> dict[str, Any]:
    """``recipe``'s seed 0 trained with augmentation and dropout off (kept once trained)."""
    cfg = config_of(recipe, 0, quick=False)
    cfg.augment = dict(NO_AUGMENT)
    cfg.net = {**cfg.net, "dropout": 0.0}
    identity = {"recipe": recipe, "config": cfg.to_dict()}
    path = FIT_RUNS / f"unregularised_{recipe}_seed0.json"
    folder = FIT_MODELS / f"unregularised_{recipe}_seed0"
    run = kept_run(path, identity)
    if run is not None:
        return run
    images, labels = load_slices(root, TRAIN_SLICES)
    val_images, val_labels = load_slices(root, VAL_SLICES)
    shutil.rmtree(folder, ignore_errors=True)  # a run interrupted before it was kept
    from useg.training.loop import train

    print(f"{recipe} seed 0 without augmentation and dropout: training {cfg.iterations} steps",
          flush=True)
    t0 = time.perf_counter()
    train(cfg, samples(images, labels, cfg, [f"train/{i}.png" for i in TRAIN_SLICES]), folder,
          progress=False, val_samples=samples(val_images, val_labels, cfg,
                                              [f"train/{i}.png" for i in VAL_SLICES]))
    train_s = time.perf_counter() - t0
    # The last step's network: the question is how far training gets on its own slices, and the
    # checkpoint validation would pick answers a different one.
    last = load_model(folder / "last.safetensors", device="cpu")
    run = {**fit_row(last, root, f"{recipe} seed 0, no augmentation, no dropout (last step)",
                     folder),
           "train_s": train_s, "config": cfg.to_dict(), "command": command_line(),
           "machine": machine_info()}
    keep_run(path, identity, run)
    return run


def _cell(scores: dict[str, Any], shift: float) -> str:
    return (f"{scores['best']:.4f} ({scores['best_threshold']:g}) / {scores['at_0.5']:.4f} / "
            f"{scores['best'] / shift:.2f}")


def markdown(report: dict[str, Any]) -> str:
    shift = report["edge_shift_cost"]
    lines = [f"# ISBI 2012: how {report['recipe']}'s networks fit their training slices", "",
             f"Command: `{report['command']}`; CPU {cpu_line(report['machine'])}.", "",
             "Pixel error of each network's interior map (8-fold TTA): the smallest over "
             "thresholds 0.20..0.80 with the threshold in brackets (chosen on the slices scored: "
             "a diagnostic, not an operating point), then at 0.5, then the smallest in units of "
             "what moving every drawn membrane edge by one pixel costs on those slices "
             f"(training slices: {shift['train']:.4f}, validation slices: "
             f"{shift['validation']:.4f}). Training slices 0..14, "
             "validation slices 15..19; no test slices.", "",
             "| network | checkpoint step | training loss, last tenth of the run | training "
             "slices: smallest (at) / at 0.5 / in one-pixel shifts | validation slices: the "
             "same |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        loss = r.get("train_loss_at_end")
        lines.append(f"| {r['model']} | {r['checkpoint_step']} | "
                     f"{'-' if loss is None else f'{loss:.3f}'} | "
                     f"{_cell(r['train'], shift['train'])} | "
                     f"{_cell(r['validation'], shift['validation'])} |")
    lines += ["", "Per training slice, at each network's best validation threshold:", "",
              "| network | " + " | ".join(str(i) for i in TRAIN_SLICES) + " |",
              "|---|" + "---|" * len(TRAIN_SLICES)]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(
            f"{v:.3f}" for v in r["train_per_slice_at_val_best"].values()) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=list(CANDIDATES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--unregularised", action="store_true",
                        help="also train seed 0 without augmentation and dropout (about as "
                             "long as the recipe's own training) and score it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = isbi_root()
    shift = {name: edge_shift_cost(np.stack([lab > 0 for lab in load_slices(root, slices)[1]]))
             for name, slices in (("train", TRAIN_SLICES), ("validation", VAL_SLICES))}
    rows = []
    for seed in args.seeds:
        run = kept(args.recipe, seed)
        model = load_model(ROOT / run["model_file"], device="cpu")
        rows.append(fit_row(model, root, f"{args.recipe} seed {seed} (kept checkpoint)",
                            MODELS / f"{args.recipe}_seed{seed}"))
    if args.unregularised:
        rows.append(unregularised(args.recipe, root))
    report = {"benchmark": "isbi2012_fit", "command": command_line(), "machine": machine_info(),
              "recipe": args.recipe, "candidate": CANDIDATES[args.recipe],
              "precision": PRECISION, "thresholds": THRESHOLDS, "edge_shift_cost": shift,
              "rows": rows,
              "unregularised_changes": {"augment": NO_AUGMENT, "dropout": 0.0}
              if args.unregularised else None}
    publish(RESULTS, "isbi2012_fit", report, markdown(report))


if __name__ == "__main__":
    main()

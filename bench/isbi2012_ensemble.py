"""ISBI 2012: what averaging the maps of a recipe's seeds would give, on validation only.

Run: .venv/bin/python bench/isbi2012_ensemble.py [--recipe NAME] [--subsets 0,1 0,1,2]

An exploration for issue #18, not a recipe choice: bench/isbi2012_recipe.py has trained
``--recipe``'s seeds (its kept runs and models). Each subset of those seeds is an ensemble:
the mean of its models' interior maps (each already averaged over the 8 flips and quarter
turns) on the validation slices 15..19 goes through the same search from map to cells as every
run there (bench/isbi2012_segment.py), scored by pixel + adapted Rand error at one operating
point. The single seeds' rows are their kept runs' validation scores (the same models and
search). Nothing here looks at the test slices. Training an ensemble costs the sum of its
seeds' training; useg packages one network per model file, so an ensemble is not something a
user can train or run with useg today.

Results: bench/results/isbi2012_ensemble.json and .md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ROOT, command_line, cpu_line, kept_run, machine_info, publish
from isbi2012 import VAL_SLICES, isbi_root, load_slices, predict_slices, prediction_tile
from isbi2012_recipe import CANDIDATES, PRECISION, RUNS_FOLDER, run_file, run_identity
from isbi2012_segment import best_per_way, best_way, search

from useg.nets.checkpoint import load_model


def kept(recipe: str, seed: int) -> dict[str, Any]:
    """The run bench/isbi2012_recipe.py kept for this seed of ``recipe`` as defined now."""
    path = run_file(RESULTS / RUNS_FOLDER, recipe, seed)
    run = kept_run(path, run_identity(recipe, seed, quick=False))
    if run is None:
        raise SystemExit(f"{path}: no run kept of {recipe} as defined now; train it with "
                         f"bench/isbi2012_recipe.py --candidates {recipe} --seeds {seed}")
    return run


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# ISBI 2012: ensembles of {report['recipe']}'s seeds, validation only", "",
             f"Command: `{report['command']}`; CPU {cpu_line(report['machine'])}.", "",
             "Each row: the mean of the seeds' maps (8-fold TTA each) on validation slices "
             "15..19, through bench/isbi2012_segment.py's search, at its best way and settings "
             "(one operating point). Single seeds: their kept runs. Not a recipe choice; no "
             "test slices.", "",
             "| seeds | way | val pixel | val adapted Rand | val sum | training, min (sum) |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        v = r["validation"]
        lines.append(f"| {','.join(map(str, r['seeds']))} | {r['way']} | "
                     f"{v['pixel_error']:.4f} | {v['adapted_rand_error']:.4f} | "
                     f"{v['criterion']:.4f} | {r['train_min']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="dice-wide-w0-3-flat-cubic", choices=list(CANDIDATES))
    parser.add_argument("--subsets", nargs="+", default=["0,1", "0,1,2"],
                        help="seed subsets, each comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subsets = [sorted({int(s) for s in sub.split(",")}) for sub in args.subsets]
    seeds = sorted({s for sub in subsets for s in sub})
    runs = {s: kept(args.recipe, s) for s in seeds}
    images, labels = load_slices(isbi_root(), VAL_SLICES)
    truth = np.stack([lab > 0 for lab in labels])
    maps = {}
    for s in seeds:
        model = load_model(ROOT / runs[s]["model_file"], device="cpu")
        tile = prediction_tile(model.meta["config"], images[0].shape[1:])
        t0 = time.perf_counter()
        maps[s] = predict_slices(model, images, tile, PRECISION)
        print(f"seed {s}: maps in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = [{"seeds": [s], "way": runs[s]["way"], "settings": runs[s]["settings"],
             "validation": runs[s]["validation"], "train_min": runs[s]["train_s"] / 60,
             "from": "kept run"} for s in seeds]
    for sub in subsets:
        if len(sub) < 2:
            continue
        t0 = time.perf_counter()
        best = best_per_way(search(np.mean([maps[s] for s in sub], axis=0), truth))
        way = best_way(best)
        rows.append({"seeds": sub, "way": way, "settings": best[way]["settings"],
                     "validation": {k: best[way][k] for k in
                                    ("pixel_error", "adapted_rand_error", "criterion")},
                     "train_min": sum(runs[s]["train_s"] for s in sub) / 60,
                     "search_s": time.perf_counter() - t0, "from": "mean of the seeds' maps"})
        v = rows[-1]["validation"]
        print(f"seeds {sub}: {way}: pixel {v['pixel_error']:.4f}, adapted Rand "
              f"{v['adapted_rand_error']:.4f}", flush=True)
    report = {"benchmark": "isbi2012_ensemble", "command": command_line(),
              "machine": machine_info(), "recipe": args.recipe,
              "candidate": CANDIDATES[args.recipe], "precision": PRECISION, "rows": rows,
              "note": "training minutes are each seed's as kept (threads differ between seeds)"}
    publish(RESULTS, "isbi2012_ensemble", report, markdown(report))


if __name__ == "__main__":
    main()

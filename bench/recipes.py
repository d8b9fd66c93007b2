"""The wall time of each training recipe, run as a user runs it, with the machine recorded.

Run: .venv/bin/python bench/recipes.py [--recipes cpu-fast gpu-paper] [--ndim 2 3] [--threads 2]
     [--estimate-only gpu-paper]

For every recipe and dimension: ``useg train --recipe NAME`` (a subprocess, exactly the user's
command) on built-in synthetic touching cells (2D: six 512x512 training images and two for
validation; 3D: four 64x128x128 volumes and one for validation), into a fresh folder. Recorded
per run: the wall time of the whole command, the steps it ran, the seconds per step the trainer
estimated from its first timed steps, the best validation scores and the CPU. A recipe named
in ``--estimate-only`` (one whose whole run would take hours here) runs only a few steps
(``--iterations``): it records the trainer's seconds per step and the time the whole run would
take at that pace, marked as an estimate, not a wall time.
``useg.training.recipes`` cites these figures; run this on a quiet machine (nothing else
busy), since the time of a step depends on what else shares the cores.

Results: bench/results/recipes.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, command_line, cpu_line, machine_info, write_json

from useg.training.recipes import RECIPES, recipe_settings
from useg.workflows.synthetic import make_dataset

# The built-in data of each dimension: (training images, validation images, shape).
DATA = {2: (6, 2, (512, 512)), 3: (4, 1, (64, 128, 128))}


def _data(root: Path, ndim: int) -> tuple[Path, Path]:
    """The built-in data of ``ndim`` under ``root``, made by the first recipe that needs it."""
    n_train, n_val, shape = DATA[ndim]
    if not root.exists():
        make_dataset(root / "train", n_images=n_train, shape=shape, seed=1)
        make_dataset(root / "val", n_images=n_val, shape=shape, seed=2)
    return root / "train", root / "val"


# The trainer's estimate after its first timed steps (useg.training.loop), on stdout.
ESTIMATE = re.compile(r"^(\d+) steps at ([\d.]+(?:e-?\d+)?) s/step", re.MULTILINE)


def _log_summary(log: Path) -> tuple[int, dict[str, float]]:
    """The last logged step and the best validation scores of the run's log."""
    with open(log) as f:
        rows = list(csv.DictReader(f))
    best: dict[str, float] = {}
    for key, pick in (("val_iou", max), ("val_pixel_error", min), ("val_adapted_rand", min)):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            best[key] = pick(values)
    return (int(rows[-1]["step"]) if rows else 0), best


# Steps of an estimate-only run: a warm-up step and the trainer's timed steps, with room.
ESTIMATE_STEPS = 8


def run_recipe(name: str, ndim: int, threads: int, tmp: Path, estimate_only: bool) -> dict:
    train, val = _data(tmp / f"data{ndim}d", ndim)
    out = tmp / f"{name}_{ndim}d"
    command = [str(Path(sys.executable).parent / "useg"), "train", "--images",
               str(train / "images"), "--labels", str(train / "labels"), "--val-images",
               str(val / "images"), "--val-labels", str(val / "labels"), "--recipe", name,
               "--out", str(out), "--quiet"]
    if estimate_only:
        command += ["--iterations", str(ESTIMATE_STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    wall = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    if done.returncode != 0:
        # Recorded, not raised, so that the other recipes' measurements are kept.
        print(f"{name} {ndim}D failed ({done.returncode}): {done.stderr.strip()}", flush=True)
        return {"recipe": name, "ndim": ndim, "failed": done.stderr.strip()[-2000:]}
    steps, best = _log_summary(out / "log.csv")
    estimate = ESTIMATE.search(done.stdout)
    config = json.loads((out / "config.json").read_text())
    per_step = float(estimate.group(2)) if estimate else None
    recipe_steps = recipe_settings(name, ndim)["iterations"]
    return {
        "recipe": name, "ndim": ndim, "whole_run": not estimate_only,
        "wall_s": wall, "steps": steps, "recipe_steps": recipe_steps,
        "s_per_step": per_step,
        "estimated_steps_s": None if per_step is None else per_step * recipe_steps,
        "data": {"train": DATA[ndim][0], "validation": DATA[ndim][1],
                 "shape": list(DATA[ndim][2])},
        "network": config.get("net"), "tile": config.get("tile"),
        # What --precision auto resolved to on this CPU (bf16 where it has bf16 instructions).
        "precision": config.get("precision"),
        "best_validation": best,
        "command": " ".join(["useg", *command[1:]]).replace(str(tmp), "DATA"),
        "notes": done.stdout.strip().splitlines()[-8:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["cpu-fast"], choices=sorted(RECIPES))
    parser.add_argument("--ndim", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--estimate-only", nargs="*", default=[], choices=sorted(RECIPES),
                        help=f"recipes to run for {ESTIMATE_STEPS} steps only, recording the "
                             "seconds per step and the estimated time of the whole run")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    machine = machine_info()
    runs = []
    with tempfile.TemporaryDirectory(prefix="useg-recipes-") as tmp:
        for name in args.recipes:
            for ndim in args.ndim:
                print(f"{name} {ndim}D ...", flush=True)
                run = run_recipe(name, ndim, args.threads, Path(tmp), name in args.estimate_only)
                runs.append({**run, "bench_command": command_line(), "date": machine["date"],
                             "cpu": cpu_line(machine), "threads": args.threads})
    # The recipes not run now keep their earlier measurements, each with its own command.
    path, new = RESULTS / "recipes.json", {(r["recipe"], r["ndim"]) for r in runs}
    earlier = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for r in earlier["runs"]:
        r.setdefault("bench_command", earlier.get("command"))
        r.setdefault("date", earlier.get("machine", {}).get("date"))
        r.setdefault("cpu", cpu_line(earlier["machine"]) if "machine" in earlier else None)
        r.setdefault("threads", earlier.get("threads"))
    runs = [r for r in earlier["runs"] if (r["recipe"], r["ndim"]) not in new] + runs
    runs.sort(key=lambda r: (list(RECIPES).index(r["recipe"]), r["ndim"]))
    result = {"benchmark": "training recipes, wall time as run by a user",
              "command": command_line(), "machine": machine, "threads": args.threads,
              "runs": runs}
    write_json(path, result)
    lines = ["# Training recipes: wall time", "",
             "Each row with the command that measured it, its date, CPU and torch threads.", "",
             "| recipe | dim | steps run | s/step | wall min | steps alone, min "
             "| best validation | precision | measured by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "failed" in r:
            lines.append(f"| {r['recipe']} | {r['ndim']}D | failed: {r['failed'][-200:]} |")
            continue
        rate = "-" if r["s_per_step"] is None else f"{r['s_per_step']:.3f}"
        alone = ("-" if r["estimated_steps_s"] is None
                 else f"{r['estimated_steps_s'] / 60:.1f} (est., {r['recipe_steps']} steps)")
        wall = f"{r['wall_s'] / 60:.1f}" if r["whole_run"] else "- (estimate only)"
        scores = json.dumps(r["best_validation"]) if r["whole_run"] else "-"
        lines.append(f"| {r['recipe']} | {r['ndim']}D | {r['steps']} | {rate} | {wall} | "
                     f"{alone} | {scores} | {r.get('precision') or 'not recorded'} | "
                     f"`{r['bench_command']}`, {r['date']}, {r['cpu']}, "
                     f"{r['threads']} thread(s) |")
    (RESULTS / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'recipes.json'} ({ROOT.name})")


if __name__ == "__main__":
    main()

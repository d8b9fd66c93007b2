"""The wall time of each training recipe, run as a user runs it, with the machine recorded.

Run: .venv/bin/python bench/recipes.py [--recipes cpu-fast] [--ndim 2 3] [--threads 2]

For every recipe and dimension: ``useg train --recipe NAME`` (a subprocess, exactly the user's
command) on built-in synthetic touching cells (2D: six 512x512 training images and two for
validation; 3D: four 64x128x128 volumes and one for validation), into a fresh folder. Recorded
per run: the wall time of the whole command, the steps it ran, the seconds per step the trainer
estimated from its first timed steps, the best validation scores and the CPU.
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

from useg.training.recipes import RECIPES
from useg.workflows.synthetic import make_dataset

# The built-in data of each dimension: (training images, validation images, shape).
DATA = {2: (6, 2, (512, 512)), 3: (4, 1, (64, 128, 128))}


def _data(root: Path, ndim: int) -> tuple[Path, Path]:
    n_train, n_val, shape = DATA[ndim]
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


def run_recipe(name: str, ndim: int, threads: int, tmp: Path) -> dict:
    train, val = _data(tmp / f"data{ndim}d", ndim)
    out = tmp / f"{name}_{ndim}d"
    command = [str(Path(sys.executable).parent / "useg"), "train", "--images",
               str(train / "images"), "--labels", str(train / "labels"), "--val-images",
               str(val / "images"), "--val-labels", str(val / "labels"), "--recipe", name,
               "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    wall = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    if done.returncode != 0:
        raise SystemExit(f"{name} {ndim}D failed ({done.returncode}): {done.stderr.strip()}")
    steps, best = _log_summary(out / "log.csv")
    estimate = ESTIMATE.search(done.stdout)
    config = json.loads((out / "config.json").read_text())
    return {
        "recipe": name, "ndim": ndim, "wall_s": wall, "steps": steps,
        "s_per_step": float(estimate.group(2)) if estimate else None,
        "data": {"train": DATA[ndim][0], "validation": DATA[ndim][1],
                 "shape": list(DATA[ndim][2])},
        "network": config.get("net"), "tile": config.get("tile"),
        "best_validation": best,
        "command": " ".join(["useg", *command[1:]]).replace(str(tmp), "DATA"),
        "notes": done.stdout.strip().splitlines()[-8:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["cpu-fast"], choices=sorted(RECIPES))
    parser.add_argument("--ndim", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    machine = machine_info()
    runs = []
    with tempfile.TemporaryDirectory(prefix="useg-recipes-") as tmp:
        for name in args.recipes:
            for ndim in args.ndim:
                print(f"{name} {ndim}D ...", flush=True)
                runs.append(run_recipe(name, ndim, args.threads, Path(tmp)))
    result = {"benchmark": "training recipes, wall time as run by a user",
              "command": command_line(), "machine": machine, "threads": args.threads,
              "runs": runs}
    write_json(RESULTS / "recipes.json", result)
    lines = ["# Training recipes: wall time", "", f"Command: `{command_line()}`", "",
             f"Machine: {cpu_line(machine)}, {args.threads} thread(s).", "",
             "| recipe | dim | steps | s/step | wall min | best validation |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        rate = "-" if r["s_per_step"] is None else f"{r['s_per_step']:.3f}"
        lines.append(f"| {r['recipe']} | {r['ndim']}D | {r['steps']} | {rate} | "
                     f"{r['wall_s'] / 60:.1f} | {json.dumps(r['best_validation'])} |")
    (RESULTS / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'recipes.json'} ({ROOT.name})")


if __name__ == "__main__":
    main()

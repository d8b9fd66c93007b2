"""Seconds per training step of the CPU recipes with 0, 1 or 2 loader workers.

Run: .venv/bin/python bench/loader_workers.py [--recipe cpu-best] [--ndim 2 3] [--workers 0 1 2]
         [--steps 60] [--repeats 3] [--threads 2]

The question ``useg train --workers`` leaves to the user: make the training tiles in loader
processes (``--workers N``), beside the training step, or in the training process itself
(``--workers 0``), one after the other. A worker hides the time a tile takes to make, but on a
machine with few cores it takes that time from the cores the step runs on: when it wakes, one
of the step's OpenMP threads is descheduled and the others wait for it. Which way wins depends
on how much a tile costs (elastic deformation in 2D; a 3D tile without augmentation is little
more than a copy), so it is measured per recipe and dimension, as ``useg train --recipe``
runs them, in one process (``useg.training.loop.train`` with the recipe's configuration), on
built-in synthetic touching cells (2D: six 512x512 images; 3D: four 64x128x128 volumes with
the paper's sparse budget of annotated slices, (z, y, x) = (5, 5, 3)).

Each run trains ``--steps`` steps after ``WARMUP`` and times every step from the end of the
previous one (the loader's wait included); the runs of the worker counts take turns, in
reversed order every other repeat, so that a change of the machine's load falls on all of
them. Reported per case: the mean seconds per step of each run (what a whole run's time scales
with), their median and range over the repeats, their mean relative to the first worker count,
and the share of the step spent waiting for a tile. Run it on a quiet
machine: a second busy process on two cores changes the answer.

Results: bench/results/loader_workers.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, command_line, cpu_line, machine_info, summary, write_json
from sparse3d import slice_positions

from useg.training.from_folders import make_config
from useg.training.loop import train
from useg.training.recipes import RECIPES
from useg.training.samples import load_pairs
from useg.workflows.synthetic import make_dataset

WARMUP = 5
# The built-in data of each dimension: (images, shape, annotated slices per axis or None).
DATA = {2: (6, (512, 512), None), 3: (4, (64, 128, 128), (5, 5, 3))}


def _config(recipe: str, ndim: int, workers: int, steps: int):
    return make_config(ndim, recipe=recipe, iterations=steps + WARMUP, workers=workers,
                       val_every=10**9, checkpoint_every=10**9, log_every=1, device="cpu",
                       seed=0)


def built_in_samples(folder: Path, recipe: str, ndim: int) -> list:
    """The built-in data of ``ndim`` as the recipe's samples (the same for every worker count)."""
    n, shape, budget = DATA[ndim]
    make_dataset(folder, n_images=n, shape=shape, seed=1)
    slices = slice_positions(budget, shape) if budget is not None else None
    return load_pairs(folder / "images", folder / "labels", ndim=ndim, in_channels=1,
                      **_config(recipe, ndim, 0, 1).sample_options(slices))


def one_run(recipe: str, ndim: int, workers: int, steps: int,
            samples: list) -> dict[str, float]:
    """Mean and median seconds per step after the warm-up, and the share spent waiting."""
    cfg = _config(recipe, ndim, workers, steps)
    stamps: dict[int, float] = {}
    waits: dict[int, float] = {}

    def record(step: int, row: dict[str, Any]) -> None:
        stamps[step] = time.perf_counter()
        waits[step] = row["data_wait"]

    with tempfile.TemporaryDirectory() as out:
        train(cfg, samples, Path(out) / "run", progress=False, callback=record)
    times = [stamps[k] - stamps[k - 1] for k in range(WARMUP + 1, steps + WARMUP + 1)]
    return {"mean_s": statistics.fmean(times), "median_s": statistics.median(times),
            "data_wait": waits[steps + WARMUP]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu-best", choices=list(RECIPES))
    ap.add_argument("--ndim", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training step")
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 4, 1
    torch.set_num_threads(args.threads)
    machine = machine_info()
    runs: dict[tuple[int, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as data:
        samples = {ndim: built_in_samples(Path(data) / f"{ndim}d", args.recipe, ndim)
                   for ndim in args.ndim}
        for repeat in range(args.repeats):
            for ndim in args.ndim:
                order = args.workers if repeat % 2 == 0 else args.workers[::-1]
                for workers in order:
                    r = one_run(args.recipe, ndim, workers, args.steps, samples[ndim])
                    runs.setdefault((ndim, workers), []).append(r)
                    print(f"repeat {repeat} {ndim}D workers {workers}: {r['mean_s']:.3f} s/step "
                          f"(median {r['median_s']:.3f}), waiting {r['data_wait']:.1%}",
                          flush=True)
    rows = []
    for (ndim, workers), rs in sorted(runs.items()):
        mean = [r["mean_s"] for r in rs]
        base = statistics.fmean(x["mean_s"] for x in runs[(ndim, args.workers[0])])
        rows.append({"ndim": ndim, "workers": workers, "s_per_step": summary(mean),
                     "median_s_per_step": summary([r["median_s"] for r in rs]),
                     "data_wait": summary([r["data_wait"] for r in rs]),
                     f"relative_to_workers_{args.workers[0]}": statistics.fmean(mean) / base})
    print(f"\nrecipe {args.recipe}, {args.threads} torch threads, {args.steps} timed steps x "
          f"{args.repeats} repeats; {cpu_line(machine)}")
    print(f"{'dim':>3} | {'workers':>7} | {'s/step (min-max)':>22} | "
          f"{'vs ' + str(args.workers[0]):>5} | waiting")
    for r in rows:
        s = r["s_per_step"]
        print(f"{r['ndim']:>2}D | {r['workers']:>7} | {s['median']:.3f} ({s['min']:.3f}-"
              f"{s['max']:.3f}) | {r[f'relative_to_workers_{args.workers[0]}']:5.2f} | "
              f"{r['data_wait']['median']:.1%}")
    if not args.quick:
        write_json(RESULTS / "loader_workers.json", {
            "command": command_line(), "machine": machine, "recipe": args.recipe,
            "threads": args.threads, "steps": args.steps, "warmup": WARMUP,
            "repeats": args.repeats, "data": {f"{k}d": {"images": v[0], "shape": list(v[1]),
                                                       "annotated_slices_zyx": v[2]}
                                              for k, v in DATA.items()},
            "results": rows,
        })


if __name__ == "__main__":
    main()

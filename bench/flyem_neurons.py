"""FlyEM FIB-SEM: neurons from a 3D U-Net trained on the paper's sparse budget, with seeds.

Run: .venv/bin/python bench/flyem_neurons.py [--recipe base] [--seeds 0 1 2] [--quick]

The semi-automated setting of bench/sparse3d.py, with its chosen configuration (same crop of
80 x 160 x 160 voxels, network, steps and data; see its docstring) or another candidate of
bench/flyem_recipe.py (``--recipe``: its network, tile, steps and augmentation; that bench's
test runs keep their boundary maps where this one finds them), and the paper's largest
budget of annotated orthogonal slices, (z, y, x) = (5, 5, 3). Per seed: train on the annotated
slices, predict the boundary probability ``b`` of the crop, then cut the crop into neurons three
ways, as ``useg predict --instances`` of a ``boundary`` model would:

* ``components``: the connected pieces of ``1 - b > t``, boundary voxels given to the nearest
  piece;
* ``distance seeds``: seeds at the maxima of the interior's distance transform
  (``--seed-distance h``), grown over ``b`` through the whole crop;
* ``confident seeds``: the pieces of ``1 - b > s`` (``--seed-threshold s``), grown over ``b``;
* ``distance seeds, merged``: distance seeds, more of them (a smaller ``h``), then touching
  pieces joined while the mean of ``b`` over the faces between them is below ``m``
  (``--merge-below m``). This way was added after the first seeds were reported without it;
  the other ways' rows are those rows.

Each way's settings are chosen on the ANNOTATED slices only (what a user of ``useg densify``
has): the adapted Rand error, against the bodies drawn on each annotated plane, of that plane of
the 3D segmentation, averaged over the planes. The unannotated voxels are scored once: the
adapted Rand error of the segmentation against the dense bodies over the unannotated voxels
(body 0, unlabeled, ignored), and how many segments meet them against how many bodies do. The
boundary IoU (argmax) is bench/sparse3d.py's measure, for reference.

Every finished seed is kept in bench/results/flyem_neurons_runs/ (with what it was made with):
a rerun resumes there. Each seed's boundary map is kept too, outside the repository
(``--maps``, default runs/flyem_neurons_maps/): a rerun with a changed search of settings
segments the kept maps anew instead of training again. Results:
bench/results/flyem_neurons.json and .md.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ROOT, command_line, keep_run, kept_run, machine_info, publish
from sparse3d import Experiment, annotated_mask, boundary_iou, slice_positions

from useg.evaluation.rand import adapted_rand_error
from useg.labels import IGNORE
from useg.postprocess.instances import InstanceParams, instances_from_probabilities
from useg.postprocess.segments import threshold_components

SLICES = (5, 5, 3)
THRESHOLDS = (0.3, 0.5, 0.7)
SEED_DISTANCES = (2.0, 4.0, 8.0)
SEED_THRESHOLDS = (0.8, 0.9, 0.95)
MIN_SIZES = (0, 100, 1000)  # voxels
MERGE_SEED_DISTANCES = (0.0, 1.0, 2.0, 4.0)
MERGE_BELOW = (0.2, 0.3, 0.4, 0.5, 0.6)
# The ways searched before the merged way was added; their choice is reported beside.
EARLIER_WAYS = ("components", "distance seeds", "confident seeds")
COMPONENT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def candidates() -> list[tuple[str, dict[str, Any]]]:
    out = [("components", {"threshold": t}) for t in COMPONENT_THRESHOLDS]
    out += [("distance seeds", {"threshold": t, "seed_distance": h})
            for t, h in itertools.product(THRESHOLDS, SEED_DISTANCES)]
    out += [("confident seeds", {"threshold": t, "seed_threshold": s, "min_size": m})
            for t, s, m in itertools.product(THRESHOLDS, SEED_THRESHOLDS, MIN_SIZES) if s > t]
    out += [("distance seeds, merged", {"threshold": t, "seed_distance": h, "merge_below": m})
            for t, h, m in itertools.product(THRESHOLDS, MERGE_SEED_DISTANCES, MERGE_BELOW)]
    return out


def neurons(boundary: np.ndarray, way: str, settings: dict[str, Any]) -> np.ndarray:
    """The crop cut into neurons one way (every voxel labelled)."""
    if way == "components":
        return threshold_components(1.0 - boundary, settings["threshold"], fill=True)
    params = InstanceParams.from_dict(settings, source=way)
    return instances_from_probabilities(np.stack([1.0 - boundary, boundary]), "boundary", params)


def on_planes(segments: np.ndarray, bodies: np.ndarray, slices: dict[int, list[int]]) -> float:
    """Mean adapted Rand error of the annotated planes (body 0 ignored)."""
    errors = [adapted_rand_error(np.take(segments, i, axis=a), np.take(bodies, i, axis=a),
                                 ignore_labels=(0,))[0]
              for a, indices in slices.items() for i in indices]
    return float(np.mean(errors))


def planes(exp: Experiment) -> tuple[dict[int, list[int]], np.ndarray]:
    """The annotated planes (axis -> indices) and the unannotated voxels inside bodies."""
    slices = slice_positions(SLICES, exp.bodies.shape)
    return slices, ~annotated_mask(slices, exp.bodies.shape) & (exp.bodies != 0)


MAPS = ROOT / "runs" / "flyem_neurons_maps"  # boundary maps kept outside the repository


def map_name(recipe: str, seed: int, suffix: str) -> str:
    """A seed's kept map or run; the first recipe's names predate the others."""
    return f"seed{seed}{suffix}" if recipe == "base" else f"{recipe}_seed{seed}{suffix}"


def setup(candidate: dict[str, Any], quick: bool) -> tuple[argparse.Namespace, int]:
    """Experiment settings and steps of a bench/flyem_recipe.py candidate on the test crop."""
    exp_args = argparse.Namespace(
        quick=quick, crop=[40, 96, 96] if quick else [80, 160, 160], width=candidate["width"],
        depth=candidate["depth"], padding="same", stats="running",
        augment=candidate["augment"], lr=1e-3, workers=1,
        tile3d=[32, 32, 32] if quick else [candidate["tile"]] * 3, tile2d=[128, 128],
        # The candidate's own precision, as bench/flyem_recipe.py trains it: "auto" would make
        # a bf16 map on one CPU and an fp32 map on another, and kept maps would not match.
        precision=candidate.get("precision", "fp32"), tta=candidate.get("tta", False))
    return exp_args, 12 if quick else candidate["steps"]


def network_description(exp_args: argparse.Namespace, steps: int) -> str:
    """What made a boundary map: a kept map is used only by a run that would make the same."""
    augment = exp_args.augment
    augmentation = ("no augmentation" if augment is False else "the paper's augmentation"
                    if augment is True else f"augmentation {json.dumps(augment)}")
    lr = f"{exp_args.lr:.0e}".replace("e-0", "e-")  # 1e-3, as the first kept maps say
    return (f"cicek2016 width {exp_args.width} depth {exp_args.depth}, {exp_args.padding} "
            f"padding, tile {exp_args.tile3d}, Adam {lr} poly, {exp_args.precision}, "
            f"{augmentation}, {steps} steps, crop {exp_args.crop}"
            + (", test-time augmentation" if getattr(exp_args, "tta", False) else ""))


def map_meta(exp: Experiment, run: dict[str, Any], steps: int, seed: int) -> dict[str, Any]:
    """The figures kept with a boundary map, from a run made with ``keep_probability``."""
    _, unannotated = planes(exp)
    return {"seed": seed, "slices_zyx": list(SLICES), "steps": steps,
            "train_s": run["train_s"], "threads": torch.get_num_threads(),
            "predict_s": run["predict_s"],
            "iou_boundary_unannotated": boundary_iou(run["prediction"], exp.target,
                                                     unannotated & (exp.target != IGNORE))}


def train_seed(exp: Experiment, steps: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Train on the annotated slices; the crop's boundary probability and the run's figures."""
    run = exp.run(3, SLICES, steps, seed=seed, keep_probability=True)
    return run["probability"], map_meta(exp, run, steps, seed)


def segment_seed(exp: Experiment, boundary: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """Each way's settings chosen on the annotated planes, then the unannotated voxels scored."""
    slices, unannotated = planes(exp)
    t1 = time.perf_counter()
    search = []
    for way, settings in candidates():
        search.append({"way": way, "settings": settings,
                       "annotated_adapted_rand": on_planes(neurons(boundary, way, settings),
                                                           exp.bodies, slices)})
    ways = {}
    for way in dict.fromkeys(w for w, _ in candidates()):
        best = min((r for r in search if r["way"] == way),
                   key=lambda r: r["annotated_adapted_rand"])
        # The unannotated voxels are scored once per way, at the settings chosen above.
        segments = neurons(boundary, way, best["settings"])
        found = segments[unannotated]
        ways[way] = {
            "settings": best["settings"],
            "annotated_adapted_rand": best["annotated_adapted_rand"],
            "unannotated_adapted_rand": adapted_rand_error(found, exp.bodies[unannotated],
                                                           ignore_labels=(0,))[0],
            "segments_meeting_unannotated": int(np.unique(found).size),
            "bodies_in_unannotated": int(np.unique(exp.bodies[unannotated]).size),
        }
    chosen = min(ways, key=lambda w: ways[w]["annotated_adapted_rand"])
    return {**meta, "segment_s": time.perf_counter() - t1, "chosen_way": chosen, "ways": ways,
            "search": search}


def load_map(path: Path, network: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A kept boundary map and its run's figures, if it was made by ``network``."""
    if not path.exists():
        return None
    with np.load(path) as kept:
        meta = json.loads(str(kept["meta"]))
        if meta.get("network") != network:
            return None
        return kept["boundary"].astype(np.float32), meta["run"]


def keep_map(path: Path, boundary: np.ndarray, network: str, meta: dict[str, Any]) -> None:
    """Keep a seed's boundary map (float16) so that a new search needs no new training."""
    from useg.io.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, boundary=boundary.astype(np.float16),
                            meta=json.dumps({"network": network, "run": meta}))


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, Any]:
        a = np.asarray(values, float)
        return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else None,
                "min": float(a.min()), "max": float(a.max()), "n": int(a.size)}

    def earlier(r: dict[str, Any]) -> str:
        return min(EARLIER_WAYS, key=lambda w: r["ways"][w]["annotated_adapted_rand"])

    out = {"chosen_on_annotated": stats([r["ways"][r["chosen_way"]]["unannotated_adapted_rand"]
                                         for r in runs]),
           "chosen_among_earlier_ways": stats([r["ways"][earlier(r)]["unannotated_adapted_rand"]
                                               for r in runs]),
           "iou_boundary_unannotated": stats([r["iou_boundary_unannotated"] for r in runs])}
    for way in runs[0]["ways"]:
        out[way] = {"unannotated_adapted_rand": stats([r["ways"][way]["unannotated_adapted_rand"]
                                                       for r in runs]),
                    "segments": [r["ways"][way]["segments_meeting_unannotated"] for r in runs]}
    return out


def _fmt(s: dict[str, Any]) -> str:
    if s["sd"] is None:
        return f"{s['mean']:.3f} (one seed: spread unknown)"
    return f"{s['mean']:.3f} +- {s['sd']:.3f} ({s['min']:.3f}..{s['max']:.3f}, {s['n']} seeds)"


def markdown(report: dict[str, Any]) -> str:
    m, runs, s = report["machine"], report["runs"], report["summary"]
    lines = [
        "# FlyEM: neurons from 5,5,3 annotated slices (3D U-Net, "
        + ("bench/sparse3d.py's chosen configuration)" if report.get("recipe", "base") == "base"
           else f"recipe {report['recipe']} of bench/flyem_recipe.py)"), "",
        f"Command: `{report['command']}`; CPU {m['cpu']['model']}, {m['date']}; "
        f"{report['network']}.", "",
        "Settings of each way chosen on the annotated planes only; unannotated voxels scored "
        "once per way. Lower adapted Rand error is better.", "",
        "| way | adapted Rand, unannotated voxels (mean +- sd, range) | segments / bodies "
        "meeting them, per seed |", "|---|---|---|"]
    bodies = runs[0]["ways"]["components"]["bodies_in_unannotated"]
    lines.append(f"| **the way chosen on the annotated planes, per seed** | "
                 f"{_fmt(s['chosen_on_annotated'])} | |")
    lines.append(f"| the way chosen the same way among those searched before the merged way was "
                 f"added ({', '.join(EARLIER_WAYS)}) | {_fmt(s['chosen_among_earlier_ways'])} | |")
    for way in runs[0]["ways"]:
        lines.append(f"| {way} | {_fmt(s[way]['unannotated_adapted_rand'])} | "
                     f"{', '.join(map(str, s[way]['segments']))} / {bodies} |")
    lines += ["", "| seed | train s (threads) | search s | boundary IoU (argmax) | chosen way | "
              "its settings |", "|---|---|---|---|---|---|"]
    for r in runs:
        # Runs kept before the thread count was recorded were trained on one.
        lines.append(f"| {r['seed']} | {r['train_s']:.0f} ({r.get('threads', 1)}) | "
                     f"{r['segment_s']:.0f} | "
                     f"{r['iou_boundary_unannotated']:.3f} | {r['chosen_way']} | "
                     f"`{r['ways'][r['chosen_way']]['settings']}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small crop, few steps, nothing kept")
    parser.add_argument("--maps", type=Path,
                        help="where each seed's boundary map is kept, so that a changed search "
                             "needs no training (default runs/flyem_neurons_maps, not committed)")
    parser.add_argument("--recipe", default="base",
                        help="a candidate of bench/flyem_recipe.py (base: bench/sparse3d.py's "
                             "chosen configuration); its test runs keep their maps for this")
    args = parser.parse_args()
    from flyem_recipe import CANDIDATES  # here: flyem_recipe imports this module

    if args.recipe not in CANDIDATES:
        parser.error(f"--recipe: one of {', '.join(CANDIDATES)}")
    exp_args, steps = setup(CANDIDATES[args.recipe], args.quick)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    exp = Experiment(exp_args)
    atexit.register(shutil.rmtree, exp.tmp, ignore_errors=True)  # its training runs' folder
    network = network_description(exp_args, steps)
    identity = {"network": network, "slices": list(SLICES), "grid": candidates()}
    out = RESULTS if not args.quick else RESULTS.parent.parent / "runs" / "flyem-quick"
    cache = out / "flyem_neurons_runs"
    name = "flyem_neurons" if args.recipe == "base" else f"flyem_neurons_{args.recipe}"
    maps = args.maps or (ROOT / "runs" / "flyem-quick" if args.quick else MAPS)
    runs = []
    for seed in args.seeds:
        path = cache / map_name(args.recipe, seed, ".json")
        run = kept_run(path, identity)
        if run is None:
            kept = load_map(maps / map_name(args.recipe, seed, ".npz"), network)
            if kept is None:
                print(f"seed {seed}: training {steps} steps", flush=True)
                boundary, meta = train_seed(exp, steps, seed)
                keep_map(maps / map_name(args.recipe, seed, ".npz"), boundary, network, meta)
            else:
                print(f"seed {seed}: the kept boundary map, searched anew", flush=True)
                boundary, meta = kept
            run = segment_seed(exp, boundary, meta)
            keep_run(path, identity, run)
        runs.append(run)
        w = run["ways"][run["chosen_way"]]
        print(f"  seed {seed}: {run['chosen_way']} {w['settings']}: adapted Rand "
              f"{w['unannotated_adapted_rand']:.3f} on the unannotated voxels "
              f"({w['segments_meeting_unannotated']} segments, {w['bodies_in_unannotated']} "
              f"bodies); train {run['train_s']:.0f} s", flush=True)
    report = {"benchmark": name, "command": command_line(), "machine": machine,
              "recipe": args.recipe, "network": network, "slices_zyx": list(SLICES),
              "runs": runs, "summary": summary(runs)}
    publish(out, name, report, markdown(report))


if __name__ == "__main__":
    sys.exit(main())

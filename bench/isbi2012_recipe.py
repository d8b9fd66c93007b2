"""ISBI 2012: a 2D CPU recipe chosen on validation with seeds, then tested once.

Run: .venv/bin/python bench/isbi2012_recipe.py [--candidates base dice] [--seeds 0 1 2]
         [--packaged-base-seed0] [--then-test] [--package]
     .venv/bin/python bench/isbi2012_recipe.py --test NAME [--seeds 0 1 2] [--package]
     .venv/bin/python bench/isbi2012_recipe.py --wide-grid NAME [--seeds 0 1 2]

bench/isbi2012.py trains one configuration once; this bench compares candidate recipes over
seeds on the same split (train on slices 0..14, choose on 15..19, report 20..24 once):

* every run trains a candidate with one seed on slices 0..14 (the trainer keeps the
  checkpoint with the best validation IoU, as bench/isbi2012.py does);
* its interior map of the validation slices (TTA, the 8 flips and quarter turns) goes through
  bench/isbi2012_segment.py's search: every way from map to cells (components, distance
  seeds, confident seeds, merged seeds) with its settings, scored by pixel error + adapted Rand
  error at ONE operating point; the run keeps the best way and settings on validation;
* a candidate's score is the mean over its seeds of that validation sum; the candidate with the
  smallest mean whose measured training fits the time limit (``--limit-min``, 60 minutes, on
  the threads given: one thread per run is slower than the two the budget is for, so a
  candidate that fits here fits there) and which has every seed asked for is the choice;
* ``--test NAME`` scores the named candidate's kept models on the test slices, each at the way
  and settings its own validation chose (nothing is chosen on the test slices). Run it for the
  validation choice only.

Candidates (``CANDIDATES``) were fixed before any of them was run: ``base`` is bench/isbi2012.py's
``main`` (width 16, depth 3, valid convolutions, the paper's weight map w0=10 sigma=5 with class
balance, elastic deformation, Adam 1e-3 poly, 3000 steps); ``dice`` adds a soft Dice term of
weight 1 to the weighted cross entropy (the literature's remedy for thin structures);
``long`` and ``dice-long`` double the steps.

``dice-wide`` was added after dice had been chosen and tested (issue #18 lists a wider network
among the ingredients to try, and long showed that more steps alone do not pay): dice with the
network twice as wide (width 32, four times the convolution FLOPs), fixed before any run of it,
trained in fp32 as the others were.

``dice-wide-w0-3`` was added after dice-wide had been chosen and tested (issue #18 lists the
border weight map's strength among the ingredients; bench/isbi2012_errors.py found the chosen
model's membranes thicker than drawn and most errors within two pixels of a drawn edge):
dice-wide with the border term's w0 at 3 instead of the paper's 10 (sigma and class balance
unchanged), fixed before any run of it; ``dice-wide-w0-0`` (no border term, class balance
kept) completes the ablation of its strength, fixed while dice-wide-w0-3's first seeds were
training, before any result of either.

``dice-wide-w0-3-flat`` was added after dice-wide-w0-3 had been chosen and tested: the same
with the class balance (the weight map's ``w_c``) off, so that membrane and cell pixels weigh
alike apart from the border term. Why: the chosen model still draws membranes thicker than
the truth, and ``w_c`` weighs the rarer membrane class up, which pushes the same way.
``dice-wide-w0-3-deep``: the same with the paper's depth 4 (four poolings) instead of 3, on
the same 316x316 input tile, which then gives a 132x132 output instead of 228x228 (fewer
convolutions per step than depth 3, a receptive field twice as wide). Why: most adapted-Rand
errors are membranes missed where they are faint, which wider context may close. Both were
fixed before any run of either.

``dice-wide-w0-3-flat-cubic`` was added after dice-wide-w0-3-flat had been chosen and tested:
the same with the augmentation's image resampling bicubic instead of bilinear. Why: every
training tile is resampled once (elastic deformation, rotation, zoom), and bilinear resampling
blurs it by up to half a pixel, while the images the network predicts on are never resampled;
most of the chosen model's pixel errors lie within two pixels of a drawn edge, where that
blur matters most. Fixed before any run of it.

``dice-wide-w0-3-flat-cubic-4500`` was added after -flat-cubic had been chosen and tested: the
same with half as many steps again (4500, the poly schedule stretched over them). Why:
-flat-cubic trains in about a third of the 60-minute budget on two threads, the checkpoint
validation chose was in its last tenth on two of three seeds, and more steps had been tried
only on the width-16 network (``long``, ``dice-long``). 4500 rather than twice: two seeds
trained side by side on one thread each must also keep the mean within the limit. Fixed
before any run of it.

``dice-wide-w0-3-flat-cubic-4500-half-dice`` was added after -4500 had been chosen and tested:
the same with the soft Dice term at weight 0.5 instead of 1. Why: the chosen model still draws
membranes thicker than the truth (bench/isbi2012_errors.py), and its validation pixel error is
smaller at interior thresholds below 0.5, which the search does not reach; a Dice term rewards
calling an uncertain pixel the rarer class (the threshold that maximises F1 is half the best F1,
below 0.5), which thickens membranes. Halving it, rather than removing it, keeps what it gave the
adapted Rand error (``dice`` against ``base``). Fixed before any run of it.

``dice-wide-w0-3-flat-cubic-half-dice-6000-bf16`` was added after -half-dice had been chosen and
tested: the same with 6000 steps (the schedule stretched over them), trained in bf16 on this CPU
(avx512_bf16), as ``--recipe cpu-best``'s ``--precision auto`` trains here. Why: steps paid from
3000 to 4500 at width 32, -half-dice's chosen checkpoints lie in the last quarter, and 6000
steps in fp32 on two threads would take about 42 minutes per seed (so three seeds would not fit
one session) while bf16 takes about half. Two changes at once: bf16 alone was not run in 2D; in
3D it scored as fp32 did (docs/sparse3d.md). Its training minutes are bf16 minutes, not
comparable with the fp32 rows; on a CPU without native bf16, ``auto`` trains in fp32, about 42
minutes on two threads of this CPU. Fixed before any run of it; still compared on the earlier
threshold grid (from 0.5), as every candidate was.

``dice-wide-w0-0-flat-cubic-4500-half-dice-bf16`` was added after -half-dice had been chosen and
tested and -6000-bf16 had not been chosen: -half-dice without the border term (w0 0: with the
class balance off too, the cross entropy is then unweighted), trained in bf16. Why:
bench/isbi2012_fit.py found the networks' pixel error held at about 1.4 one-pixel shifts of
every drawn edge on their training slices as on validation, and each step down of w0 (10, 3,
0) had lowered the pixel error (``dice-wide-w0-0`` against ``dice-wide-w0-3``, with the class
balance on), while the border term weighs pixels by where they lie between cells rather than
by the pixel error they cost. bf16 so that three seeds fit one session; -6000-bf16 scored as
the fp32 recipes did. Fixed before any run of it; compared on the grid from 0.5, as every
candidate was.

``--package`` (after the test): the chosen recipe's seed with the best validation sum becomes
the packaged ``em-membrane`` model, with its way's threshold as the operating point, its
instance settings and its test scores in the header, if it beats the packaged model's own
validation sum (base seed 0 below).

``--packaged-base-seed0``: the packaged ``em-membrane`` model is bench/isbi2012.py's main run
(base, seed 0, two threads), so base's seed 0 can be that model instead of a new training run;
the run record says so.

``--wide-grid NAME`` (after NAME was tested): each of its kept models' way and settings chosen
again on validation on bench/isbi2012_segment.py's thresholds from 0.3 (since 2026-12-05; the
candidates are compared, and were tested, on the grid from 0.5), then scored once more on the
test slices: a change of protocol made after seeing results, published beside the first.

Every finished run is kept in bench/results/isbi2012_recipe_runs/ with what it was made with
(its model under runs/isbi2012_recipe/, not committed), so processes can fill the cache in
parallel (one per seed, one thread each) and a last call publishes the tables.
Results: bench/results/isbi2012_recipe.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, ROOT, command_line, cpu_line, keep_run, kept_run, machine_info, publish
from isbi2012 import (
    ITERATIONS,
    NET,
    PACKAGED,
    SCORES,
    TEST_SLICES,
    TRAIN_SLICES,
    VAL_SLICES,
    isbi_root,
    load_slices,
    package_model,
    predict_slices,
    prediction_tile,
    samples,
    train_config,
)
from isbi2012_segment import (
    NARROW_THRESHOLDS,
    THRESHOLDS,
    best_per_way,
    best_way,
    params_of,
    scored,
    scores_at,
    search,
)
from sparse3d import spread

from useg.nets.checkpoint import load_model, resolve_model

# Each later candidate is an earlier one with one change, spelled as that change.
_WIDE = {"dice_weight": 1.0, "width": 32}
_W0_3 = {**_WIDE, "w0": 3.0}
_FLAT = {**_W0_3, "class_balance": False}
_CUBIC = {**_FLAT, "augment": {"interpolation": "cubic"}}
_CUBIC_4500 = {**_CUBIC, "iterations": 3 * ITERATIONS // 2}
_HALF_DICE = {**_CUBIC_4500, "dice_weight": 0.5}
CANDIDATES: dict[str, dict[str, Any]] = {
    "base": {},
    "dice": {"dice_weight": 1.0},
    "long": {"iterations": 2 * ITERATIONS},
    "dice-long": {"dice_weight": 1.0, "iterations": 2 * ITERATIONS},
    "dice-wide": _WIDE,
    "dice-wide-w0-3": _W0_3,
    "dice-wide-w0-0": {**_WIDE, "w0": 0.0},
    "dice-wide-w0-3-flat": _FLAT,
    "dice-wide-w0-3-deep": {**_W0_3, "depth": 4},
    "dice-wide-w0-3-flat-cubic": _CUBIC,
    "dice-wide-w0-3-flat-cubic-4500": _CUBIC_4500,
    "dice-wide-w0-3-flat-cubic-4500-half-dice": _HALF_DICE,
    "dice-wide-w0-3-flat-cubic-half-dice-6000-bf16": {**_HALF_DICE, "iterations": 2 * ITERATIONS,
                                                       "precision": "bf16"},
    "dice-wide-w0-0-flat-cubic-4500-half-dice-bf16": {**_HALF_DICE, "w0": 0.0,
                                                      "precision": "bf16"},
}
PRECISION = "fp32"  # what bench/isbi2012.py's "auto" is on a CPU without native bf16
MODELS = ROOT / "runs" / "isbi2012_recipe"
RUNS_FOLDER = "isbi2012_recipe_runs"  # under bench/results (--quick: under runs/)
# How a run record names base's seed 0 when it is the packaged model (--packaged-base-seed0).
PACKAGED_RUN = "bench/isbi2012.py main (the packaged em-membrane model), two threads"


def steps_of(name: str, quick: bool) -> int:
    return 12 if quick else CANDIDATES[name].get("iterations", ITERATIONS)


def config_of(name: str, seed: int, quick: bool):
    candidate = CANDIDATES[name]
    net_keys = ("width", "depth")
    overrides = {k: v for k, v in candidate.items()
                 if k not in ("iterations", "precision", *net_keys)}
    if any(k in candidate for k in net_keys):
        overrides["net"] = {**NET, **{k: candidate[k] for k in net_keys if k in candidate}}
    if quick:
        overrides["tile"] = [188, 188]
    return train_config("main", steps_of(name, quick), candidate.get("precision", PRECISION),
                        seed=seed, workers=1, **overrides)


def _slices(root: Path, indices: range, quick: bool):
    images, labels = load_slices(root, indices[:2] if quick else indices)
    return images, np.stack([lab > 0 for lab in labels]), labels


def run_identity(name: str, seed: int, quick: bool, packaged: bool = False) -> dict[str, Any]:
    """What a kept run of candidate ``name`` was made with (:func:`_common.kept_run`)."""
    return {"candidate": CANDIDATES[name], "steps": steps_of(name, quick), "seed": seed,
            "quick": quick, "packaged_model": packaged}


def run_file(cache: Path, name: str, seed: int) -> Path:
    """Where the run of candidate ``name``'s seed is kept (its test: ``test_`` before it)."""
    return cache / f"{name}_seed{seed}.json"


def one_run(args, name: str, seed: int, root: Path, cache: Path) -> dict[str, Any]:
    packaged = args.packaged_base_seed0 and name == "base" and seed == 0 and not args.quick
    identity = run_identity(name, seed, args.quick, packaged)
    path = run_file(cache, name, seed)
    kept = kept_run(path, identity)
    if kept is not None:
        return kept
    model_file = MODELS / ("quick" if args.quick else "") / f"{name}_seed{seed}.safetensors"
    run: dict[str, Any] = {"candidate": name, "seed": seed, "threads": args.threads,
                           "model_file": str(model_file.relative_to(ROOT)),
                           "command": command_line(), "machine": machine_info()}
    val_images, val_truth, val_labels = _slices(root, VAL_SLICES, args.quick)
    if packaged:
        source = resolve_model("em-membrane")
        run.update(trained_by=PACKAGED_RUN, threads=2, train_s=None)
    else:
        cfg = config_of(name, seed, args.quick)
        print(f"{name} seed {seed}: training {cfg.iterations} steps on {args.threads} "
              f"thread(s)", flush=True)
        images, _, labels = _slices(root, TRAIN_SLICES, args.quick)
        train_s = samples(images, labels, cfg,
                          [f"train/{i}.png" for i in TRAIN_SLICES][:len(images)])
        val_s = samples(val_images, val_labels, cfg, [f"train/{i}.png" for i in VAL_SLICES][
            :len(val_images)])
        folder = MODELS / ("quick" if args.quick else "") / f"{name}_seed{seed}"
        shutil.rmtree(folder, ignore_errors=True)  # a run interrupted before it was kept
        from useg.training.loop import train

        t0 = time.perf_counter()
        source = train(cfg, train_s, folder, val_samples=val_s, progress=False)
        run.update(trained_by="this bench", train_s=time.perf_counter() - t0,
                   config=cfg.to_dict())
    model = load_model(source, device="cpu")
    run["checkpoint_step"] = int(model.meta.get("step", 0))
    tile = prediction_tile(model.meta["config"], val_images[0].shape[1:])
    t0 = time.perf_counter()
    probs = predict_slices(model, val_images, tile, PRECISION)
    best = best_per_way(search(probs, val_truth, NARROW_THRESHOLDS))
    chosen = best_way(best)
    run.update(search_s=time.perf_counter() - t0, way=chosen, settings=best[chosen]["settings"],
               validation={k: best[chosen][k] for k in ("pixel_error", "adapted_rand_error",
                                                        "criterion")},
               validation_per_way={w: {k: r[k] for k in ("settings", "pixel_error",
                                                         "adapted_rand_error", "criterion")}
                                   for w, r in best.items()})
    model_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, model_file)
    keep_run(path, identity, run)
    v = run["validation"]
    print(f"  validation: {chosen} {run['settings']}: pixel {v['pixel_error']:.4f}, adapted "
          f"Rand {v['adapted_rand_error']:.4f}", flush=True)
    return run


def _predicted(model, root: Path, indices: range, quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """A model's interior maps of the slices ``indices`` (TTA) and their drawn interiors."""
    images, truth, _ = _slices(root, indices, quick)
    tile = prediction_tile(model.meta["config"], images[0].shape[1:])
    return predict_slices(model, images, tile, PRECISION), truth


def test_run(args, run: dict[str, Any], root: Path, cache: Path) -> dict[str, Any]:
    """Score a kept run's model on the test slices at its own validation choice."""
    path = run_file(cache, f"test_{run['candidate']}", run["seed"])
    identity = {"validation_run": run}
    kept = kept_run(path, identity)
    if kept is not None:
        return kept
    model = load_model(ROOT / run["model_file"], device="cpu")
    probs, truth = _predicted(model, root, TEST_SLICES, args.quick)
    scores = scores_at(probs, truth, run["settings"])
    result = {"candidate": run["candidate"], "seed": run["seed"], "way": run["way"],
              "settings": run["settings"], "test": {k: scores[k] for k in SCORES},
              "command": command_line()}
    keep_run(path, identity, result)
    t = result["test"]
    print(f"  test {run['candidate']} seed {run['seed']}: pixel {t['pixel_error']:.4f}, "
          f"adapted Rand {t['adapted_rand_error']:.4f}", flush=True)
    return result


def wide_grid_run(args, run: dict[str, Any], root: Path, cache: Path) -> dict[str, Any]:
    """A kept run's way and settings chosen again on validation on isbi2012_segment's wider
    threshold grid, then scored once on the test slices there."""
    path = run_file(cache, f"wide_{run['candidate']}", run["seed"])
    identity = {"validation_run": run, "thresholds": THRESHOLDS}
    kept = kept_run(path, identity)
    if kept is not None:
        return kept
    model = load_model(ROOT / run["model_file"], device="cpu")
    best = best_per_way(search(*_predicted(model, root, VAL_SLICES, args.quick), THRESHOLDS))
    chosen = best_way(best)
    # The test slices are predicted only once the choice is made.
    choice = scored(best[chosen], *_predicted(model, root, TEST_SLICES, args.quick))
    result = {"candidate": run["candidate"], "seed": run["seed"], "thresholds": THRESHOLDS,
              "way": chosen, "settings": choice["settings"],
              "wide_validation": {**choice["validation"],
                                  "criterion": best[chosen]["criterion"]},
              "wide_test": choice["test"], "command": command_line(),
              "machine": machine_info()}
    keep_run(path, identity, result)
    t = result["wide_test"]
    print(f"  wider grid {run['candidate']} seed {run['seed']}: {chosen} {choice['settings']}: "
          f"test pixel {t['pixel_error']:.4f}, adapted Rand {t['adapted_rand_error']:.4f}",
          flush=True)
    return result


def current_package(report: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the run that this bench last packaged as em-membrane (kept through later
    calls that did not replace it), or None when it packaged none."""
    record = report.get("package")
    if record and not record.get("packaged"):
        record = record.get("kept")
    return record if record and record.get("packaged") else None


def package(report: dict[str, Any]) -> dict[str, Any]:
    """Replace the packaged em-membrane model by the chosen recipe's run with the best
    validation sum, when that beats the packaged model's own validation sum (the run this bench
    packaged last; before any, bench/isbi2012.py's main run as base seed 0,
    ``--packaged-base-seed0``); the header gets the run's way and settings as its operating
    point and instance settings, and its test scores there."""
    chosen = report.get("chosen")
    tests = {t["seed"]: t for t in report["tests"] if t["candidate"] == chosen}
    mine = [r for r in report["runs"] if r["candidate"] == chosen and r["seed"] in tests]
    current = current_package(report)
    packaged = [r for r in report["runs"] if r.get("trained_by") == PACKAGED_RUN]
    if current is not None:
        old, which = current["validation"]["criterion"], (f"the packaged model ({current['recipe']}"
                                                          f" seed {current['seed']})")
    elif packaged:
        old, which = packaged[0]["validation"]["criterion"], "the packaged model"
    else:
        old = which = None
    if not mine or old is None:
        return {"packaged": False, "reason": "the chosen recipe's test runs and the packaged "
                                             "model's validation run are both needed",
                "kept": current}
    best = min(mine, key=lambda r: r["validation"]["criterion"])
    if best["validation"]["criterion"] >= old:
        return {"packaged": False, "reason": f"{chosen} seed {best['seed']} does not beat "
                f"{which} on validation ({best['validation']['criterion']:.4f} against "
                f"{old:.4f})", "kept": current}
    params, threshold = params_of(best["settings"])
    instances = None if params is None else {
        "target": "instances", "params": params.to_dict(),
        "chosen_on": "ISBI 2012 training slices 15..19 (validation), TTA, by pixel error + "
                     "adapted Rand error (bench/isbi2012_recipe.py)"}
    result = package_model(ROOT / best["model_file"], threshold, tests[best["seed"]]["test"],
                           PACKAGED, made_by=f"bench/isbi2012_recipe.py (recipe {chosen}, seed "
                           f"{best['seed']}, the best of its seeds on validation)",
                           instances=instances)
    result.update(recipe=chosen, seed=best["seed"], validation=best["validation"],
                  replaced_validation_criterion=old)
    if not result.get("packaged"):  # refused by package_model (e.g. its size): the old stays
        result["kept"] = current
    return result


VAL_KEYS = ("pixel_error", "adapted_rand_error", "criterion")
TEST_KEYS = ("pixel_error", "adapted_rand_error", "rand_error", "warping_error")


def _spreads(records: list[dict[str, Any]], part: str, prefix: str,
             keys: tuple[str, ...]) -> dict[str, Any]:
    """``{prefix}_{key}``: the spread over ``records`` of each score ``record[part][key]``."""
    return {f"{prefix}_{key}": spread([r[part][key] for r in records]) for key in keys}


def table(runs: list[dict[str, Any]], tests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in CANDIDATES:
        mine = [r for r in runs if r["candidate"] == name]
        if not mine:
            continue
        row = {"candidate": name, "settings": CANDIDATES[name], "seeds": sorted(r["seed"]
                                                                               for r in mine),
               "ways": sorted({r["way"] for r in mine})}
        row.update(_spreads(mine, "validation", "val", VAL_KEYS))
        trained = [r["train_s"] / 60 for r in mine if r.get("train_s")]
        row["train_min"] = spread(trained) if trained else None
        row["threads"] = sorted({r["threads"] for r in mine})
        tested = [t for t in tests if t["candidate"] == name]
        if tested:
            row.update(_spreads(tested, "test", "test", TEST_KEYS))
            row["test_seeds"] = sorted(t["seed"] for t in tested)
        rows.append(row)
    return rows


def wide_table(wide: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate, the spread over seeds of the choice on the wider threshold grid."""
    rows = []
    for name in CANDIDATES:
        mine = [r for r in wide if r["candidate"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"candidate": name, "seeds": sorted(r["seed"] for r in mine),
                               "thresholds": sorted({r["settings"]["threshold"] for r in mine})}
        row.update(_spreads(mine, "wide_validation", "val", VAL_KEYS))
        row.update(_spreads(mine, "wide_test", "test", TEST_KEYS))
        rows.append(row)
    return rows


def _cell(s: dict[str, Any] | None, digits: int = 4) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# ISBI 2012 2D recipe: chosen on validation (15..19) over seeds, tested once "
             "(20..24)", "", f"Command: `{report['command']}`; CPU {cpu_line(report['machine'])}.",
             "", "It publishes the runs kept in isbi2012_recipe_runs/; each was made by its own "
             "call (`--candidates NAME --seeds S --threads T`, or `--test NAME`), one per seed "
             "so that seeds can train side by side, recorded with its threads (and its command "
             "line, for runs made since that was recorded; its CPU and date too, for runs "
             "made since then).",
             "", "Each run: its validation-chosen way from map to cells and settings "
             "(bench/isbi2012_segment.py's search, pixel + adapted Rand error at one operating "
             "point). Mean +- sample std over seeds. Test columns only for the tested "
             "candidate, each seed at its own validation choice.", "",
             "| recipe | settings | seeds | val pixel | val adapted Rand | val sum | train min "
             "(threads) | test pixel | test adapted Rand |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["table"]:
        mark = "**" if r["candidate"] == report.get("chosen") else ""
        train = "-" if not r["train_min"] else f"{r['train_min']['mean']:.0f}"
        lines.append(
            f"| {mark}{r['candidate']}{mark} | `{json.dumps(r['settings'])}` | "
            f"{','.join(map(str, r['seeds']))} | {_cell(r['val_pixel_error'])} | "
            f"{_cell(r['val_adapted_rand_error'])} | {_cell(r['val_criterion'])} | "
            f"{train} ({r['threads']}) | "
            f"{_cell(r.get('test_pixel_error'))} | {_cell(r.get('test_adapted_rand_error'))} |")
    lines.append("")
    if report.get("wide_grid"):
        lines += [f"The same kept models, their way and settings chosen again on validation with "
                  f"thresholds from {THRESHOLDS[0]:g} (isbi2012_segment.py's grid since "
                  f"2026-12-05; the table above chose from {NARROW_THRESHOLDS[0]:g}), then "
                  "scored once more on the test slices (`--wide-grid NAME`; a change of "
                  "protocol made after seeing results, so both are shown):", "",
                  "| recipe | seeds | thresholds chosen | val pixel | val adapted Rand | val sum "
                  "| test pixel | test adapted Rand |", "|---|---|---|---|---|---|---|---|"]
        for r in report["wide_grid"]:
            lines.append(
                f"| {r['candidate']} | {','.join(map(str, r['seeds']))} | "
                f"{', '.join(f'{t:g}' for t in r['thresholds'])} | "
                f"{_cell(r['val_pixel_error'])} | {_cell(r['val_adapted_rand_error'])} | "
                f"{_cell(r['val_criterion'])} | {_cell(r['test_pixel_error'])} | "
                f"{_cell(r['test_adapted_rand_error'])} |")
        lines.append("")
    pack = report.get("package")
    if pack:
        lines.append(("Packaged as em-membrane: " if pack["packaged"] else "em-membrane kept: ")
                     + (f"{pack['recipe']} seed {pack['seed']} (validation sum "
                        f"{pack['validation']['criterion']:.4f} against the earlier model's "
                        f"{pack['replaced_validation_criterion']:.4f})" if pack["packaged"]
                        else pack["reason"]) + ".")
        lines.append("")
    if report.get("chosen"):
        lines.append(f"Chosen on validation (smallest mean val sum, mean training within "
                     f"{report['limit_min']} min on the threads given, every seed asked): "
                     f"**{report['chosen']}**.")
    else:
        lines.append("No choice yet: no candidate has every seed asked for within the limit.")
    lines.append("")
    return "\n".join(lines)


def publish_tables(args, out: Path, cache: Path) -> dict[str, Any]:
    kept = [json.loads(p.read_text())["run"] for p in sorted(cache.glob("*.json"))]
    runs = [r for r in kept if "validation" in r]
    tests = [r for r in kept if "test" in r]
    wide = [r for r in kept if "wide_test" in r]
    report: dict[str, Any] = {
        "benchmark": "isbi2012_recipe", "command": command_line(), "machine": machine_info(),
        "split": {"train": "0..14", "validation": "15..19", "test": "20..24"},
        "candidates": CANDIDATES, "limit_min": args.limit_min, "precision": PRECISION,
        "table": table(runs, tests), "wide_grid": wide_table(wide)}
    fitting = [r for r in report["table"]
               if set(args.seeds) <= set(r["seeds"])
               and (r["train_min"] is None or r["train_min"]["mean"] <= args.limit_min)]
    if fitting:
        report["chosen"] = min(fitting, key=lambda r: r["val_criterion"]["mean"])["candidate"]
    report["runs"], report["tests"], report["wide_grid_runs"] = runs, tests, wide
    earlier = out / "isbi2012_recipe.json"
    if earlier.exists():  # what --package did stays with the tables
        kept_package = json.loads(earlier.read_text()).get("package")
        if kept_package:
            report["package"] = kept_package
    publish(out, "isbi2012_recipe", report, markdown(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        help="recipes to run (default: base and dice, none with --wide-grid)")
    parser.add_argument("--test", choices=list(CANDIDATES),
                        help="score this recipe's kept models on the test slices (after "
                             "choosing it on validation)")
    parser.add_argument("--wide-grid", choices=list(CANDIDATES),
                        help="choose this tested recipe's ways and settings again on "
                             "validation on isbi2012_segment.py's wider threshold grid, and "
                             "score them once on the test slices")
    parser.add_argument("--then-test", action="store_true",
                        help="after the candidates, score the validation choice on the test "
                             "slices")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit-min", type=float, default=60.0,
                        help="training minutes a recipe may take (measured, on the threads "
                             "given: one thread is slower than the two the budget is for)")
    parser.add_argument("--packaged-base-seed0", action="store_true",
                        help="base's seed 0 is the packaged em-membrane model (bench/isbi2012.py"
                             "'s main run), not a new training run")
    parser.add_argument("--package", action="store_true",
                        help="after the test: make the chosen recipe's best seed on validation "
                             "the packaged em-membrane model, if it beats that on validation")
    parser.add_argument("--publish-only", action="store_true",
                        help="train nothing: publish the tables of the runs kept so far")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: two slices per set, a few steps, nothing kept in "
                             "bench/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = isbi_root()
    out = ROOT / "runs" / "isbi2012-recipe-quick" if args.quick else RESULTS
    cache = out / RUNS_FOLDER
    if args.candidates is None:
        args.candidates = [] if args.wide_grid else ["base", "dice"]
    if not args.publish_only:
        for name in [args.test] if args.test else args.candidates:
            for seed in args.seeds:
                run = one_run(args, name, seed, root, cache)
                if args.test:
                    test_run(args, run, root, cache)
    report = publish_tables(args, out, cache)
    if args.then_test and report.get("chosen"):
        for seed in args.seeds:
            test_run(args, one_run(args, report["chosen"], seed, root, cache), root, cache)
        report = publish_tables(args, out, cache)
    if args.wide_grid and not args.publish_only:
        for seed in args.seeds:
            run = one_run(args, args.wide_grid, seed, root, cache)
            wide_grid_run(args, run, root, cache)
        report = publish_tables(args, out, cache)
    if args.test and report.get("chosen") and args.test != report["chosen"]:
        print(f"note: {args.test} was tested, but the validation choice is {report['chosen']}")
    if args.package and not args.quick:
        report["package"] = package(report)
        print(f"package: {report['package']}")
        publish(out, "isbi2012_recipe", report, markdown(report))


if __name__ == "__main__":
    main()

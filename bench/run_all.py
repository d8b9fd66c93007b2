"""Run every benchmark (or only summarise their results) and rewrite bench/README.md.

``make bench`` runs this: each benchmark with its default command, one after the other, then
the table of figures in bench/README.md is regenerated from bench/results/*.json.

Run: ``.venv/bin/python bench/run_all.py [--summary-only] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

from _common import BENCH, RESULTS, ROOT, cpu_line

# name -> (command, results file)
BENCHES: dict[str, tuple[list[str], str]] = {
    "shapes": (["bench/shapes.py"], "shapes.json"),
    "weightmap": (["bench/weightmap.py"], "weightmap.json"),
    "augment": (["bench/augment.py"], "augment.json"),
    "predict": (["bench/predict.py", "--monai-sweep"], "predict.json"),
    # MONAI's 2D roi sweep at the 2048^2, fp32 channels-last (any CPU), apart from
    # predict.json's sweep.
    "predict_sweep2048": (["bench/predict.py", "--monai-sweep", "--no-speed", "--no-profile",
                           "--memory-sizes", "--sizes", "2048", "--widths", "64",
                           "--sweep-widths", "64", "--sweep-precisions", "fp32",
                           "--monai-formats", "channels_last", "--repeats", "2", "--output",
                           "bench/results/predict_sweep2048.json"], "predict_sweep2048.json"),
    "precision": (["bench/precision.py"], "precision.json"),
    # The same on the other CPU kind: a CPU with bf16 instructions (the figure names the CPU;
    # rerun it there, precision.json on an AVX2-only CPU).
    "precision_bf16_cpu": (["bench/precision.py", "--repeats", "2", "--out",
                            "bench/results/precision_avx512_bf16.json"],
                           "precision_avx512_bf16.json"),
    "predict3d": (["bench/predict3d.py", "--widths", "16", "32", "--profile", "--keep-freed",
                   "--monai-sweep", "--sweep-widths", "16"], "predict3d.json"),
    "predict3d_layers": (["bench/predict3d.py", "--no-speed", "--layers", "--profile",
                          "--output", "bench/results/predict3d_layers.json"],
                         "predict3d_layers.json"),
    # A cube and an anisotropic volume against MONAI's tuned (channels-last) run, fp32 and, on
    # a CPU with bf16 instructions, bf16.
    "predict3d_shapes": (["bench/predict3d.py", "--shapes", "256x256x256", "128x512x512",
                          "--monai-formats", "channels_last", "--output",
                          "bench/results/predict3d_shapes.json"], "predict3d_shapes.json"),
    # What a larger memory budget (useg predict --memory) buys, with glibc as it comes and with
    # freed memory kept.
    "predict3d_budgets": (["bench/predict3d.py", "--no-speed", "--budgets", "2", "4", "8",
                           "--repeats", "2", "--output", "bench/results/predict3d_budgets.json"],
                          "predict3d_budgets.json"),
    # useg's default for 3D on the CPU (freed memory kept, tiles for half the budget) against
    # the one before it, interleaved.
    "predict3d_defaults": (["bench/predict3d.py", "--no-speed", "--defaults", "--repeats", "2",
                            "--output", "bench/results/predict3d_defaults.json"],
                           "predict3d_defaults.json"),
    "train_throughput": (["bench/train_throughput.py"], "train_throughput.json"),
    "loader_workers": (["bench/loader_workers.py"], "loader_workers.json"),
    # The whole steps and the convolutions taken apart in one run, so that they compare.
    "train_step": (["bench/train_step.py", "--layers"], "train_step.json"),
    "huge_pages": (["bench/huge_pages.py"], "huge_pages.json"),
    "conv_kernels": (["bench/conv_kernels.py"], "conv_kernels.json"),
    "isbi2012": (["bench/isbi2012.py", "--ablations"], "isbi2012.json"),
    # After isbi2012 (whose main run is base's seed 0 and was the packaged model): the recipe
    # chosen over seeds may replace the packaged model, which isbi2012_segment then segments.
    "isbi2012_recipe": (["bench/isbi2012_recipe.py", "--candidates", "base", "dice", "long",
                         "dice-wide", "dice-wide-w0-3", "dice-wide-w0-0", "dice-wide-w0-3-flat",
                         "dice-wide-w0-3-deep", "dice-wide-w0-3-flat-cubic",
                         "dice-wide-w0-3-flat-cubic-4500",
                         "dice-wide-w0-3-flat-cubic-4500-half-dice",
                         "dice-wide-w0-3-flat-cubic-half-dice-6000-bf16",
                         "dice-wide-w0-0-flat-cubic-4500-half-dice-bf16",
                         "--packaged-base-seed0", "--then-test", "--package",
                         "--wide-grid", "dice-wide-w0-3-flat-cubic-4500-half-dice"],
                        "isbi2012_recipe.json"),
    # Validation only, from isbi2012_recipe's kept models of dice-wide-w0-3-flat-cubic (the 2D
    # choice when it was run).
    "isbi2012_ensemble": (["bench/isbi2012_ensemble.py"], "isbi2012_ensemble.json"),
    # Validation and training slices only, from isbi2012_recipe's kept models of the 2D choice;
    # its unregularised run is kept in bench/results/isbi2012_fit_runs (trained once).
    "isbi2012_fit": (["bench/isbi2012_fit.py", "--unregularised"], "isbi2012_fit.json"),
    "isbi2012_segment": (["bench/isbi2012_segment.py"], "isbi2012_segment.json"),
    "isbi2012_errors": (["bench/isbi2012_errors.py"], "isbi2012_errors.json"),
    "sparse3d": (["bench/sparse3d.py"], "sparse3d.json"),
    "flyem_neurons": (["bench/flyem_neurons.py"], "flyem_neurons.json"),
    # Every candidate that was run (wide-long would not fit the time limit); the runs kept in
    # bench/results/flyem_recipe_runs are not run again (nor refused: flips-15k-bf16's on a CPU
    # without bf16). The later candidates ran on two threads.
    "flyem_recipe": (["bench/flyem_recipe.py", "--candidates", "base", "long", "long-flips",
                      "wide", "long-tta", "longer", "longest", "long-15k", "flips-15k-bf16",
                      "--threads", "2", "--then-test"],
                     "flyem_recipe.json"),
    # After flyem_recipe: the test runs of a recipe keep the boundary maps these segment.
    "flyem_neurons_long": (["bench/flyem_neurons.py", "--recipe", "long"],
                           "flyem_neurons_long.json"),
    "flyem_neurons_longer": (["bench/flyem_neurons.py", "--recipe", "longer"],
                             "flyem_neurons_longer.json"),
    "flyem_neurons_longest": (["bench/flyem_neurons.py", "--recipe", "longest"],
                              "flyem_neurons_longest.json"),
    "flyem_neurons_long-15k": (["bench/flyem_neurons.py", "--recipe", "long-15k"],
                               "flyem_neurons_long-15k.json"),
    "scale": (["bench/scale.py"], "scale.json"),
    "nuclei": (["bench/nuclei.py"], "nuclei.json"),
    "ovules3d": (["bench/ovules3d.py"], "ovules3d.json"),
    "demo": (["bench/demo.py"], "demo.json"),
    "recipes": (["bench/recipes.py", "--recipes", "cpu-fast", "cpu-best", "gpu-paper",
                 "--estimate-only", "cpu-best", "gpu-paper"], "recipes.json"),
}


def _get(d, *path, default=None):
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and -len(d) <= p < len(d):
            d = d[p]
        else:
            return default
    return d


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _shapes(d) -> list[tuple[str, str]]:
    rows = []
    for name, t in _get(d, "presets", default={}).items():
        rows.append((f"{name}: parameters, conv layers, halo",
                     f"{t['parameters']:,}, {t['conv_layers']}, {t['halo']}"))
        if t.get("one_pass_factor"):
            rows.append((f"{name}: one pass over a whole image ({', '.join(t['one_pass_factor'])}"
                         "), no tiles: convolutions over the ideal's",
                         " / ".join(f"{_fmt(v)}x" for v in t["one_pass_factor"].values())))
    for s in _get(d, "seam_test", default=[]):
        rows.append((f"seam test {s['dtype']} ({s['tiles']} tiles of {s['tile']})",
                     f"max abs diff {_fmt(s['max_abs_diff'])}"))
    s3 = _get(d, "seam_test_3d")
    if s3:
        rows.append((f"seam test {s3['preset']}, batch norm with running statistics, float32 "
                     f"({', '.join(str(t['tiles']) for t in s3['tiles'])} tiles)",
                     f"max abs diff {_fmt(max(t['max_abs_diff'] for t in s3['tiles']))}"))
    return rows


def _weightmap(d):
    return [("weight map 512², 300 objects: speed-up over one EDT per object",
             f"{_fmt(_get(d, 'speedup_median'))}x (target 50x)")]


def _augment(d):
    rows = []
    for case, c in _get(d, "2d", "cases", default={}).items():
        rows.append((f"2D 512² {case}: speed-up over elasticdeform",
                     f"{_fmt(_get(c, 'speedup_median'))}x (target 5x)"))
    rows.append(("3D 128³ elastic: speed-up over TorchIO",
                 f"{_fmt(_get(d, '3d', 'speedup_median'))}x (target 4x)"))
    return rows


def _generic(d, keys: list[tuple[str, tuple]]):
    return [(label, _fmt(_get(d, *path))) for label, path in keys]


def _train_throughput(d):
    rows = []
    for r in _get(d, "results", default=[]):
        rows.append((f"training {r['precision']}: useg / bare PyTorch loop (it/s)",
                     f"{_fmt(r['ratio_useg_over_bare']['median'])} (data wait "
                     f"{_fmt(r['useg_data_wait_fraction'])}; target >= 0.9)"))
    return rows


def _loader_workers(d):
    rows = []
    for r in _get(d, "results", default=[]):
        s = r["s_per_step"]
        rows.append((f"{d.get('recipe')} {r['ndim']}D, {d.get('threads')} torch threads, "
                     f"{r['workers']} loader worker(s): s/step (min-max) / share waiting for "
                     "tiles",
                     f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])}) / "
                     f"{_fmt(r['data_wait']['median'])}"))
    return rows


def _precision(d):
    net, side = _get(d, "network", default={}), _get(d, "image", 0)
    cpu = (cpu_line(d["machine"]) if "machine" in d
           else f"{_get(d, 'cpu', 'model_name')} (avx2 only)")
    return [(f"{net.get('preset')} width {net.get('width')}, {side}x{side} on "
             f"{cpu}: bf16 / fp32 seconds; what auto picks (/ fp32)",
             f"{_fmt(_get(d, 'bf16_over_fp32'))}x; {_get(d, 'auto', 'picks')} "
             f"({_fmt(_get(d, 'auto', 'over_fp32'))}x)")]


def _monai_best(d):
    """Rows of the MONAI sweep: useg against MONAI at its fastest, and how the outputs agree."""
    part = _get(d, "monai_best", default={}) or {}
    if not part:
        return []
    rows = [("MONAI sweep: CPU (lscpu), date, configurations",
             f"{cpu_line(part.get('machine', {}))}, {part.get('date', '?')}; "
             f"{'/'.join(map(str, _get(part, 'sweep', 'memory_formats', default=[])))} x roi "
             f"{'/'.join(map(str, _get(part, 'sweep', 'rois', default=[])))} x overlap "
             f"{'/'.join(map(str, _get(part, 'sweep', 'overlaps', default=[])))}, "
             "in useg's precision")]
    for case, e in part.get("cases", {}).items():
        for precision, b in e.get("best", {}).items():
            peers = [c for c in e.get("monai", {}).values() if c.get("precision") == precision]
            same = [c["agreement_with_useg_same_padding"]["argmax_agreement"] for c in peers]
            slowest = min(peers, key=lambda c: c["megapixels_per_s"]) if peers else {}
            rows.append((
                f"{case}, useg {precision} vs MONAI {precision} at its fastest ({b['monai']}): "
                "speed (paired) / argmax agreement, max |dp| with useg / argmax agreement with "
                "useg on MONAI's network, over the sweep / speed vs MONAI's slowest",
                f"{_fmt(_get(b, 'useg_vs_best', 'median'))}x / "
                f"{_fmt(_get(b, 'agreement_with_useg', 'argmax_agreement'), 4)}, "
                f"{_fmt(_get(b, 'agreement_with_useg', 'max_abs_prob_diff'))} / "
                f"{_fmt(min(same, default=None), 4)}-{_fmt(max(same, default=None), 4)} / "
                f"{_fmt(slowest.get('useg_speed_ratio'))}x"))
    return rows


def _budgets(d):
    """Rows of the memory budgets: per budget, the tile and its modelled work, then seconds and
    peak memory with glibc as it comes and with freed memory kept."""
    rows = []
    for case, part in _get(d, "budgets", default={}).items():
        for gib, e in part.get("budgets", {}).items():
            cells = [f"{_fmt(_get(e, label, 'seconds', 'median'))} s, "
                     f"{_fmt(_get(e, label, 'peak_rss_bytes', 'median', default=0) / 2**30)} GiB"
                     for label in ("glibc default", "freed memory kept") if label in e]
            rows.append((f"{case}, fp32, memory budget {gib} GiB: tile, tiles, work over one "
                         "ideal pass / seconds, peak RSS (glibc default; freed memory kept)",
                         f"{'x'.join(map(str, e['tile']))}, {e['tiles']}, "
                         f"{_fmt(e['work_over_one_ideal_pass'])}x / {'; '.join(cells)}"))
    return rows


def _defaults(d):
    """Rows of the default against the previous default: tile, seconds, peak memory."""
    rows = []
    for case, part in _get(d, "defaults", default={}).items():
        cells = []
        for label, e in part.items():
            if isinstance(e, dict) and "seconds" in e:
                cells.append(f"{label}: {'x'.join(map(str, e['tile']))}, "
                             f"{_fmt(_get(e, 'seconds', 'median'))} s, "
                             f"{_fmt(_get(e, 'peak_rss_bytes', 'median', default=0) / 2**30)} GiB")
        rows.append((f"{case}, fp32, useg's default tile: tile, seconds, peak RSS (medians); "
                     "previous over default", f"{'; '.join(cells)}; "
                     f"{_fmt(part.get('speedup_of_medians'))}x"))
    return rows


def _part_cpus(d):
    """Which CPU measured each part (results from before part_machines: the run's machine)."""
    parts = [k for k in ("speed", "allocator", "profile", "memory", "monai_best", "budgets",
                         "defaults") if k in d]
    machines = _get(d, "part_machines", default={}) or {}
    by_cpu: dict[str, list[str]] = {}
    for part in parts:
        by_cpu.setdefault(cpu_line(machines.get(part, d.get("machine", {}))), []).append(part)
    return [("CPU of each part", "; ".join(f"{', '.join(ps)}: {cpu}"
                                           for cpu, ps in by_cpu.items()))] if parts else []


def _prediction(d):
    rows = _part_cpus(d)
    for case, v in _get(d, "speed", default={}).items():
        configs = v.get("configurations", {})
        peers = {fmt: _get(configs, f"monai fp32 ({fmt})", "megapixels_per_s", "median")
                 for fmt in ("contiguous", "channels_last")}
        for name, c in configs.items():
            if not name.startswith("useg"):
                continue
            mps = _get(c, "megapixels_per_s", "median")
            # The paired ratio against the run's first MONAI format (contiguous in results that
            # predate `monai_peer`), ratios of medians against the other (a run with one format
            # has no figure for the other).
            vs = [f"{_fmt(_get(c, 'speed_vs_monai_fp32', 'median'))}x"
                  if c.get("monai_peer", "monai fp32 (contiguous)") == f"monai fp32 ({fmt})"
                  else f"{_fmt(mps / peer)}x" if mps and peer else "-"
                  for fmt, peer in peers.items()]
            rows.append((f"{case}, {name}: speed vs MONAI fp32 (contiguous / channels-last) / "
                         "fraction of the fp32 limit",
                         f"{vs[0]} / {vs[1]} / "
                         f"{_fmt(_get(c, 'fraction_of_fp32_limit', 'median'))}"))
    for case, v in _get(d, "allocator", default={}).items():
        for name, c in v.get("configurations", {}).items():
            ratio = _get(c, "speed_vs_monai_fp32", "median")
            vs = f" / speed vs {c['monai_peer']}" if "monai_peer" in c else ""
            rss = _get(c, "peak_rss_bytes", "median", default=0) / 2**30
            rows.append((f"{case}, {name}: megavoxels/s{vs} / peak RSS",
                         f"{_fmt(_get(c, 'megapixels_per_s', 'median'))}"
                         + (f" / {_fmt(ratio)}x" if ratio is not None else "")
                         + f" / {_fmt(rss)} GiB"))
    profile = _get(d, "profile", default={})
    for case, part in (profile.items() if isinstance(profile, dict) else []):
        runs = {k: v for k, v in part.items() if isinstance(v, dict) and "seconds" in v} \
            if isinstance(part, dict) else {}
        if len(runs) > 1:
            rows.append((f"3D tile {part['tile']}, {case}: one forward pass, "
                         + " -> ".join(runs) + " (seconds, system CPU s)",
                         " -> ".join(f"{_fmt(r['seconds'])} s ({_fmt(r['system_cpu_s'])})"
                                     for r in runs.values())))
    rows += _monai_best(d)
    rows += _budgets(d)
    rows += _defaults(d)
    for n, m in _get(d, "memory", "sizes", default={}).items():
        rows.append((f"memory {n}² (memmap in and out): peak RSS",
                     f"{_fmt(m['peak_rss_bytes'] / 1e9)} GB"))
    return rows


def _layers(d):
    """Where a 3D prediction's fraction of the conv limit goes (bench/predict3d.py --layers)."""
    cpu = _get(d, "machine", "cpu", "model", default="?")
    rows = []
    for case, part in (_get(d, "layers", default={}) or {}).items():
        rows.append((f"cicek2016 {case} fp32, {cpu}: fraction of the conv limit: convolutions "
                     "alone / one tile pass / whole volume (predicted from the pass, halo "
                     "and cover factors)",
                     f"{_fmt(part['convolutions_fraction_of_limit'])} / "
                     f"{_fmt(part['whole_pass_fraction_of_limit'])} / "
                     f"{_fmt(part['volume_fraction_of_limit'])} "
                     f"({_fmt(part['volume_fraction_expected'])})"))
        rows.append((f"cicek2016 {case}: tile {part['tile']} convolutions over the ideal "
                     "(halo) / tiles over the volume (cover)",
                     f"{_fmt(part['halo_factor'])}x / {_fmt(part['cover_factor'])}x"))
    return rows + _prediction(d)


def _train_step(d):
    cpu = _get(d, "machine", "cpu", "model", default="?")
    return [(f"{r['network']} training step, tile {'x'.join(map(str, r['tile']))}, fp32, {cpu}: "
             "best step s / fraction of the forward conv limit (3x forward FLOPs)",
             f"{_fmt(r['best_step_s'])} / {_fmt(r['fraction_of_limit'])}")
            for r in d.get("runs", [])] + [
        (f"{r['network']} training step, tile {'x'.join(map(str, r['tile']))}, fp32, {cpu}: "
         "convolutions alone (forward, input and weight gradients), seconds and fraction of the "
         "forward conv limit, useg's ways / each layer's fastest way",
         f"{_fmt(r['convolution_seconds']['useg'])} s, "
         f"{_fmt(r['fraction_of_limit_convolutions_only']['useg'])} / "
         f"{_fmt(r['convolution_seconds']['fastest'])} s, "
         f"{_fmt(r['fraction_of_limit_convolutions_only']['fastest'])}")
        for r in d.get("layers", [])]


def _huge_pages(d):
    cpu = _get(d, "machine", "cpu", "model", default="?")
    rows = []
    for name, w in d.get("workloads", {}).items():
        small, huge = w["4 KiB pages"], w["huge pages"]
        rows.append((f"{name}, {cpu}: seconds with 4 KiB pages -> huge pages (speed-up) / "
                     "peak RSS GiB",
                     f"{_fmt(small['median_s'])} -> {_fmt(huge['median_s'])} "
                     f"({_fmt(small['median_s'] / huge['median_s'])}x) / "
                     f"{_fmt(small['peak_rss_gib'])} -> {_fmt(huge['peak_rss_gib'])}"))
    return rows


def _summary_rows(d) -> list[tuple[str, str]]:
    """Benchmarks that write a flat ``summary`` dict of headline figures."""
    return [(k, _fmt(v)) for k, v in (_get(d, "summary", default={}) or {}).items()
            if not isinstance(v, (dict, list))]


def _conv_kernels(d):
    cpu = _get(d, "machine", "cpu", "model", default="?")
    return [(f"3D U-Net width {r['width']}, depth {r['depth']}, {r['tile']}^3, {cpu}: training "
             "step / forward, useg's convolutions over PyTorch's choice (same run)",
             f"{_fmt(r['step']['speedup'])}x / {_fmt(r['forward']['speedup'])}x")
            for r in _get(d, "rows", default=[])]


def _flyem_neurons(d):
    s = _get(d, "summary", "chosen_on_annotated", default={}) or {}
    return [(f"FlyEM crop, 5,5,3 annotated slices, recipe {d.get('recipe', 'base')}: adapted "
             "Rand error of the neurons on the unannotated voxels (way chosen on the annotated "
             "planes; mean, sd, seeds)",
             f"{_fmt(s.get('mean'))}, {_fmt(s.get('sd'))}, {s.get('n')}")]


def _flyem_recipe(d):
    rows = []
    for split in ("validation", "test"):
        for r in d.get(split, []):
            chosen = " (chosen)" if r["candidate"] == d.get("chosen") else ""
            rows.append((f"FlyEM {split} crop, 5,5,3 annotated slices, recipe "
                         f"{r['candidate']}{chosen}: boundary IoU (argmax) on the unannotated "
                         "voxels, mean, sd, seeds",
                         f"{_fmt(r['argmax']['mean'])}, {_fmt(r['argmax']['std'])}, "
                         f"{r['seeds']}"))
    return rows


def _isbi_errors(d):
    e = d.get("errors", {})
    share = e.get("share_of_errors_within", {})
    beyond = e.get("pixel_error_beyond", {})
    return [(f"ISBI 2012 validation slices, {d.get('model')}: pixel error; share of its errors "
             "within 1 / 2 / 5 px of a drawn membrane edge; membrane drawn / predicted",
             f"{_fmt(e.get('pixel_error'))}; {_fmt(share.get('1'))} / {_fmt(share.get('2'))} / "
             f"{_fmt(share.get('5'))}; {_fmt(e.get('membrane_drawn'))} / "
             f"{_fmt(e.get('membrane_predicted'))}"),
            ("  pixel error not counting the errors within 2 px of a drawn edge",
             _fmt(beyond.get("2")))]


def _isbi_ensemble(d):
    return [(f"ISBI 2012 validation, mean map of {d.get('recipe')} seeds "
             f"{','.join(map(str, r['seeds']))}: pixel error / adapted Rand error (training "
             "min, summed)",
             f"{_fmt(r['validation']['pixel_error'])} / "
             f"{_fmt(r['validation']['adapted_rand_error'])} ({_fmt(r['train_min'])})")
            for r in d.get("rows", []) if len(r["seeds"]) > 1]


def _isbi_fit(d):
    return [(f"ISBI 2012, {r['model']}: smallest pixel error over thresholds, training slices "
             "0..14 / validation slices 15..19 (diagnostic)",
             f"{_fmt(r['train']['best'])} / {_fmt(r['validation']['best'])}")
            for r in d.get("rows", [])]


def _isbi_segment(d):
    rows = []
    for way, r in _get(d, "ways", default={}).items():
        t = r.get("test", {})
        chosen = " (chosen on validation)" if way == d.get("chosen_way") else ""
        rows.append((f"ISBI 2012 test slices 20..24, em-membrane, cells by {way}{chosen}: "
                     "adapted Rand / pixel error",
                     f"{_fmt(t.get('adapted_rand_error'))} / {_fmt(t.get('pixel_error'))}"))
    return rows


def _isbi_recipe(d):
    rows = []
    for r in _get(d, "table", default=[]):
        chosen = " (chosen)" if r["candidate"] == d.get("chosen") else ""
        value = (f"{_fmt(r['val_criterion']['mean'])} +- {_fmt(r['val_criterion']['std'])} "
                 f"(pixel {_fmt(r['val_pixel_error']['mean'])}, adapted Rand "
                 f"{_fmt(r['val_adapted_rand_error']['mean'])})")
        if "test_pixel_error" in r:
            value += (f"; test pixel {_fmt(r['test_pixel_error']['mean'])}, adapted Rand "
                      f"{_fmt(r['test_adapted_rand_error']['mean'])}")
        rows.append((f"ISBI 2012 recipe {r['candidate']}{chosen}, seeds {r['seeds']}: "
                     "validation pixel + adapted Rand error at one point, mean +- std", value))
    return rows


def _isbi(d):
    rows = []
    for name, v in _get(d, "variants", default={}).items():
        t = v.get("test_at_operating_point", {})
        rows.append((f"ISBI 2012 test slices 20..24, {name}, one operating point chosen on "
                     "15..19: adapted Rand / pixel / warping error",
                     f"{_fmt(t.get('adapted_rand_error'))} / {_fmt(t.get('pixel_error'))} / "
                     f"{_fmt(t.get('warping_error'))} (threshold "
                     f"{_get(v, 'operating_point', 'threshold')}, "
                     f"{_fmt(_get(v, 'seconds', 'total', default=0) / 60, 3)} min wall, "
                     f"{_get(d, 'machine', 'cpu', 'model')})"))
    for name, v in (_get(d, "earlier_protocol", "variants", default={}) or {}).items():
        b = v.get("best", {})
        rows.append((f"earlier protocol (thresholds chosen on the reported slices), {name}: "
                     "adapted Rand / pixel / warping error",
                     f"{_fmt(_get(b, 'adapted_rand_error', 'value'))} / "
                     f"{_fmt(_get(b, 'pixel_error', 'value'))} / "
                     f"{_fmt(_get(b, 'warping_error', 'value'))}"))
    return rows


def _spread(c) -> str:
    return f"{_fmt(c['mean'])} ± {_fmt(c['std'], 2)} (n={c['n']})"


def _sparse3d(d):
    rows = []
    for config, part in (_get(d, "configurations", default={}) or {}).items():
        for c in part.get("table1", []):
            rows.append((f"{config}: 3D U-Net, slices z,y,x = {c['slices_zyx']}: boundary IoU "
                         "(unannotated, argmax; mean ± std over seeds)", _spread(c["argmax"])))
        for net, t in part.get("table2", {}).items():
            rows.append((f"{config}: {net} U-Net, slices {part.get('table2_setting')}: "
                         "boundary IoU (unannotated, argmax)", _spread(t["argmax"])))
    # The earlier single-seed layout (a top-level table1), or kept beside the seeded parts.
    earlier = d.get("earlier_single_seed") or (d if "table1" in d else None)
    for r in (earlier or {}).get("table1", []):
        rows.append((f"earlier, one seed: 3D U-Net, slices z,y,x = {r['slices_zyx']}: boundary "
                     "IoU (unannotated, argmax)", _fmt(r["iou_boundary_unannotated"])))
    for r in (earlier or {}).get("table2", []):
        rows.append((f"earlier, one seed: {r['net']} U-Net, slices 3,3,2: boundary IoU "
                     "(unannotated, argmax)", _fmt(r["iou_boundary_unannotated"])))
    return rows


def _scale(d):
    rows = []
    for run, r in d.items():
        s = _get(r, "summary", default={})
        rows.append((f"dask {run}: voxels/s with 1 / 2 workers, peak RSS per worker",
                     f"{_fmt(_get(s, '1', 'voxels_per_s', 'median'))} / "
                     f"{_fmt(_get(s, '2', 'voxels_per_s', 'median'))}, "
                     f"{_fmt(_get(s, '2', 'peak_rss_MB_per_worker'))} MB"))
    return rows


def _nuclei(d):
    rows = []
    methods = [(f"useg --label-mode {r['mode']}"
                f"{' (chosen on validation)' if r['mode'] == d.get('useg_chosen_mode') else ''}",
                r.get("val_object_f1"), r["test"]) for r in d.get("useg", [])]
    methods.append(("classical (hematoxylin, Otsu, watershed)",
                    _get(d, "classical", "val_object_f1"), _get(d, "classical", "test")))
    if _get(d, "peer", "ran"):
        methods.append((f"peer {_get(d, 'peer', 'record', 'peer', default='cellpose')}",
                        _get(d, "peer", "record", "val_object_f1"), _get(d, "peer", "test")))
    for name, val, t in methods:
        rows.append((f"GBM-40 nuclei test gbm36-40, {name}: object F1@0.5 / AP 0.5:0.95 / AJI "
                     "(val F1 of the choice)",
                     f"{_fmt(t['f1'])} / {_fmt(t['average_precision'])} / {_fmt(t['aji'])} "
                     f"({_fmt(val)})"))
    return rows


def _ovules3d(d):
    return [(f"PlantSeg ovule test slab, {name}: adapted Rand / VOI split / VOI merge",
             f"{_fmt(r['test']['adapted_rand_error'])} / {_fmt(r['test']['voi_split'])} / "
             f"{_fmt(r['test']['voi_merge'])}") for name, r in d.get("methods", {}).items()]


def _recipes(d):
    rows = []
    for r in d.get("runs", []):
        if "failed" in r:
            rows.append((f"recipe {r['recipe']} {r['ndim']}D", "failed"))
        elif r.get("whole_run", True):
            rows.append((f"recipe {r['recipe']} {r['ndim']}D: steps / s per step / wall min",
                         f"{r['steps']} / {_fmt(r['s_per_step'])} / {_fmt(r['wall_s'] / 60)}"))
        else:
            rows.append((f"recipe {r['recipe']} {r['ndim']}D (a few steps): s per step / "
                         f"estimated hours for its {r['recipe_steps']} steps",
                         f"{_fmt(r['s_per_step'])} / {_fmt(r['estimated_steps_s'] / 3600)}"))
    return rows


def _demo(d):
    s = d.get("summary", {})
    floor = s.get("floor") or {}
    return [("make demo: pixel error / adapted Rand error (floor) / wall s",
             f"{_fmt(s.get('pixel_error'))} / {_fmt(s.get('adapted_rand_error'))} "
             f"({_fmt(floor.get('pixel_error'))} / {_fmt(floor.get('adapted_rand_error'))}) / "
             f"{_fmt(d.get('wall_s'))}")]


EXTRACT: dict[str, Callable] = {
    "demo": _demo, "recipes": _recipes,
    "nuclei": _nuclei, "ovules3d": _ovules3d,
    "isbi2012": _isbi, "isbi2012_segment": _isbi_segment,
    "isbi2012_errors": _isbi_errors, "isbi2012_recipe": _isbi_recipe,
    "isbi2012_ensemble": _isbi_ensemble, "isbi2012_fit": _isbi_fit,
    "flyem_neurons": _flyem_neurons, "flyem_neurons_long": _flyem_neurons,
    "flyem_neurons_longer": _flyem_neurons, "flyem_neurons_longest": _flyem_neurons,
    "flyem_neurons_long-15k": _flyem_neurons,
    "flyem_recipe": _flyem_recipe, "conv_kernels": _conv_kernels,
    "sparse3d": _sparse3d, "scale": _scale,
    "shapes": _shapes, "weightmap": _weightmap, "augment": _augment,
    "train_throughput": _train_throughput, "loader_workers": _loader_workers,
    "predict": _prediction, "predict3d": _prediction,
    "predict3d_shapes": _prediction, "predict3d_budgets": _prediction,
    "predict3d_defaults": _prediction,
    "predict_sweep2048": _prediction,
    "predict3d_layers": _layers, "precision": _precision, "precision_bf16_cpu": _precision,
    "train_step": _train_step,
    "huge_pages": _huge_pages,
}


def summarise() -> str:
    lines = ["# Benchmarks", "",
             "Benchmarks are not tests. Each runs with one command, prints a table and writes "
             "JSON to `bench/results/`; peers are measured in the same run and figures are "
             "ratios, because this 2-core machine is shared and absolute seconds mean little. "
             "`make bench` reruns them all and regenerates this page "
             "(`python bench/run_all.py --summary-only` only regenerates it).", "",
             "| benchmark | figure | value | command |", "|---|---|---|---|"]
    for name, (cmd, result) in BENCHES.items():
        path = RESULTS / result
        if not path.exists():
            lines.append(f"| {name} | not run yet | - | `python {' '.join(cmd)}` |")
            continue
        d = json.loads(path.read_text())
        rows = EXTRACT.get(name, _summary_rows)(d) or [("see JSON", f"`results/{result}`")]
        parts = _get(d, "part_commands", default={}) or {}
        command = (" ; ".join(dict.fromkeys(parts.values())) or _get(d, "command", default=None)
                   or _get(d, "size384", "command")
                   or f"python {' '.join(cmd)}")
        for i, (label, value) in enumerate(rows):
            lines.append(f"| {name if i == 0 else ''} | {label} | {value} | "
                         f"{'`' + command + '`' if i == 0 else ''} |")
    lines += ["", "Details, per-benchmark notes and full tables: the JSON and markdown files in "
              "`bench/results/`.", "",
              "Peers that need their own environment: `bench/nuclei.py --peer-python "
              "/work/peer_venv/bin/python` runs Cellpose 3 (trained from scratch, offline) from "
              "a virtual environment made with `python3 -m venv /work/peer_venv && "
              "/work/peer_venv/bin/pip install torch==2.13.0 \"cellpose<4\"` (Cellpose pins "
              "an older NumPy than useg's).", "",
              "On a lent GPU (the `device` tool): `bench/gpu.py` is one prepared run (CUDA "
              "checks, conv limit, training steps, prediction against MONAI, `gpu-paper` on "
              "ISBI 2012) that fits one call. Here, once: `ln -sfn ../shared/data .devdata` and "
              "`python3 -m pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1`; "
              "then two `run` calls back to back (the second finds the machine warm), carry "
              "`[\".whl\", \".devdata/isbi2012/train\"]`: command `sh bench/gpu_run.sh 400 "
              "check limit train predict2d predict3d` with timeout_s 470, then `sh "
              "bench/gpu_run.sh 360 isbi` with timeout_s 420, each answer's `gpu.json` copied "
              "aside; back here, `.venv/bin/python bench/gpu.py --publish first.json "
              "second.json` keeps them as `bench/results/gpu.json` and `.md`. "
              "`.venv/bin/python bench/gpu.py --quick --device cpu --out /tmp/g.json` checks "
              "the script itself at toy sizes.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES))
    args = ap.parse_args()
    if not args.summary_only:
        for name in args.only or BENCHES:
            cmd = [sys.executable, *BENCHES[name][0]]
            print(f"== {name}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
    text = summarise()
    (BENCH / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

"""Prediction speed and memory on CPU, 3D: useg's overlap tiles against MONAI's sliding window.

Run: .venv/bin/python bench/predict3d.py [--quick] [--sizes 256] [--shapes 128x512x512]
     [--widths 16] [--repeats 1] [--precisions fp32 bf16]
     [--roi 128] [--keep-freed] [--profile] [--no-speed] [--budgets 2 4 8 16]
     [--monai-sweep [--sweep-rois 64 96 128] [--sweep-overlaps 0.25 0.5]
     [--sweep-precisions fp32 bf16] [--sweep-widths 16]]

The 3D counterpart of bench/predict.py (same worker, same measurements): the 3D U-Net
(``cicek2016``, with running batch-norm statistics, ``batch_stats=False``) on a cube of synthetic
touching cells, useg with its default tile (fp32, and bf16 autocast where the CPU has bf16
instructions, or as ``--precisions`` asks) against MONAI's
``sliding_window_inference`` over the same network made same-padded (same weights), roi 128^3,
overlap 0.25, gaussian blending. The machine's limit uses a 64->64 3x3x3 convolution at 64^3
(channels_last_3d).

The default width is 16, a quarter of the paper's convolution work; ``--widths 16 32`` adds the
paper's network (width 32), which takes about 40 more minutes on two cores, mostly MONAI's.

``--profile`` (alone, or beside a speed run) measures where one forward pass of a default tile
goes, after two warm-up passes: wall, user and system CPU seconds, minor page faults, and the
profiler's self CPU time per operator group, in three settings made at the process's start:
4 KiB pages (``THP_MEM_ALLOC_ENABLE=0``), huge pages for PyTorch's large buffers (how useg runs:
``import useg`` asks for them), and huge pages with glibc's mmap and trim thresholds raised
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), which keeps freed activations for
reuse instead of unmapping them.

``--keep-freed`` measures that setting (the README's optional one for 3D on Linux) on whole
volumes, with its memory cost: useg fp32 and bf16 and MONAI channels-last, each with glibc as it
comes and with the thresholds raised from the worker's start; every ratio to MONAI is taken under
the same setting for both (the ``allocator`` part of the results).

``--layers`` measures the ceiling the network itself sets: every convolution of the network on
a default tile, run alone (the best of three after a warm-up), against the limit's convolution
measured in the same process, and one whole forward pass of that tile. The FLOPs of all
convolutions over their summed seconds, as a fraction of the limit, is what a prediction could
reach if nothing but the convolutions took time; the whole pass over the summed convolutions is
what the rest (pooling, up-convolutions, copies, ReLU) adds. It also gives, by arithmetic on
the network's shapes, the convolutions of one pass over the whole mirror-padded volume (no
tiles at all) over the ideal, for the volume shapes of the speed runs: valid convolutions
compute the mirrored border's context once even then, so one tile pass's fraction divided by
that factor bounds what any tiling, or an executor that computes no voxel twice, can reach.

``--budgets 2 4 8 16`` times useg at each memory budget (GiB; ``predict(memory_gib=...)``,
``useg predict --memory``), with glibc as it comes and with freed memory kept, in fresh
processes, interleaved over ``--repeats``: seconds, peak memory, the tile the budget gives and
the convolutions its tiles compute over those of one ideal pass (``budgets`` part). A larger
budget buys less recomputed context with memory; keeping freed memory buys the kernel's zeroing
with memory too; the table shows which buys more for the same peak memory.

``--monai-sweep`` compares useg with MONAI in every configuration of a sweep (memory format x
roi 64/96/128 x overlap 0.25/0.5, each in useg's precision: fp32, and bf16 autocast where the
CPU has bf16 instructions) and then, back to back, with the fastest of them, and compares their
outputs (the ``monai_best`` part; see ``monai_sweep`` in bench/predict.py). Modelled from the
windows MONAI runs and the committed rates of the 2-core avx512_bf16 machine: about 1.7 hours at
256^3 and width 16 (1.1 of them fp32), about 5 hours at width 32 (``--sweep-widths 16`` keeps the
sweep to width 16).

Results: bench/results/predict3d.json (a run keeps the parts it did not measure, each with the
command that did).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH, KEEP_FREED, RESULTS, best_of, summary
from predict import (
    add_precision_argument,
    add_sweep_arguments,
    machine_line,
    monai_sweep,
    print_sweep,
    print_table,
    result_head,
    run_worker,
    save_parts,
    speed_comparison,
)

from useg.device import MALLOC_ENV_VARIABLES

# Operator groups of the profile, by the name of the operator that does the work.
GROUPS = {
    "aten::mkldnn_convolution": "3x3x3 convolutions and head",
    "aten::_convolution": "2x2x2 up-convolutions",
    "aten::max_pool3d_with_indices": "max pooling",
    "aten::copy_": "copies (skip crops, concatenation)",
    "aten::clamp_min_": "ReLU",
}

# The profile's allocator settings, each from the worker's start. "huge pages" is how useg runs
# (importing useg asks PyTorch for them); a worker inherits that unless told 0.
PROFILE_SETTINGS = {
    "4 KiB pages": {"THP_MEM_ALLOC_ENABLE": "0"},
    "huge pages": {},
    "huge pages, freed memory kept": KEEP_FREED,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a 96^3 volume, roi 64")
    parser.add_argument("--sizes", type=int, nargs="+", help="volume sizes (default 256)")
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[], metavar="ZxYxX",
                        help="volumes of the speed comparison given by their shape in voxels "
                             "(e.g. 128x512x512, anisotropic); alone, instead of --sizes there")
    parser.add_argument("--widths", type=int, nargs="+", help="network widths (default 16)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    parser.add_argument("--roi", type=int, help="MONAI roi side (default 128; 64 with --quick)")
    parser.add_argument(
        "--monai-formats",
        nargs="+",
        default=["contiguous", "channels_last"],
        choices=["contiguous", "channels_last"],
    )
    parser.add_argument("--threads", type=int, help="torch threads per run (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS / "predict3d.json")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one tile with 4 KiB pages, huge pages, and huge pages with freed "
        "memory kept",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    parser.add_argument(
        "--layers",
        action="store_true",
        help="each convolution of a default tile alone against the limit",
    )
    parser.add_argument(
        "--keep-freed",
        action="store_true",
        help="also time useg with glibc keeping freed memory (set at its start)",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="useg's default (3D on the CPU: freed memory kept, tiles for half the default "
        "budget) against the previous one (USEG_KEEP_FREED_MEMORY=0), interleaved",
    )
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        metavar="GIB",
        help="time useg at these memory budgets (GiB), default and freed memory kept",
    )
    add_precision_argument(parser)
    add_sweep_arguments(parser, 3)
    parser.add_argument("--profile-worker", help=argparse.SUPPRESS)
    parser.add_argument("--layers-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_worker:
        print(json.dumps(profile_worker(json.loads(args.profile_worker))))
        return
    if args.layers_worker:
        print(json.dumps(layers_worker(json.loads(args.layers_worker))))
        return
    sizes = args.sizes or ([96] if args.quick else [256])
    widths = args.widths or [16]
    roi = args.roi or (64 if args.quick else 128)
    started = time.time()
    result = result_head(
        "3D prediction on CPU: useg overlap tiles vs MONAI sliding window",
        {
            "network": "cicek2016 with batch_stats=False (valid) for useg; the same weights with "
            "padding='same' for MONAI",
            "volume": "synthetic touching cells (useg.workflows.synthetic), 128^3 mirror-tiled, "
            "float32",
            "monai": {"roi": roi, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1},
            "useg": "predict() with its default tile; bf16 = autocast",
            "limit": "conv GFLOP/s of a 64->64 3x3x3 conv at 64^3 channels_last_3d (mean of "
            "before and after each prediction, same process) / FLOPs per output voxel",
            "torch_threads": args.threads or "all (torch default)",
            "freed memory kept": f"environment from the worker's start: {KEEP_FREED}",
        },
    )
    if not args.no_speed:
        with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
            cases = [*(args.sizes or ([] if args.shapes else sizes)), *args.shapes]
            print(f"speed: sizes {cases}, widths {widths}, {args.repeats} repeat(s)", flush=True)
            result["speed"] = speed_comparison(
                args, 3, "cicek2016", cases, widths, roi, Path(tmp), BENCH / "predict.py"
            )
    if args.keep_freed:
        with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
            print(f"allocator: sizes {sizes}, widths {widths}", flush=True)
            variant = argparse.Namespace(
                **{
                    **vars(args),
                    "monai_formats": ["channels_last"],
                    "useg_env_variants": {"freed memory kept": KEEP_FREED},
                }
            )
            result["allocator"] = speed_comparison(
                variant, 3, "cicek2016", sizes, widths, roi, Path(tmp), BENCH / "predict.py"
            )
    if args.monai_sweep:
        with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
            result["monai_best"] = monai_sweep(
                args, 3, "cicek2016", sizes, widths, Path(tmp), BENCH / "predict.py"
            )
    if args.defaults:
        with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
            result["defaults"] = {
                f"width {w}, {s}^3": defaults_part(w, s, args.repeats, Path(tmp))
                for s in sizes
                for w in widths
            }
    if args.budgets:
        with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
            result["budgets"] = {
                f"width {w}, {s}^3": budget_part(w, s, args.budgets, args.repeats, Path(tmp))
                for s in sizes
                for w in widths
            }
    if args.layers:
        result["layers"] = {
            f"width {w}, {s}^3": run_worker(
                {"width": w, "size": s}, Path(__file__), {}, flag="--layers-worker"
            )
            for s in sizes
            for w in widths
        }
    if args.profile:
        result["profile"] = {f"width {w}, {s}^3": profile_part(w, s) for s in sizes for w in widths}
    result["elapsed_s"] = time.time() - started
    result = save_parts(args.output, result)
    print(machine_line(result["machine"]))
    for part in ("speed", "allocator"):
        if part in result:
            print_table(result[part])
    if "monai_best" in result:
        print_sweep(result["monai_best"])
    for key, part in result.get("defaults", {}).items():
        print_defaults(key, part)
    for key, part in result.get("budgets", {}).items():
        print_budgets(key, part)
    for key, part in result.get("layers", {}).items():
        print_layers(key, part)
    for key, part in result.get("profile", {}).items():
        print_profile(key, part)
    print(f"elapsed {result['elapsed_s'] / 60:.1f} min -> {args.output}")


def _shape(text: str) -> tuple[int, int, int]:
    """A volume shape from ``ZxYxX`` (voxels)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give a shape as ZxYxX, e.g. 128x512x512")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


# The allocator settings of the budget part, each from the worker's start (huge pages in both).
BUDGET_ALLOCATORS = {"glibc default": {}, "freed memory kept": KEEP_FREED}


# useg's default for a 3D prediction on the CPU, and the one before it; glibc's own variables
# are cleared for both (dask's distributed, once imported, exports one).
DEFAULTS = {"default": {"USEG_KEEP_FREED_MEMORY": "1"},
            "previous default (freed memory handed back)": {"USEG_KEEP_FREED_MEMORY": "0"}}


def defaults_part(width: int, size: int, repeats: int, tmp: Path) -> dict:
    """useg fp32 on a ``size``^3 volume with its default tile, as it runs by default and as it
    ran before it kept freed memory, interleaved over ``repeats`` in fresh processes."""
    import numpy as np
    from predict import flops_per_pixel, synthetic_image

    from useg.nets import UNet

    net = UNet("cicek2016", width=width, batch_stats=False)
    fpp = flops_per_pixel(net.config)
    image = tmp / f"image_{size}.npy"
    np.save(image, synthetic_image((size,) * 3))
    runs: dict[str, list] = {label: [] for label in DEFAULTS}
    # The workers inherit this process's environment (run_worker), glibc's variables too.
    for name in MALLOC_ENV_VARIABLES:
        os.environ.pop(name, None)
    for _ in range(repeats):
        for label, env in DEFAULTS.items():
            r = _timed_useg(width, image, net.config.classes, fpp, env)
            runs[label].append(r)
            print(f"  width {width}, {size}^3, {label:<44} {r['seconds']:7.1f} s  rss "
                  f"{r['peak_rss_bytes'] / 2**30:5.2f} GiB  tile {r['tile']}  kept "
                  f"{r['freed_memory_kept']}  {r['fraction_of_fp32_limit']:.3f} of the limit",
                  flush=True)
    part: dict[str, Any] = {"flops_per_output_pixel": fpp, "runs": runs}
    for label, rs in runs.items():
        part[label] = {"tile": rs[0]["tile"], "freed_memory_kept": rs[0]["freed_memory_kept"],
                       **_run_summaries(rs)}
    new, old = (part[label]["seconds"]["median"] for label in DEFAULTS)
    part["speedup_of_medians"] = old / new
    return part


def _timed_useg(width: int, image: Path, classes: int, fpp: float, env: dict,
                memory_gib: float | None = None) -> dict:
    """One fp32 prediction of the saved volume by cicek2016 at ``width`` in a fresh process
    (``env`` added to its environment), with its fraction of the fp32 limit."""
    spec = {"kind": "useg", "ndim": 3, "preset": "cicek2016", "width": width,
            "image": str(image), "classes": classes, "precision": "fp32"}
    if memory_gib is not None:
        spec["memory_gib"] = memory_gib
    r = run_worker(spec, BENCH / "predict.py", env)
    r["fraction_of_fp32_limit"] = r["megapixels_per_s"] * 1e6 * fpp / (r["conv_gflops_fp32"]
                                                                         * 1e9)
    return r


def _run_summaries(runs: list[dict]) -> dict:
    """Seconds, peak memory and fraction of the limit of repeated runs of one configuration."""
    return {key: summary([r[key] for r in runs])
            for key in ("seconds", "peak_rss_bytes", "fraction_of_fp32_limit")}


def print_defaults(key: str, part: dict) -> None:
    print(f"default against previous default, {key} (fp32; medians)")
    for label in DEFAULTS:
        e = part[label]
        print(f"  {label:<44} tile {'x'.join(map(str, e['tile'])):>12}  "
              f"{e['seconds']['median']:7.1f} s  peak RSS "
              f"{e['peak_rss_bytes']['median'] / 2**30:5.2f} GiB  "
              f"{e['fraction_of_fp32_limit']['median']:.3f} of the limit")
    print(f"  previous over default: {part['speedup_of_medians']:.2f}x")


def budget_part(width: int, size: int, budgets: list[float], repeats: int, tmp: Path) -> dict:
    """useg fp32 on a ``size``^3 volume at each memory budget and allocator setting, every
    configuration once per repeat, in fresh processes; with each budget's tile, number of
    tiles and modelled work (convolutions of all tiles over those of one pass without tiling
    overhead, :func:`predict.flops_per_pixel`)."""
    import math

    import numpy as np
    import torch
    from predict import flops_per_pixel, synthetic_image

    from useg.inference.tile_choice import tile_geometry
    from useg.inference.tiling import plan_tiles
    from useg.nets import UNet
    from useg.nets.geometry import conv_macs

    shape = (size,) * 3
    net = UNet("cicek2016", width=width, batch_stats=False)
    fpp = flops_per_pixel(net.config)
    image = tmp / f"image_{size}.npy"
    np.save(image, synthetic_image(shape))
    part: dict[str, Any] = {"flops_per_output_pixel": fpp, "budgets": {}}
    for gib in budgets:
        tile, h, margin, step = tile_geometry(net, shape, None, torch.device("cpu"), False,
                                              memory_gib=gib)
        tiles = len(plan_tiles(shape, tile, h, margin, step))
        work = conv_macs(net.config, tile) * tiles * 2 / (fpp * math.prod(shape))
        part["budgets"][f"{gib:g}"] = {"tile": list(tile), "tiles": tiles,
                                       "work_over_one_ideal_pass": work, "runs": {}}
    for _ in range(repeats):
        for gib in budgets:
            for label, env in BUDGET_ALLOCATORS.items():
                r = _timed_useg(width, image, net.config.classes, fpp, env, memory_gib=gib)
                part["budgets"][f"{gib:g}"]["runs"].setdefault(label, []).append(r)
                print(f"  width {width}, {size}^3, {gib:g} GiB, {label:<18} {r['seconds']:7.1f} s"
                      f"  rss {r['peak_rss_bytes'] / 2**30:5.2f} GiB  tile {r['tile']}  "
                      f"{r['fraction_of_fp32_limit']:.3f} of the limit  load "
                      f"{r['loadavg_before']:.1f}", flush=True)
    for entry in part["budgets"].values():
        for label, rs in entry["runs"].items():
            entry[label] = _run_summaries(rs)
    return part


def print_budgets(key: str, part: dict) -> None:
    print(f"memory budgets, {key} (fp32; medians)")
    print(f"  {'GiB':>5} {'tile':>18} {'tiles':>5} {'work':>6}   " + "".join(
        f"{label + ': s, RSS GiB, of limit':>44}" for label in BUDGET_ALLOCATORS))
    for gib, entry in part["budgets"].items():
        cells = "".join(
            f"{entry[label]['seconds']['median']:>24.1f}"
            f"{entry[label]['peak_rss_bytes']['median'] / 2**30:>10.2f}"
            f"{entry[label]['fraction_of_fp32_limit']['median']:>10.3f}"
            for label in BUDGET_ALLOCATORS if label in entry)
        print(f"  {gib:>5} {'x'.join(map(str, entry['tile'])):>18} {entry['tiles']:>5} "
              f"{entry['work_over_one_ideal_pass']:>6.2f}   {cells}")


def profile_part(width: int, size: int) -> dict:
    """One default tile of a ``size``^3 volume: with 4 KiB pages (PyTorch not asked for huge
    pages), as useg runs it (huge pages for large buffers, :mod:`useg`), and with glibc's mmap
    and trim thresholds raised as well, each set from the worker's start."""
    from useg.inference.tile_choice import default_tile
    from useg.nets import UNet

    # The tile predict uses, the same for both runs.
    tile = default_tile(UNet("cicek2016", width=width, batch_stats=False), (size,) * 3)
    part: dict[str, Any] = {"tile": list(tile)}
    for name, env in PROFILE_SETTINGS.items():
        part[name] = run_worker(
            {"width": width, "tile": list(tile)}, Path(__file__), env, flag="--profile-worker"
        )
    return part


def profile_worker(spec: dict) -> dict:
    """Times, page faults and operator groups of one forward pass after two warm-up passes
    (with freed memory kept, the heap settles during the second: the steady state of the
    later tiles of a volume)."""
    import resource

    import torch
    from torch.profiler import ProfilerActivity, profile

    from useg.device import huge_pages_in_effect
    from useg.nets import UNet
    from useg.nets.forward import inference_forward, inference_layers

    net = UNet("cicek2016", width=spec["width"], batch_stats=False).eval()
    layers = inference_layers(net)
    x = torch.rand(1, 1, *spec["tile"]).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        for _ in range(2):
            inference_forward(net, x, layers)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        inference_forward(net, x, layers)
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            inference_forward(net, x, layers)
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        group = GROUPS.get(event.key, "other")
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6
    return {
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "huge_pages_in_effect": huge_pages_in_effect(),
        "seconds": seconds,
        "user_cpu_s": after.ru_utime - before.ru_utime,
        "system_cpu_s": after.ru_stime - before.ru_stime,
        "minor_page_faults": after.ru_minflt - before.ru_minflt,
        "profiled_self_cpu_s_by_group": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
    }


def layers_worker(spec: dict) -> dict:
    """Each convolution of one default tile alone, the limit's convolution, one whole pass."""
    import math

    import numpy as np
    import torch
    from predict import (
        ONE_PASS_VOLUMES,
        conv_gflops,
        flops_per_pixel,
        layer_flops,
        one_pass_factor,
    )

    from useg.inference.predict import predict
    from useg.inference.tile_choice import default_tile
    from useg.nets import UNet
    from useg.nets.forward import inference_forward, inference_layers, memory_format

    net = UNet("cicek2016", width=spec["width"], batch_stats=False).eval()
    tile = default_tile(net, (spec["size"],) * 3)
    layers = inference_layers(net)
    fmt = memory_format(3)
    seen: list[tuple[torch.nn.Module, tuple, tuple]] = []
    record = {
        id(m): m
        for m in [*net.modules(), *(m for b in layers[0] + layers[1] for m in b)]
        if isinstance(m, torch.nn.modules.conv._ConvNd)
    }
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].shape, o.shape)))
        for m in record.values()
    ]
    x = torch.rand(1, 1, *tile).contiguous(memory_format=fmt)
    with torch.inference_mode():
        inference_forward(net, x, layers)
        for h in hooks:
            h.remove()
        limits = [conv_gflops(3, "fp32")]
        whole = best_of(lambda: inference_forward(net, x, layers))
        rows = []
        for module, shape_in, shape_out in seen:
            xi = torch.rand(*shape_in).contiguous(memory_format=fmt)
            seconds = best_of(lambda m=module, xi=xi: m(xi))
            flops = layer_flops(module, shape_out[2:])
            rows.append(
                {
                    "layer": f"{type(module).__name__} {module.in_channels}->"
                    f"{module.out_channels} k{module.kernel_size[0]}",
                    "out": list(shape_out[2:]),
                    "seconds": seconds,
                    "gflops": flops / 1e9,
                }
            )
        limits.append(conv_gflops(3, "fp32"))
    limit = sum(limits) / len(limits)
    conv_s = sum(r["seconds"] for r in rows)
    conv_gflop = sum(r["gflops"] for r in rows)
    for r in rows:
        r["fraction_of_limit"] = r["gflops"] / r["seconds"] / limit
    # Where a whole volume's fraction of the limit goes beyond one pass: a tile computes its
    # halo again (valid convolutions), and whole tiles overshoot the volume's edges.
    size = spec["size"]
    out = seen[-1][2][2:]
    per_voxel = flops_per_pixel(net.config)
    halo_factor = conv_gflop * 1e9 / (math.prod(out) * per_voxel)
    cover_factor = math.prod(-(-size // o) * o for o in out) / size**3
    one_pass = {"x".join(map(str, shape)): one_pass_factor(net.config, shape)
                for shape in dict.fromkeys(((size,) * 3, *ONE_PASS_VOLUMES))}
    volume = np.random.default_rng(0).random((size,) * 3, dtype=np.float32)
    t0 = time.perf_counter()
    predict(net, volume, progress=False, precision="fp32")
    predict_s = time.perf_counter() - t0
    return {
        "tile": list(tile),
        "threads": torch.get_num_threads(),
        "limit_gflops_fp32_before_after": limits,
        "layers": rows,
        "convolutions_seconds": conv_s,
        "whole_pass_seconds": whole,
        "convolutions_fraction_of_limit": conv_gflop / conv_s / limit,
        "whole_pass_fraction_of_limit": conv_gflop / whole / limit,
        "whole_over_convolutions": whole / conv_s,
        "halo_factor": halo_factor,
        "cover_factor": cover_factor,
        "volume_predict_seconds": predict_s,
        "volume_fraction_of_limit": size**3 * per_voxel / predict_s / (limit * 1e9),
        "volume_fraction_expected": conv_gflop / whole / limit / halo_factor / cover_factor,
        "one_volume_pass_factor": one_pass,
        "one_volume_pass_fraction_bound": {
            k: conv_gflop / whole / limit / f for k, f in one_pass.items()},
    }


def print_layers(key: str, part: dict) -> None:
    print(
        f"\nconvolutions alone, {key}, tile {part['tile']}, {part['threads']} thread(s), "
        f"limit {sum(part['limit_gflops_fp32_before_after']) / 2:.0f} GFLOP/s"
    )
    print(f"{'layer':<34}{'out':>16}{'ms':>9}{'of limit':>10}")
    for r in part["layers"]:
        print(
            f"{r['layer']:<34}{'x'.join(map(str, r['out'])):>16}{r['seconds'] * 1e3:>9.1f}"
            f"{r['fraction_of_limit']:>10.2f}"
        )
    print(
        f"all convolutions {part['convolutions_seconds']:.2f} s "
        f"({part['convolutions_fraction_of_limit']:.2f} of the limit); whole pass "
        f"{part['whole_pass_seconds']:.2f} s ({part['whole_pass_fraction_of_limit']:.2f} of the "
        f"limit, {part['whole_over_convolutions']:.2f}x the convolutions)"
    )
    print(
        f"a tile's convolutions over its output's share of the ideal: {part['halo_factor']:.2f}x "
        f"(halo); tiles over the volume: {part['cover_factor']:.2f}x; the whole volume by "
        f"predict(): {part['volume_predict_seconds']:.1f} s, "
        f"{part['volume_fraction_of_limit']:.2f} of the limit (one pass / halo / cover: "
        f"{part['volume_fraction_expected']:.2f})"
    )
    for shape, factor in part.get("one_volume_pass_factor", {}).items():
        print(
            f"one pass over the whole {shape} volume, no tiles: {factor:.2f}x the ideal's "
            f"convolutions; the most a prediction of it can reach: "
            f"{part['one_volume_pass_fraction_bound'][shape]:.2f} of the limit"
        )


def print_profile(key: str, part: dict) -> None:
    runs = {k: v for k, v in part.items() if isinstance(v, dict)}
    print(f"profile {key}, tile {part['tile']}")
    print(f"{'':38}" + "".join(f"{name:>20}" for name in runs))
    for field in ("seconds", "user_cpu_s", "system_cpu_s", "minor_page_faults"):
        print(f"  {field:36}" + "".join(f"{r[field]:20.4g}" for r in runs.values()))
    groups = next(iter(runs.values()))["profiled_self_cpu_s_by_group"]
    for group in groups:
        print(
            f"  {group:36}"
            + "".join(
                f"{r['profiled_self_cpu_s_by_group'].get(group, 0.0):20.3f}" for r in runs.values()
            )
        )


if __name__ == "__main__":
    main()

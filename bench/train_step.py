"""A training step against the machine's convolution limit (issue #16, target 3).

Run: .venv/bin/python bench/train_step.py [--quick] [--steps 3]

For each network: one bare training step (forward, softmax cross-entropy, backward, SGD with
momentum 0.99) on one tile already in memory, timed as the best of ``--steps`` after one
warm-up. The FLOPs of a step are those of every convolution and up-convolution of the forward
pass (counted with hooks on the real tile, so the halo of valid convolutions is included) times
three: the backward pass computes, per convolution, a gradient of the input and one of the
weights, each as many multiply-adds as the forward pass. The limit is the GFLOP/s of one
64->64 3-wide convolution in the same process (bench/predict.py's ``conv_gflops``, 2D or 3D,
the mean of before and after), forward only, so the fraction is an upper-bound comparison: a
backward convolution is rarely as fast as a forward one. One more step is profiled (PyTorch's
profiler, self CPU time per operator) to show where the rest goes.

Networks: the paper's 2D U-Net (``ronneberger2015``, width 64, 572x572 tile), the paper's 3D
U-Net (``cicek2016``, width 32, batch norm, 116x132x132 tile), and the CPU recipe's small ones.
The paper's 3D U-Net runs twice: as useg trains it, and with every weight gradient computed by
the batch/channel-swapped convolution (``useg.nets.conv``'s way before the per-offset matrix
products for large 3D layers), to compare the two in one run. The paper's networks run once more
each in a process of their own with 4 KiB pages (``THP_MEM_ALLOC_ENABLE=0``), against useg's
huge pages for PyTorch's large buffers (what ``import useg`` asks for).
fp32 (the precision ``auto`` picks on a CPU without bf16 instructions), channels-last.

Results: bench/results/train_step.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch
from _common import RESULTS, command_line, machine_info, publish
from predict import conv_gflops, layer_flops

import useg.nets.conv as conv
from useg.device import huge_pages_in_effect
from useg.nets import UNet, output_shape, valid_input_shape
from useg.training.losses import SegmentationLoss

# The network run with useg.nets.conv's per-offset weight gradient turned off.
SWAPPED = "3D paper, swapped weight gradient"
# (name, preset, overrides, tile) of the measured networks.
NETWORKS = (
    ("2D paper", "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper", "cicek2016", {"width": 32}, (116, 132, 132)),
    ("2D cpu-fast", "ronneberger2015", {"width": 16, "depth": 3}, (188, 188)),
    ("3D chosen (sparse3d)", "cicek2016", {"width": 8, "depth": 2, "padding": "same"},
     (44, 44, 44)),
    (SWAPPED, "cicek2016", {"width": 32}, (116, 132, 132)),
    ("2D paper, 4 KiB pages", "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper, 4 KiB pages", "cicek2016", {"width": 32}, (116, 132, 132)),
)
# Networks run in a process of their own without the huge pages that importing useg asks
# PyTorch for (it reads the setting once, at its first allocation), to show what they save.
SMALL_PAGES = " 4 KiB pages"


def conv_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of every convolution of one forward pass of ``x``."""
    total = [0.0]

    def count(module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        total[0] += layer_flops(module, out.shape[2:])

    hooks = [m.register_forward_hook(count) for m in net.modules()
             if isinstance(m, torch.nn.modules.conv._ConvNd)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return total[0]


def one_network(name: str, preset: str, overrides: dict, tile: tuple[int, ...],
                steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    net = UNet(preset, **overrides)
    cfg = net.config
    ndim = len(tile)
    tile = valid_input_shape(cfg, tile)
    fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
    net = net.to(memory_format=fmt).train()
    out = output_shape(cfg, tile)
    x = torch.randn(1, cfg.in_channels, *tile).contiguous(memory_format=fmt)
    y = torch.randint(0, cfg.classes, (1, *out))
    w = torch.ones(1, *out)
    loss_fn = SegmentationLoss()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
    forward_flops = conv_flops(net, x)
    limit_before = conv_gflops(ndim, "fp32")

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y, w)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step()  # warm-up: oneDNN picks and caches its kernels
    times = [step() for _ in range(steps)]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in events) or 1.0
    profile = [{"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / whole} for e in events[:8]]
    limit = (limit_before + conv_gflops(ndim, "fp32")) / 2
    seconds = min(times)
    step_flops = 3 * forward_flops
    return {
        "network": name, "preset": preset, "overrides": overrides, "tile": list(tile),
        "output": list(out), "parameters": sum(p.numel() for p in net.parameters()),
        "forward_gflop": forward_flops / 1e9, "step_gflop": step_flops / 1e9,
        "step_seconds": times, "best_step_s": seconds,
        "limit_gflops_fp32": limit, "limit_gflops_before_after": [limit_before, limit],
        "fraction_of_limit": step_flops / seconds / 1e9 / limit,
        "profile_one_step": profile, "huge_pages_in_effect": huge_pages_in_effect(),
    }


def small_pages_run(name: str, steps: int, quick: bool) -> dict[str, Any]:
    """``name``'s network measured in a child process that does not ask for huge pages."""
    cmd = [sys.executable, __file__, "--network-worker", name, "--steps", str(steps)]
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True,
                          env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the worker failed:\n{done.stderr[-2000:]}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return run


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# Training step against the convolution limit", "",
             f"Command: `{report['command']}`; CPU {m['cpu']['model']}, {m['date']}; fp32, "
             f"{report['threads']} thread(s). FLOPs = 3 x the forward convolutions of the tile; "
             "limit = one forward 64->64 convolution, same process.", "",
             "| network | tile -> output | step GFLOP | best step s | limit GFLOP/s | "
             "fraction of the limit |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['network']} | {'x'.join(map(str, r['tile']))} -> "
                     f"{'x'.join(map(str, r['output']))} | {r['step_gflop']:.0f} | "
                     f"{r['best_step_s']:.2f} | {r['limit_gflops_fp32']:.0f} | "
                     f"{r['fraction_of_limit']:.2f} |")
    lines += ["", "Where one step's time goes (self CPU time of its operators, top 5, one "
              "profiled step):", ""]
    for r in report["runs"]:
        top = ", ".join(f"{e['op']} {e['share']:.0%}" for e in r["profile_one_step"][:5])
        lines.append(f"- {r['network']}: {top}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--quick", action="store_true", help="smoke run: the small networks")
    parser.add_argument("--network-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 1 if args.quick else args.steps
    if args.network_worker:
        base = args.network_worker.removesuffix("," + SMALL_PAGES)
        _, preset, overrides, tile = next(n for n in NETWORKS if n[0] == base)
        print(json.dumps(one_network(args.network_worker, preset, overrides, tile, steps)))
        return
    machine = machine_info()
    networks = [NETWORKS[i] for i in (2, 3, 2)] if args.quick else NETWORKS
    if args.quick:  # the same small network in a child with 4 KiB pages, to smoke-test that
        networks[2] = (f"2D cpu-fast,{SMALL_PAGES}", *networks[2][1:])
    runs = []
    for name, preset, overrides, tile in networks:
        print(f"{name}: {preset} {overrides}, tile {tile}", flush=True)
        if name.endswith(SMALL_PAGES):
            runs.append(small_pages_run(name, steps, args.quick))
            print(f"  best step {runs[-1]['best_step_s']:.2f} s, "
                  f"{runs[-1]['fraction_of_limit']:.2f} of the limit", flush=True)
            continue
        conv.WEIGHT_GRAD_BY_OFFSETS = name != SWAPPED
        try:
            runs.append(one_network(name, preset, overrides, tile, steps))
        finally:
            conv.WEIGHT_GRAD_BY_OFFSETS = True
        print(f"  best step {runs[-1]['best_step_s']:.2f} s, "
              f"{runs[-1]['fraction_of_limit']:.2f} of the limit", flush=True)
    report = {"benchmark": "train_step", "command": command_line(), "machine": machine,
              "threads": torch.get_num_threads(), "runs": runs}
    out = RESULTS if not args.quick else RESULTS.parent.parent / "runs" / "train-step-quick"
    publish(out, "train_step", report, markdown(report))


if __name__ == "__main__":
    sys.exit(main())

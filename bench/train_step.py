"""A training step against the machine's convolution limit (issue #16, target 3).

Run: .venv/bin/python bench/train_step.py [--quick] [--steps 3] [--layers [--no-steps]]

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
The paper's networks run twice: as useg trains them, and with useg's own training kernels
turned off (every weight gradient computed by the batch/channel-swapped convolution, as
``useg.nets.conv`` did before its per-offset matrix products, PyTorch's up-convolutions
instead of ``useg.nets.upconv``'s matrix products, and each level's max-pooling and skip crop
as two operations instead of ``useg.nets.skip``'s one), to compare the two in one run. The paper's
networks run once more each in a process of their own with 4 KiB pages
(``THP_MEM_ALLOC_ENABLE=0``), against useg's huge pages for PyTorch's large buffers (what
``import useg`` asks for), and once more each with freed memory handed back to the kernel
(``USEG_KEEP_FREED_MEMORY=0``: fresh memory for the kernel to fault and zero every step), where
the steps are otherwise timed as ``useg train`` runs them, with glibc keeping freed memory for
reuse when twice the step's peak fits in half the machine's memory
(``useg.device.freed_memory_kept``), with the peak memory of each process. fp32 (the precision
``auto`` picks on a CPU without bf16 instructions), channels-last.

``--layers`` (alone: ``--layers --no-steps``) shows what the convolutions themselves allow: for
every convolution of the paper's 2D and 3D networks, on the shapes of their training tiles, the
three products of a training step timed alone (best of three after a warm-up): the forward, the
input gradient and the weight gradient, each the way useg computes it and the other ways there
are (PyTorch's own ``convolution_backward``, which is oneDNN's backward primitive, for both
gradients; the batch/channel-swapped convolution and the per-offset matrix products for the
weight gradient; for an up-convolution, useg's matrix products and PyTorch's kernels, the two
gradients counted together). Their FLOPs over their summed seconds is the fraction of the limit
a step would reach if nothing but convolutions took time, with useg's ways and with the fastest
way of each layer; the whole step over it is what the rest costs (``layers`` part; with
``--no-steps``, bench/results/train_step_layers.json and .md).

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
from _common import (
    RESULTS,
    best_of,
    command_line,
    machine_info,
    peak_rss_bytes,
    publish,
)
from predict import conv_gflops, layer_flops

import useg.nets.conv as conv
import useg.nets.skip as skip
import useg.nets.upconv as upconv
from useg.device import freed_memory_fits, freed_memory_kept, huge_pages_in_effect
from useg.nets import UNet, output_shape, valid_input_shape
from useg.nets.geometry import training_step_bytes
from useg.training.losses import SegmentationLoss

# Networks run with useg's own training kernels turned off, to compare in one run: every weight
# gradient by the swapped convolution (useg.nets.conv), PyTorch's up-convolutions
# (useg.nets.upconv), each level's pooling and skip crop apart (useg.nets.skip).
PLAIN = ", swapped weight gradients, PyTorch up-convolutions, pooling and crop apart"
# (name, preset, overrides, tile) of the measured networks.
NETWORKS = (
    ("2D paper", "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper", "cicek2016", {"width": 32}, (116, 132, 132)),
    ("2D cpu-fast", "ronneberger2015", {"width": 16, "depth": 3}, (188, 188)),
    ("3D chosen (sparse3d)", "cicek2016", {"width": 8, "depth": 2, "padding": "same"},
     (44, 44, 44)),
    ("2D paper" + PLAIN, "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper" + PLAIN, "cicek2016", {"width": 32}, (116, 132, 132)),
    ("2D paper, 4 KiB pages", "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper, 4 KiB pages", "cicek2016", {"width": 32}, (116, 132, 132)),
    ("2D paper, freed memory handed back", "ronneberger2015", {"width": 64}, (572, 572)),
    ("3D paper, freed memory handed back", "cicek2016", {"width": 32}, (116, 132, 132)),
)
# Networks run in a process of their own, with environment settings read once at its start:
# without the huge pages that importing useg asks PyTorch for (read at its first allocation), to
# show what they save; with freed memory handed back to the kernel (glibc's default), to show
# what the kernel's faulting and zeroing of fresh memory costs a step, and the peak memory that
# keeping it costs.
SMALL_PAGES = " 4 KiB pages"
CHILD_ENV = {SMALL_PAGES: {"THP_MEM_ALLOC_ENABLE": "0"},
             " freed memory handed back": {"USEG_KEEP_FREED_MEMORY": "0"}}


def each_conv(net: torch.nn.Module, x: torch.Tensor, hook: Any) -> None:
    """One forward pass of ``x`` without gradients, calling ``hook(module, inputs, output)``
    after every convolution and up-convolution."""
    hooks = [m.register_forward_hook(hook) for m in net.modules()
             if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()


def conv_flops(net: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of every convolution of one forward pass of ``x``."""
    total = [0.0]

    def count(module: torch.nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        total[0] += layer_flops(module, out.shape[2:])

    each_conv(net, x, count)
    return total[0]


def training_net(preset: str, overrides: dict,
                 tile: tuple[int, ...]) -> tuple[UNet, tuple[int, ...], torch.Tensor]:
    """The network (seeded, channels-last, in training mode), its valid tile and a random
    input of that tile."""
    torch.manual_seed(0)
    net = UNet(preset, **overrides)
    fmt = torch.channels_last if len(tile) == 2 else torch.channels_last_3d
    tile = valid_input_shape(net.config, tile)
    x = torch.randn(1, net.config.in_channels, *tile).contiguous(memory_format=fmt)
    return net.to(memory_format=fmt).train(), tile, x


def one_network(name: str, preset: str, overrides: dict, tile: tuple[int, ...],
                steps: int) -> dict[str, Any]:
    net, tile, x = training_net(preset, overrides, tile)
    cfg, ndim = net.config, len(tile)
    out = output_shape(cfg, tile)
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

    # As useg train runs its steps: freed memory kept where twice the step's peak fits.
    fits = freed_memory_fits(training_step_bytes(cfg, tile), torch.device("cpu"))
    with freed_memory_kept(fits) as kept:
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
        "freed_memory_kept": kept,
        # The process's peak so far: the network's own in a child, the largest yet otherwise.
        "process_peak_rss_gib": (peak_rss_bytes() or 0) / 2**30,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


def child_env(name: str) -> dict[str, str] | None:
    """The environment settings of a network run in a child process (None: in this one)."""
    return next((env for suffix, env in CHILD_ENV.items() if name.endswith("," + suffix)), None)


def child_run(name: str, steps: int, quick: bool) -> dict[str, Any]:
    """``name``'s network measured in a child process started with its settings."""
    cmd = [sys.executable, __file__, "--network-worker", name, "--steps", str(steps)]
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True,
                          env={**os.environ, **child_env(name)}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name}: the worker failed:\n{done.stderr[-2000:]}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return run


# The networks --layers takes apart (names in NETWORKS).
LAYER_NETWORKS = ("2D paper", "3D paper")


def conv_inputs(net: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Module, Any]]:
    """Every convolution and up-convolution of one forward pass of ``x``, with its input."""
    seen: list[tuple[torch.nn.Module, Any]] = []
    each_conv(net, x, lambda module, inputs, _out: seen.append((module, inputs[0].detach())))
    return seen


def layer_ways(module: torch.nn.Module, x: torch.Tensor, first: bool,
               repeats: int) -> dict[str, Any]:
    """Seconds of the forward, input gradient and weight gradient of one convolution on its
    training input ``x``, each the way useg computes it and the other ways (see --layers)."""
    w = module.weight.detach()
    with torch.no_grad():
        y = module(x)
    g = torch.randn_like(y)
    flops = layer_flops(module, y.shape[2:])
    entry: dict[str, Any] = {"layer": f"{module.in_channels}->{module.out_channels} "
                             f"{type(module).__name__} {list(module.kernel_size)}",
                             "input": list(x.shape[2:]), "gflop": flops / 1e9,
                             "input_gradient_needed": not first}
    kernel = tuple(module.kernel_size)
    direct = (isinstance(module, (conv.Conv2d, conv.Conv3d))
              and conv.uses_onednn_kernel(module, x))
    if direct:
        padding = tuple(module.padding)
        ones = (1,) * len(kernel)
        zeros = (0,) * len(kernel)

        def native(mask: tuple[bool, bool, bool]) -> Any:
            return lambda: torch.ops.aten.convolution_backward(
                g, x, w, None, ones, padding, ones, False, zeros, 1, mask)

        entry["forward"] = {"useg": best_of(lambda: conv._onednn(x, w, None, padding), repeats)}
        if not first:
            entry["input_gradient"] = {
                "useg": best_of(lambda: conv._input_gradient(g, w, padding, x), repeats),
                "pytorch": best_of(native((True, False, False)), repeats)}
        pays = conv._weight_grad_by_offsets_pays(x, g, kernel)
        ways = {"swapped": lambda: conv._weight_grad_swapped(x, g, padding),
                "offsets": lambda: conv._weight_grad_by_offsets(x, g, kernel, padding),
                "pytorch": native((False, True, False))}
        entry["weight_gradient"] = {k: best_of(f, repeats) for k, f in ways.items()}
        entry["weight_gradient"]["useg"] = entry["weight_gradient"][
            "offsets" if pays else "swapped"]
    else:  # up-convolutions: autograd, as training runs them, useg's way and PyTorch's
        xg = x.clone().requires_grad_(not first)
        params = [p for p in (module.weight, module.bias) if p is not None]

        def backward() -> Any:
            out = module(xg)
            return torch.autograd.grad(out, ([xg] if not first else []) + params, g)

        entry["forward"], entry["input_gradient"], entry["weight_gradient"] = {}, {}, {}
        for way, product in (("useg", True), ("pytorch", False)):
            upconv.PRODUCT = product
            try:
                forward = best_of(lambda: module(xg).detach(), repeats)
                whole = best_of(backward, repeats)
            finally:
                upconv.PRODUCT = True
            # Both gradients together, attributed to the weight gradient.
            entry["forward"][way] = forward
            entry["input_gradient"][way] = 0.0
            entry["weight_gradient"][way] = max(whole - forward, 0.0)
    return entry


def layers_part(name: str, preset: str, overrides: dict, tile: tuple[int, ...],
                repeats: int) -> dict[str, Any]:
    """Every convolution of ``name``'s training tile taken apart (see --layers)."""
    net, tile, x = training_net(preset, overrides, tile)
    ndim = len(tile)
    limit_before = conv_gflops(ndim, "fp32")
    layers = []
    for i, (module, inp) in enumerate(conv_inputs(net, x)):
        layers.append(layer_ways(module, inp, i == 0, repeats))
        print(f"  {layers[-1]['layer']} at {layers[-1]['input']}: "
              + ", ".join(f"{part} " + " ".join(f"{k} {v:.3f}" for k, v in ways.items())
                          for part, ways in layers[-1].items()
                          if part in ("forward", "input_gradient", "weight_gradient")),
              flush=True)
    limit = (limit_before + conv_gflops(ndim, "fp32")) / 2
    flops = sum(e["gflop"] * (2 + e["input_gradient_needed"]) for e in layers) * 1e9

    def total(choose: Any) -> float:
        return sum(choose(e[part]) for e in layers
                   for part in ("forward", "input_gradient", "weight_gradient") if part in e)

    totals = {"useg": total(lambda w: w["useg"]), "fastest": total(lambda w: min(w.values()))}
    parts = {part: sum(e[part]["useg"] for e in layers if part in e)
             for part in ("forward", "input_gradient", "weight_gradient")}
    return {"network": name, "tile": list(tile), "limit_gflops_fp32": limit,
            "convolution_seconds": totals, "useg_seconds_by_product": parts,
            "fraction_of_limit_convolutions_only": {
                k: flops / v / 1e9 / limit for k, v in totals.items()},
            "layers": layers}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# Training step against the convolution limit", "",
             f"Command: `{report['command']}`; CPU {m['cpu']['model']}, {m['date']}; fp32, "
             f"{report['threads']} thread(s). FLOPs = 3 x the forward convolutions of the tile; "
             "limit = one forward 64->64 convolution, same process."]
    if report["runs"]:
        lines += ["", "| network | tile -> output | step GFLOP | best step s | limit GFLOP/s | "
                  "fraction of the limit | peak RSS GiB (process so far) |",
                  "|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['network']} | {'x'.join(map(str, r['tile']))} -> "
                     f"{'x'.join(map(str, r['output']))} | {r['step_gflop']:.0f} | "
                     f"{r['best_step_s']:.2f} | {r['limit_gflops_fp32']:.0f} | "
                     f"{r['fraction_of_limit']:.2f} | {r.get('process_peak_rss_gib', 0):.2f} |")
    if report["runs"]:
        lines += ["", "Where one step's time goes (self CPU time of its operators, top 5, one "
                  "profiled step):", ""]
    for r in report["runs"]:
        top = ", ".join(f"{e['op']} {e['share']:.0%}" for e in r["profile_one_step"][:5])
        lines.append(f"- {r['network']}: {top}")
    if report.get("layers"):
        lines += ["", "The convolutions alone (--layers): forward, input and weight gradient of "
                  "every convolution on its training input, each timed alone; seconds summed "
                  "over the network with useg's ways and with each layer's fastest way; "
                  "fraction of the limit if a step were nothing but these.", "",
                  "| network | forward s | input gradient s | weight gradient s | useg's ways "
                  "(fraction) | fastest ways (fraction) |", "|---|---|---|---|---|---|"]
        for r in report["layers"]:
            by, tot = r["useg_seconds_by_product"], r["convolution_seconds"]
            frac = r["fraction_of_limit_convolutions_only"]
            lines.append(f"| {r['network']} | {by['forward']:.2f} | {by['input_gradient']:.2f} "
                         f"| {by['weight_gradient']:.2f} | {tot['useg']:.2f} "
                         f"({frac['useg']:.2f}) | {tot['fastest']:.2f} ({frac['fastest']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--quick", action="store_true", help="smoke run: the small networks")
    parser.add_argument("--layers", action="store_true",
                        help="take the paper networks' convolutions apart (see the docstring)")
    parser.add_argument("--no-steps", action="store_true", help="skip the whole-step timings")
    parser.add_argument("--network-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = 1 if args.quick else args.steps
    if args.network_worker:
        base = args.network_worker
        for suffix in CHILD_ENV:
            base = base.removesuffix("," + suffix)
        _, preset, overrides, tile = next(n for n in NETWORKS if n[0] == base)
        print(json.dumps(one_network(args.network_worker, preset, overrides, tile, steps)))
        return
    machine = machine_info()
    networks = [NETWORKS[i] for i in (2, 3, 2)] if args.quick else NETWORKS
    if args.quick:  # the same small network in a child with 4 KiB pages, to smoke-test that
        networks[2] = (f"2D cpu-fast,{SMALL_PAGES}", *networks[2][1:])
    runs = []
    for name, preset, overrides, tile in [] if args.no_steps else networks:
        print(f"{name}: {preset} {overrides}, tile {tile}", flush=True)
        if child_env(name) is not None:
            runs.append(child_run(name, steps, args.quick))
            print(f"  best step {runs[-1]['best_step_s']:.2f} s, "
                  f"{runs[-1]['fraction_of_limit']:.2f} of the limit", flush=True)
            continue
        conv.WEIGHT_GRAD_BY_OFFSETS = upconv.PRODUCT = skip.FUSED = not name.endswith(PLAIN)
        try:
            runs.append(one_network(name, preset, overrides, tile, steps))
        finally:
            conv.WEIGHT_GRAD_BY_OFFSETS = upconv.PRODUCT = skip.FUSED = True
        print(f"  best step {runs[-1]['best_step_s']:.2f} s, "
              f"{runs[-1]['fraction_of_limit']:.2f} of the limit", flush=True)
    layers = []
    if args.layers:
        wanted = (networks[0][0],) if args.quick else LAYER_NETWORKS
        for name, preset, overrides, tile in NETWORKS:
            if name in wanted:
                print(f"{name}, layer by layer: {preset} {overrides}, tile {tile}", flush=True)
                layers.append(layers_part(name, preset, overrides, tile, steps + 1))
    report = {"benchmark": "train_step", "command": command_line(), "machine": machine,
              "threads": torch.get_num_threads(), "runs": runs, "layers": layers}
    out = RESULTS if not args.quick else RESULTS.parent.parent / "runs" / "train-step-quick"
    # The layers alone go beside the whole steps, which they do not replace.
    publish(out, "train_step_layers" if args.no_steps else "train_step", report,
            markdown(report))


if __name__ == "__main__":
    sys.exit(main())

"""useg's convolutions (useg.nets.conv) against PyTorch's own choice of kernel, same run.

Run: .venv/bin/python bench/conv_kernels.py [--threads 1] [--repeats 5]

For 3D U-Nets (cicek2016 preset, same padding) of a few widths and tiles, the seconds of one
training step (forward, backward, Adam) and of one forward pass without gradients, with
useg's Conv3d (oneDNN forward and backward where PyTorch would take its reference kernels or
its slow 3D backward) and with PyTorch's choice (the same modules with the direct path turned
off). The two alternate, step by step, so that a load on the machine weighs on both alike; the
figure is the ratio of the medians. The outputs of both agree to float32 rounding (checked here
on the forward pass and the weight gradients).

Results: bench/results/conv_kernels.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import RESULTS, command_line, machine_info, publish

import useg.nets.conv as conv
from useg.nets.config import preset
from useg.nets.unet import UNet

CASES = (  # (width, depth, tile): sparse3d's network, a CPU recipe's, the paper's width
    (8, 2, 44), (16, 3, 64), (32, 4, 64))


def _time(fn, direct: bool) -> float:
    conv.DIRECT = direct
    try:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    finally:
        conv.DIRECT = True


def measure_case(width: int, depth: int, tile: int, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = preset("cicek2016", ndim=3, in_channels=1, classes=2, width=width, depth=depth,
                 padding="same")
    net = UNet(cfg)
    x = torch.randn(1, 1, tile, tile, tile)
    opt = torch.optim.Adam(net.parameters(), lr=1e-6)

    def step() -> None:
        opt.zero_grad()
        net(x).mean().backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad():
            net.eval()
            net(x)
            net.train()

    # Agreement first: forward output and weight gradients with and without the path.
    grads = {}
    for direct in (True, False):
        conv.DIRECT = direct
        net.zero_grad()
        y = net(x)
        y.mean().backward()
        grads[direct] = (y.detach(), [p.grad.clone() for p in net.parameters()])
    conv.DIRECT = True
    out_diff = float((grads[True][0] - grads[False][0]).abs().max())
    # Relative to the largest gradient: a bias before batch norm has a gradient of rounding
    # size, which no relative measure of its own can judge.
    largest = max(float(b.abs().max()) for b in grads[False][1])
    grad_rel = max(float((a - b).abs().max())
                   for a, b in zip(grads[True][1], grads[False][1], strict=True)) / largest
    row = {"width": width, "depth": depth, "tile": tile, "max_abs_output_difference": out_diff,
           "max_gradient_difference_over_largest_gradient": grad_rel}
    for what, fn in (("step", step), ("forward", forward)):
        times: dict[bool, list[float]] = {True: [], False: []}
        for direct in (True, False):  # warm-up
            _time(fn, direct)
        for _ in range(repeats):
            for direct in (True, False):
                times[direct].append(_time(fn, direct))
        new, old = statistics.median(times[True]), statistics.median(times[False])
        row[what] = {"useg_s": new, "pytorch_choice_s": old, "speedup": old / new}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()
    rows = []
    for width, depth, tile in CASES:
        row = measure_case(width, depth, tile, args.repeats)
        rows.append(row)
        step, fwd = row["step"], row["forward"]
        print(f"width {width} depth {depth} tile {tile}^3: step {step['pytorch_choice_s']:.2f} "
              f"-> {step['useg_s']:.2f} s ({step['speedup']:.2f}x), forward "
              f"{fwd['pytorch_choice_s']:.3f} -> {fwd['useg_s']:.3f} s ({fwd['speedup']:.2f}x); "
              f"outputs differ by {row['max_abs_output_difference']:.1e}", flush=True)
    report = {"benchmark": "conv_kernels", "command": command_line(), "machine": machine,
              "threads": args.threads, "repeats": args.repeats, "rows": rows}
    lines = ["# useg's convolutions against PyTorch's choice of kernel (3D U-Net, CPU)", "",
             f"Command: `{report['command']}`; CPU {machine['cpu']['model']} "
             f"({', '.join(machine['cpu']['flags'])}), {args.threads} thread(s), "
             f"{machine['date']}, load average at start {machine['load_average_at_start']}.",
             "", "| width, depth, tile | training step: PyTorch's / useg's (s) | speed-up | "
             "forward, no gradient (s) | speed-up | outputs differ by |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']}, {r['depth']}, {r['tile']}^3 | "
                     f"{r['step']['pytorch_choice_s']:.2f} / {r['step']['useg_s']:.2f} | "
                     f"{r['step']['speedup']:.2f}x | {r['forward']['pytorch_choice_s']:.3f} / "
                     f"{r['forward']['useg_s']:.3f} | {r['forward']['speedup']:.2f}x | "
                     f"{r['max_abs_output_difference']:.1e} |")
    publish(RESULTS, "conv_kernels", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""What the huge pages that ``import useg`` asks PyTorch for change: time, system CPU, page faults
and peak memory of prediction and training, against 4 KiB pages, in one run.

Run: .venv/bin/python bench/huge_pages.py [--quick] [--repeats 2] [--workloads ...]

``import useg`` sets ``THP_MEM_ALLOC_ENABLE=1`` (Linux, unless the user set it), so that PyTorch
advises transparent huge pages for its CPU buffers of 2 MiB and more. PyTorch reads the setting
once per process, so every measurement is a fresh child process started with the setting either
way (``0``: 4 KiB pages; ``1``: huge pages), the two alternating (``--repeats`` children each,
the order swapped every repeat) so that load from elsewhere hits both alike. A child builds the
network, runs one untimed warm-up (oneDNN picks its kernels, the allocator settles) and then
times two more; its figure is the better of the two. Each child reports its wall seconds, its
system CPU seconds and minor page faults over the timed calls, its peak resident memory
(``VmHWM``), and whether its buffers got huge pages (:func:`useg.device.huge_pages_in_effect`).

Workloads (fp32, channels-last, all torch threads):

* ``3d-forward``: one forward pass (inference) of the 3D U-Net at width 16 over the tile that
  :func:`useg.inference.tile_choice.default_tile` picks for a 256^3 volume;
* ``3d-train``: one training step (forward, cross-entropy, backward, SGD) of the paper's 3D U-Net
  (width 32, batch norm) at 116x132x132;
* ``2d-forward``: one forward pass of the paper's 2D U-Net (width 64) over the default tile of a
  2048^2 image;
* ``2d-train``: one training step of the paper's 2D U-Net at 572x572.

Results: bench/results/huge_pages.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import RESULTS, ROOT, command_line, cpu_line, machine_info, peak_rss_bytes, publish

SETTINGS = {"4 KiB pages": "0", "huge pages": "1"}
WORKLOADS = ("3d-forward", "3d-train", "2d-forward", "2d-train")
QUICK = {"3d-forward": (16, 64), "3d-train": (4, (44, 44, 44)), "2d-forward": (16, 256),
         "2d-train": (16, (188, 188))}


def worker(name: str, quick: bool) -> dict[str, Any]:
    """Build ``name``'s network and input, warm up, time two calls (in this process)."""
    import torch

    from useg.device import huge_pages_in_effect
    from useg.inference.tile_choice import default_tile
    from useg.nets import UNet, output_shape, valid_input_shape
    from useg.nets.forward import inference_forward, inference_layers

    torch.manual_seed(0)
    ndim = 3 if name.startswith("3d") else 2
    fmt = torch.channels_last_3d if ndim == 3 else torch.channels_last
    preset = "cicek2016" if ndim == 3 else "ronneberger2015"
    if name.endswith("forward"):
        width, size = QUICK[name] if quick else ((16, 256) if ndim == 3 else (64, 2048))
        net = UNet(preset, width=width, batch_stats=False).eval()
        tile = default_tile(net, (size,) * ndim)
        layers = inference_layers(net)
        x = torch.rand(1, 1, *tile).contiguous(memory_format=fmt)

        def call() -> None:
            with torch.inference_mode():
                inference_forward(net, x, layers)
    else:
        width, tile = QUICK[name] if quick else (
            (32, (116, 132, 132)) if ndim == 3 else (64, (572, 572)))
        net = UNet(preset, width=width).to(memory_format=fmt).train()
        tile = valid_input_shape(net.config, tile)
        y = torch.randint(0, net.config.classes, (1, *output_shape(net.config, tile)))
        x = torch.randn(1, 1, *tile).contiguous(memory_format=fmt)
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
        loss_fn = torch.nn.CrossEntropyLoss()

        def call() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()

    call()
    seconds = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(2):
        t0 = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"tile": list(tile), "width": width, "seconds": seconds, "best_s": min(seconds),
            "system_cpu_s": (after.ru_stime - before.ru_stime) / 2,
            "minor_page_faults": (after.ru_minflt - before.ru_minflt) / 2,
            "peak_rss_bytes": peak_rss_bytes(), "huge_pages_in_effect": huge_pages_in_effect(),
            "threads": torch.get_num_threads()}


def run_child(name: str, setting: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", name] + (["--quick"] if quick else [])
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": SETTINGS[setting]}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} ({setting}): the worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Huge pages against 4 KiB pages (what `import useg` asks PyTorch for)", "",
             f"Command: `{report['command']}`; CPU {cpu_line(report['machine'])}; kernel huge "
             f"page mode {report['machine']['huge_pages']['kernel']}; {report['machine']['date']}"
             f". Each figure is the median over {report['repeats']} fresh processes per setting "
             "(alternating) of the best of two timed calls after a warm-up.", "",
             "| workload | tile | 4 KiB pages s | huge pages s | speed-up | system CPU s (4 KiB "
             "/ huge) | page faults (4 KiB / huge) | peak RSS GiB (4 KiB / huge) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, w in report["workloads"].items():
        small, huge = w["4 KiB pages"], w["huge pages"]
        lines.append(
            f"| {name} | {'x'.join(map(str, small['runs'][0]['tile']))} | "
            f"{small['median_s']:.2f} | {huge['median_s']:.2f} | "
            f"{small['median_s'] / huge['median_s']:.2f}x | {small['system_cpu_s']:.2f} / "
            f"{huge['system_cpu_s']:.2f} | {small['minor_page_faults']:.0f} / "
            f"{huge['minor_page_faults']:.0f} | {small['peak_rss_gib']:.2f} / "
            f"{huge['peak_rss_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small networks")
    parser.add_argument("--repeats", type=int, default=2, help="processes per setting")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick)))
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    machine = machine_info()
    workloads: dict[str, Any] = {}
    for name in args.workloads:
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SETTINGS}
        for r in range(args.repeats):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for setting in order:
                runs[setting].append(run_child(name, setting, args.quick))
                print(f"{name}, {setting}: {runs[setting][-1]['best_s']:.2f} s", flush=True)
        workloads[name] = {
            s: {"median_s": statistics.median(r["best_s"] for r in rs),
                "system_cpu_s": statistics.median(r["system_cpu_s"] for r in rs),
                "minor_page_faults": statistics.median(r["minor_page_faults"] for r in rs),
                "peak_rss_gib": statistics.median(r["peak_rss_bytes"] / 2**30 for r in rs),
                "runs": rs}
            for s, rs in runs.items()}
        bad = [s for s, rs in runs.items()
               if any(r["huge_pages_in_effect"] != (s == "huge pages") for r in rs)]
        if bad:
            print(f"note: {name}: pages not as asked in {bad} (kernel setting?)", flush=True)
    report = {"benchmark": "huge_pages", "command": command_line(), "machine": machine,
              "repeats": args.repeats, "settings_THP_MEM_ALLOC_ENABLE": SETTINGS,
              "workloads": workloads}
    out = RESULTS if not args.quick else RESULTS.parent.parent / "runs" / "huge-pages-quick"
    publish(out, "huge_pages", report, markdown(report))


if __name__ == "__main__":
    main()

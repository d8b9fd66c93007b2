"""Training throughput: useg's full loop against a bare PyTorch loop over pre-generated tensors.

Same network, tile, optimizer and precision on both sides. useg's loop samples tiles from
images, applies elastic deformation, rotation, flips and gray-value augmentation in a worker
process, and uses the precomputed border weight maps; the bare loop only feeds tensors that
already sit in memory. The ratio of iterations/s is the cost of the data pipeline (target:
useg >= 0.9 of the bare loop).

The headline is a ``paired`` measurement: one bare step runs after each useg step, in
``train``'s callback, so both sides see the same machine load; on a shared machine whose load
changes 2-3x within a minute, timing whole runs one after the other (``--blocks``, what the
first version of this bench did) cannot resolve a 10% difference. It also counts CPU time per
step on each side, the loader worker's included: on a machine with few cores the worker's
"overlapped" work is taken from the training step's cores.

Run: ``.venv/bin/python bench/train_throughput.py [--quick] [--blocks] [--tile 252]
[--output FILE]``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, command_line, machine_info, summary, write_json

from useg.device import autocast
from useg.nets import UNet, UNetConfig, output_shape, valid_input_shape
from useg.training.config import TrainConfig
from useg.training.loop import train
from useg.training.losses import SegmentationLoss
from useg.training.samples import make_sample
from useg.workflows.synthetic import touching_cells


def _bare_setup(cfg: UNetConfig, tile):
    """Network, optimizer, loss and eight (input, target, weight) batches already in memory."""
    torch.manual_seed(0)
    net = UNet(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99)
    out = output_shape(cfg, tile)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 1, *tile, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 2, (1, *out), generator=g), torch.rand(1, *out, generator=g))
            for _ in range(8)]
    return net, opt, SegmentationLoss(), data


def _bare_step(setup, i: int, precision: str) -> None:
    net, opt, loss_fn, data = setup
    x, y, w = data[i % len(data)]
    with autocast(torch.device("cpu"), precision):
        logits = net(x)
    loss = loss_fn(logits.float(), y, w)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_loop(cfg: UNetConfig, tile, iterations: int, precision: str, warmup: int) -> float:
    """Iterations/s of forward + backward + SGD step over tensors prepared beforehand."""
    setup = _bare_setup(cfg, tile)
    stamps = []
    for i in range(iterations + warmup):
        _bare_step(setup, i, precision)
        stamps.append(time.perf_counter())
    return iterations / (stamps[-1] - stamps[warmup - 1])


def _samples():
    samples = []
    for i in range(4):
        img, inst = touching_cells((512, 512), rng=i)
        samples.append(make_sample(img, inst, mode="instances", w0=10, sigma=5))
    return samples


def _train_config(cfg: UNetConfig, tile, iterations: int, precision: str,
                  workers: int) -> TrainConfig:
    return TrainConfig(
        net=cfg.to_dict(), tile=list(tile), iterations=iterations, optimizer="sgd",
        lr=0.01, precision=precision, augment={"elastic": True}, val_every=10**9,
        checkpoint_every=10**9, log_every=1, seed=0, workers=workers, device="cpu",
    )


def useg_loop(cfg: UNetConfig, tile, iterations: int, precision: str, warmup: int,
              workers: int) -> tuple[float, float]:
    """Iterations/s of useg.training.loop.train on synthetic images with the full augmentation
    pipeline, and the fraction of time the training step waited for data."""
    tcfg = _train_config(cfg, tile, iterations + warmup, precision, workers)
    stamps, waits = {}, {}

    def record(step, row):
        stamps[step] = time.perf_counter()
        waits[step] = row["data_wait"]

    with tempfile.TemporaryDirectory() as d:
        train(tcfg, _samples(), Path(d) / "run", progress=False, callback=record)
    n = iterations + warmup
    return iterations / (stamps[n] - stamps[warmup]), waits[n]


def _children_cpu_s() -> float | None:
    """CPU seconds used so far by this process's children (the loader workers); Linux only."""
    me, total = str(os.getpid()), 0.0
    try:
        tick = os.sysconf("SC_CLK_TCK")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                total += (int(fields[11]) + int(fields[12])) / tick
    except (OSError, ValueError, AttributeError):
        return None
    return total


def paired_loop(cfg: UNetConfig, tile, iterations: int, precision: str, warmup: int,
                workers: int, threads: int | None = None) -> dict[str, float]:
    """useg.training.loop.train and the bare loop taking turns step by step in one process.

    After each useg step (in ``train``'s callback) one bare step runs on its own network, so
    both see the same machine load within a second of each other. useg's step time runs from
    the end of the previous bare step to the callback: the whole iteration of its loop,
    fetching the tile from the worker included. The worker prepares the tile of a later step
    at the start of useg's step (when the loader asks for one), so its CPU time falls on useg's
    side. Besides wall time, the CPU time of each side is counted (this process's for each
    step, plus the loader workers' for useg). With one torch thread (``threads=1``) that does
    not depend on how busy the machine is; with two, it mostly counts OpenMP threads spinning
    while they wait for each other on a busy machine.
    """
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    setup = _bare_setup(cfg, tile)
    tcfg = _train_config(cfg, tile, iterations + warmup, precision, workers)
    wall = {"useg": [], "bare": []}
    cpu = {"useg": [], "bare": []}
    waits, workers_cpu = {}, {}
    last = [0.0, 0.0]
    n = iterations + warmup

    def record(step, row):
        t0, c0 = time.perf_counter(), time.process_time()
        wall["useg"].append(t0 - last[0])
        cpu["useg"].append(c0 - last[1])
        waits[step] = row["data_wait"]
        if step in (warmup, n):
            workers_cpu[step] = _children_cpu_s()
        _bare_step(setup, step, precision)
        last[0], last[1] = time.perf_counter(), time.process_time()
        wall["bare"].append(last[0] - t0)
        cpu["bare"].append(last[1] - c0)

    try:
        with tempfile.TemporaryDirectory() as d:
            train(tcfg, _samples(), Path(d) / "run", progress=False, callback=record)
    finally:
        torch.set_num_threads(default_threads)
    result = {
        "useg_it_s": iterations / sum(wall["useg"][warmup:]),
        "bare_it_s": iterations / sum(wall["bare"][warmup:]),
        "data_wait": waits[n],
        "useg_cpu_ms": 1e3 * sum(cpu["useg"][warmup:]) / iterations,
        "bare_cpu_ms": 1e3 * sum(cpu["bare"][warmup:]) / iterations,
    }
    if workers and None not in workers_cpu.values():
        result["worker_cpu_ms"] = 1e3 * (workers_cpu[n] - workers_cpu[warmup]) / iterations
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--tile", type=int, default=252)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--quick", action="store_true", help="smoke run: few iterations, one repeat")
    ap.add_argument("--cpu-iterations", type=int, default=20,
                    help="iterations of the one-thread CPU-time measurement")
    ap.add_argument("--blocks", action="store_true",
                    help="also time whole runs of each, one after the other (doubles the time)")
    ap.add_argument("--output", type=Path, default=None,
                    help="results file (default bench/results/train_throughput.json, "
                         "train_throughput_quick.json with --quick)")
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.repeats, args.cpu_iterations = 6, 1, 6
    warmup = 3
    cfg = UNetConfig(ndim=2, width=args.width, depth=args.depth, dropout=0.5)
    tile = valid_input_shape(cfg, args.tile)
    rows = []
    machine = machine_info()
    load_before = os.getloadavg()
    for precision in args.precisions.split(","):
        paired = {k: [] for k in ("useg", "bare", "ratio", "wait", "cpu_ratio", "useg_cpu",
                                  "worker_cpu", "bare_cpu")}
        blocks = {"useg": [], "bare": [], "ratio": [], "wait": []}
        for _ in range(args.repeats):
            r = paired_loop(cfg, tile, args.iterations, precision, warmup, args.workers)
            for key, v in (("useg", r["useg_it_s"]), ("bare", r["bare_it_s"]),
                           ("ratio", r["useg_it_s"] / r["bare_it_s"]), ("wait", r["data_wait"])):
                paired[key].append(v)
            # CPU cost with one torch thread: no OpenMP spinning, so load hardly matters.
            r = paired_loop(cfg, tile, args.cpu_iterations, precision, warmup, args.workers,
                            threads=1)
            useg_cpu = r["useg_cpu_ms"] + r.get("worker_cpu_ms", 0.0)
            for key, v in (("useg_cpu", r["useg_cpu_ms"]), ("bare_cpu", r["bare_cpu_ms"]),
                           ("worker_cpu", r.get("worker_cpu_ms", math.nan)),
                           ("cpu_ratio", r["bare_cpu_ms"] / useg_cpu)):
                paired[key].append(v)
            if args.blocks:  # whole runs one after the other: exposed to load changes
                bare = bare_loop(cfg, tile, args.iterations, precision, warmup)
                rate, wait = useg_loop(cfg, tile, args.iterations, precision, warmup,
                                       args.workers)
                for key, v in (("useg", rate), ("bare", bare), ("ratio", rate / bare),
                               ("wait", wait)):
                    blocks[key].append(v)
        row = {
            "precision": precision,
            "bare_it_s": summary(paired["bare"]),
            "useg_it_s": summary(paired["useg"]),
            "ratio_useg_over_bare": summary(paired["ratio"]),
            "useg_data_wait_fraction": statistics.median(paired["wait"]),
            "cpu_ms_per_step_one_thread": {
                "bare": summary(paired["bare_cpu"]),
                "useg_main_process": summary(paired["useg_cpu"]),
                "useg_loader_workers": summary(paired["worker_cpu"]),
            },
            "cpu_ratio_bare_over_useg_one_thread": summary(paired["cpu_ratio"]),
        }
        if args.blocks:
            row["blocks"] = {
                "bare_it_s": summary(blocks["bare"]), "useg_it_s": summary(blocks["useg"]),
                "ratio_useg_over_bare": summary(blocks["ratio"]),
                "useg_data_wait_fraction": statistics.median(blocks["wait"]),
            }
        rows.append(row)
    print(f"network width {args.width} depth {args.depth}, tile {tile} -> "
          f"{output_shape(cfg, tile)}, {args.iterations} iterations x {args.repeats} repeats, "
          f"{torch.get_num_threads()} torch threads, load average {load_before[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'precision':>9} | {'method':>7} | {'bare it/s':>9} | {'useg it/s':>9} | "
          f"{'ratio (min-max)':>21} | data wait")
    for r in rows:
        for method, m in (("paired", r), ("blocks", r.get("blocks"))):
            if m is None:
                continue
            q = m["ratio_useg_over_bare"]
            print(f"{r['precision']:>9} | {method:>7} | {m['bare_it_s']['median']:9.3f} | "
                  f"{m['useg_it_s']['median']:9.3f} | "
                  f"{q['median']:6.3f} ({q['min']:.3f}-{q['max']:.3f}) | "
                  f"{m['useg_data_wait_fraction']:.3f}")
    print(f"CPU per step, one torch thread, paired ({args.cpu_iterations} iterations; medians, "
          "ms): bare | useg training process + loader worker | bare/useg (min-max)")
    for r in rows:
        c, q = r["cpu_ms_per_step_one_thread"], r["cpu_ratio_bare_over_useg_one_thread"]
        print(f"{r['precision']:>9} | {c['bare']['median']:7.1f} | "
              f"{c['useg_main_process']['median']:7.1f} + {c['useg_loader_workers']['median']:5.1f}"
              f" | {q['median']:.3f} ({q['min']:.3f}-{q['max']:.3f})")
    result = {
        "command": command_line(),
        "machine": machine,
        "network": cfg.to_dict(), "tile": list(tile), "iterations": args.iterations,
        "repeats": args.repeats, "workers": args.workers, "warmup": warmup,
        "cpu_iterations": args.cpu_iterations,
        "load_average": {"before": load_before[0], "after": os.getloadavg()[0]},
        "method": "paired: useg.training.loop.train and a bare loop take turns step by step in "
                  "one process (bare step in train's callback), ratio of summed step times per "
                  "run; CPU time per step of each side in a second paired run with one torch "
                  "thread (useg: "
                  "training process + loader workers); "
                  "blocks (--blocks): whole runs of each one after the other",
        "results": rows,
        "target": "useg >= 0.9 x bare loop",
    }
    name = "train_throughput_quick.json" if args.quick else "train_throughput.json"
    write_json(args.output or RESULTS / name, result)


if __name__ == "__main__":
    main()

"""Training throughput: useg's full loop against a bare PyTorch loop over pre-generated tensors.

Same network, tile, optimizer and precision on both sides. useg's loop samples tiles from
images, applies elastic deformation, rotation, flips and gray-value augmentation in a worker
process, and uses the precomputed border weight maps; the bare loop only feeds tensors that
already sit in memory. The ratio of iterations/s is the cost of the data pipeline (target:
useg >= 0.9 of the bare loop).

Run: ``.venv/bin/python bench/train_throughput.py [--quick] [--width 16] [--tile 252]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from useg.data import make_sample
from useg.device import autocast
from useg.losses import SegmentationLoss
from useg.nets import UNet, UNetConfig, output_shape, valid_input_shape
from useg.synthetic import touching_cells
from useg.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def bare_loop(cfg: UNetConfig, tile, iterations: int, precision: str, warmup: int) -> float:
    """Iterations/s of forward + backward + SGD step over tensors prepared beforehand."""
    torch.manual_seed(0)
    net = UNet(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99)
    loss_fn = SegmentationLoss()
    out = output_shape(cfg, tile)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(1, 1, *tile, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 2, (1, *out), generator=g), torch.rand(1, *out, generator=g))
            for _ in range(8)]
    device = torch.device("cpu")
    stamps = []
    for i in range(iterations + warmup):
        x, y, w = data[i % len(data)]
        with autocast(device, precision):
            logits = net(x)
        loss = loss_fn(logits.float(), y, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return iterations / (stamps[-1] - stamps[warmup - 1])


def useg_loop(cfg: UNetConfig, tile, iterations: int, precision: str, warmup: int,
              workers: int) -> tuple[float, float]:
    """Iterations/s of useg.train on synthetic images with the full augmentation pipeline, and
    the fraction of time the training step waited for data."""
    samples = []
    for i in range(4):
        img, inst = touching_cells((512, 512), rng=i)
        samples.append(make_sample(img, inst, mode="instances", w0=10, sigma=5))
    tcfg = TrainConfig(
        net=cfg.to_dict(), tile=list(tile), iterations=iterations + warmup, optimizer="sgd",
        lr=0.01, precision=precision, augment={"elastic": True}, val_every=10**9,
        checkpoint_every=10**9, log_every=1, seed=0, workers=workers, device="cpu",
    )
    stamps, waits = {}, {}

    def record(step, row):
        stamps[step] = time.perf_counter()
        waits[step] = row["data_wait"]

    with tempfile.TemporaryDirectory() as d:
        train(tcfg, samples, Path(d) / "run", progress=False, callback=record)
    n = iterations + warmup
    return iterations / (stamps[n] - stamps[warmup]), waits[n]


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
    args = ap.parse_args()
    if args.quick:
        args.iterations, args.repeats = 6, 1
    warmup = 3
    cfg = UNetConfig(ndim=2, width=args.width, depth=args.depth, dropout=0.5)
    tile = valid_input_shape(cfg, args.tile)
    rows = []
    for precision in args.precisions.split(","):
        bare, ours, wait = [], [], []
        for _ in range(args.repeats):  # alternate, so load changes hit both sides alike
            bare.append(bare_loop(cfg, tile, args.iterations, precision, warmup))
            rate, w = useg_loop(cfg, tile, args.iterations, precision, warmup, args.workers)
            ours.append(rate)
            wait.append(w)
        ratios = [o / b for o, b in zip(ours, bare, strict=True)]
        rows.append({
            "precision": precision,
            "bare_it_s": {"median": statistics.median(bare), "min": min(bare), "max": max(bare)},
            "useg_it_s": {"median": statistics.median(ours), "min": min(ours), "max": max(ours)},
            "ratio_useg_over_bare": {"median": statistics.median(ratios), "min": min(ratios),
                                     "max": max(ratios)},
            "useg_data_wait_fraction": statistics.median(wait),
        })
    print(f"network width {args.width} depth {args.depth}, tile {tile} -> "
          f"{output_shape(cfg, tile)}, {args.iterations} iterations x {args.repeats} repeats")
    print(f"{'precision':>9} | {'bare it/s':>10} | {'useg it/s':>10} | {'ratio':>6} | data wait")
    for r in rows:
        print(f"{r['precision']:>9} | {r['bare_it_s']['median']:10.3f} | "
              f"{r['useg_it_s']['median']:10.3f} | {r['ratio_useg_over_bare']['median']:6.3f} | "
              f"{r['useg_data_wait_fraction']:.3f}")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "numpy": np.__version__,
                    "torch_threads": torch.get_num_threads()},
        "network": cfg.to_dict(), "tile": list(tile), "iterations": args.iterations,
        "repeats": args.repeats, "workers": args.workers, "results": rows,
        "target": "useg >= 0.9 x bare loop",
    }
    RESULTS.mkdir(exist_ok=True)
    name = "train_throughput_quick.json" if args.quick else "train_throughput.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

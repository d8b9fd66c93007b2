"""Prediction in fp32 against bf16 autocast on this CPU, and what ``--precision auto`` picks.

Run: .venv/bin/python bench/precision.py [--quick] [--size 1024] [--width 64] [--repeats 1]
     [--threads N] [--out bench/results/precision.json]

``predict(UNet("ronneberger2015", width=W), image, precision=P)`` on one random size x size
image (same weights and image for both, default tile), seconds per precision (best of
``--repeats``, the precisions alternating so that a load change on the shared machine affects
both alike), and the ratio bf16 / fp32. bf16 autocast is only fast on CPUs with bf16
instructions (avx512_bf16, amx_bf16); elsewhere it is emulated through float32 and much slower.
``auto`` is :func:`useg.device.resolve_precision` for this CPU, with the short measurement it
bases its choice on (run here afresh, without the cache) and whether the CPU flags allow bf16.

The JSON records the command and the machine (bench/_common.py's ``machine_info``: date, CPU
model name and vector flags from ``lscpu``, torch version and its CPU capability). ``--quick``
(256x256, width 16) is a smoke check; it writes bench/results/precision_quick.json unless
``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, command_line, machine_info, write_json

from useg import device as dev
from useg.errors import UsegWarning
from useg.inference.predict import predict
from useg.inference.tile_choice import default_tile
from useg.nets import UNet


def time_predictions(width: int, size: int, repeats: int) -> tuple[dict[str, list[float]], Any]:
    """Seconds of each prediction, per precision, alternating fp32 and bf16."""
    torch.manual_seed(0)
    net = UNet("ronneberger2015", width=width).eval()
    image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for precision in seconds:
            start = time.perf_counter()
            with warnings.catch_warnings():
                # The emulation warning is what this bench measures; it is recorded below.
                warnings.simplefilter("ignore", UsegWarning)
                predict(net, image, device="cpu", precision=precision)
            seconds[precision].append(time.perf_counter() - start)
            print(f"  {precision}: {seconds[precision][-1]:.2f} s", file=sys.stderr, flush=True)
    return seconds, default_tile(net, (size, size), torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256x256, width 16 (smoke check)")
    ap.add_argument("--size", type=int, default=None, help="image side (default 1024)")
    ap.add_argument("--width", type=int, default=None, help="network width (default 64)")
    ap.add_argument("--repeats", type=int, default=1, help="predictions per precision")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()
    size = args.size or (256 if args.quick else 1024)
    width = args.width or (16 if args.quick else 64)
    out = args.out or RESULTS / ("precision_quick.json" if args.quick else "precision.json")
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = machine_info()  # before the measurements below: the load they met
    native = dev.cpu_has_native_bf16()
    probe = dev.measure_cpu_precisions()
    os.environ["USEG_PRECISION_CACHE"] = "0"  # auto as a first run on this machine decides
    auto = dev.resolve_precision("auto", "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UsegWarning)
        dev.resolve_precision("bf16", "cpu")
    print(f"ronneberger2015 width {width}, {size}x{size}, {torch.get_num_threads()} threads",
          file=sys.stderr, flush=True)
    seconds, tile = time_predictions(width, size, args.repeats)
    best = {p: min(v) for p, v in seconds.items()}
    result = {
        "command": command_line(),
        "machine": machine,
        "network": {"preset": "ronneberger2015", "width": width},
        "image": [size, size],
        "tile": list(tile),
        "repeats": args.repeats,
        "seconds": seconds,
        "best_seconds": best,
        "bf16_over_fp32": best["bf16"] / best["fp32"],
        "auto": {
            "picks": auto,
            "seconds": best[auto],
            "over_fp32": best[auto] / best["fp32"],
            "native_bf16_flags": native,
            "probe_seconds": probe,
            "bf16_warning": str(caught[0].message) if caught else None,
        },
    }
    write_json(out, result)
    print(f"\n{'precision':>9} | {'seconds':>8} | {'vs fp32':>7}")
    for p in ("fp32", "bf16"):
        print(f"{p:>9} | {best[p]:8.2f} | {best[p] / best['fp32']:6.2f}x")
    print(f"{'auto':>9} | {best[auto]:8.2f} | {best[auto] / best['fp32']:6.2f}x  (picks {auto}; "
          f"bf16 flags {'yes' if native else 'no'}; {machine['cpu']['model']})")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

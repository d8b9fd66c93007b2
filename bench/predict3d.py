"""Prediction speed and memory on CPU, 3D: useg's overlap tiles against MONAI's sliding window.

Run: .venv/bin/python bench/predict3d.py [--quick] [--sizes 256] [--widths 16] [--repeats 1]
     [--roi 128]

The 3D counterpart of bench/predict.py (same worker, same measurements): the 3D U-Net
(``cicek2016``, with running batch-norm statistics, ``batch_stats=False``) on a cube of synthetic
touching cells, useg with its default tile (fp32 and bf16 autocast) against MONAI's
``sliding_window_inference`` over the same network made same-padded (same weights), roi 128^3,
overlap 0.25, gaussian blending. The machine's limit uses a 64->64 3x3x3 convolution at 64^3
(channels_last_3d).

The default width is 16, a quarter of the paper's convolution work (width 32, ``--widths 32``):
at width 32 one repeat of the three configurations takes over half an hour on two cores.

Results: bench/results/predict3d.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from predict import HERE, command_line, machine_info, print_table, speed_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a 96^3 volume, roi 64")
    parser.add_argument("--sizes", type=int, nargs="+", help="volume sizes (default 256)")
    parser.add_argument("--widths", type=int, nargs="+", help="network widths (default 16)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats")
    parser.add_argument("--roi", type=int, help="MONAI roi side (default 128; 64 with --quick)")
    parser.add_argument("--monai-formats", nargs="+", default=["contiguous", "channels_last"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--threads", type=int, help="torch threads per run (default: all)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "predict3d.json")
    args = parser.parse_args()
    sizes = args.sizes or ([96] if args.quick else [256])
    widths = args.widths or [16]
    roi = args.roi or (64 if args.quick else 128)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "3D prediction on CPU: useg overlap tiles vs MONAI sliding window",
        "command": command_line(),
        "machine": machine_info(),
        "setup": {
            "network": "cicek2016 with batch_stats=False (valid) for useg; the same weights with "
                       "padding='same' for MONAI",
            "volume": "synthetic touching cells (useg.synthetic), 128^3 mirror-tiled, float32",
            "monai": {"roi": roi, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1},
            "useg": "predict() with its default tile; bf16 = autocast",
            "limit": "conv GFLOP/s of a 64->64 3x3x3 conv at 64^3 channels_last_3d (mean of "
                     "before and after each prediction, same process) / FLOPs per output voxel",
            "torch_threads": args.threads or "all (torch default)",
        },
    }
    with tempfile.TemporaryDirectory(prefix="useg-bench3d-") as tmp:
        print(f"speed: sizes {sizes}, widths {widths}, {args.repeats} repeat(s)", flush=True)
        result["speed"] = speed_comparison(args, 3, "cicek2016", sizes, widths, roi, Path(tmp),
                                           HERE / "predict.py")
    result["elapsed_s"] = time.time() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result["speed"])
    print(f"elapsed {result['elapsed_s'] / 60:.1f} min -> {args.output}")


if __name__ == "__main__":
    main()

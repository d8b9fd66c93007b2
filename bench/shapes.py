"""Shape tables, parameter counts and the seam test of the papers' presets.

Prints, for ``ronneberger2015`` and ``cicek2016``: parameter count, number of convolution
layers, halo, smallest valid input, and valid input sizes with their outputs; then stitches a
large image from overlap tiles with the full 2D preset and reports the largest difference from
one forward pass over the whole mirror-padded image (fp32 and fp64).

Run: ``.venv/bin/python bench/shapes.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from useg.nets import (
    UNet,
    halo,
    min_input_shape,
    output_shape,
    pool_step,
    preset,
    valid_input_shape,
)
from useg.tiling import plan_tiles, predict_tiled

RESULTS = Path(__file__).parent / "results"


def seam_test(dtype: torch.dtype, size: int, tile: int) -> dict:
    torch.manual_seed(0)
    cfg = preset("ronneberger2015", in_channels=1, classes=2)
    net = UNet(cfg).eval().to(dtype)
    image = np.random.default_rng(0).standard_normal((1, size, size)).astype(np.float32)
    tile_shape = valid_input_shape(cfg, tile)

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(x)).to(dtype)).numpy()

    t0 = time.perf_counter()
    tiled = predict_tiled(run, image, tile=tile_shape, out_channels=2, halo=halo(cfg),
                          step=pool_step(cfg), dtype=np.float64)
    t_tiles = time.perf_counter() - t0
    plan = plan_tiles(image.shape[1:], tile_shape, halo(cfg), 0, pool_step(cfg))
    padded = plan.padded_shape()
    ctx = plan.context
    pads = [(0, 0)] + [(c, p - s - c) for c, p, s in zip(ctx, padded, image.shape[1:], strict=True)]
    whole = run(np.pad(image, pads, mode="reflect")[None])[0][:, :size, :size]
    diff = np.abs(tiled - whole)
    return {"dtype": str(dtype).replace("torch.", ""), "image": [size, size],
            "tile": list(tile_shape), "tiles": len(plan), "max_abs_diff": float(diff.max()),
            "max_abs_output": float(np.abs(whole).max()), "seconds_tiled": round(t_tiles, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the full-size seam test")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    tables = {}
    for name, kwargs, requests in [
        ("ronneberger2015", {"in_channels": 1, "classes": 2}, [188, 256, 512, 572, 1024, 2048]),
        ("cicek2016", {"in_channels": 3, "classes": 3}, [(116, 132, 132), 128, 256]),
    ]:
        cfg = preset(name, **kwargs)
        net = UNet(cfg)
        convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        rows = []
        for r in requests:
            shape = valid_input_shape(cfg, r)
            rows.append({"requested": r, "input": list(shape),
                         "output": list(output_shape(cfg, shape))})
        tables[name] = {
            "config": {k: v for k, v in cfg.to_dict().items() if v is not None},
            "parameters": sum(p.numel() for p in net.parameters()),
            "conv_layers": len(convs), "halo": list(halo(cfg)),
            "min_input": list(min_input_shape(cfg)), "pool_step": list(pool_step(cfg)),
            "valid_inputs": rows,
        }
        t = tables[name]
        print(f"\n{name}: {t['parameters']:,} parameters, {t['conv_layers']} conv layers, "
              f"halo {t['halo']}, min input {t['min_input']}, step {t['pool_step']}")
        print(f"{'requested':>18} | {'valid input':>18} | {'output':>15}")
        for r in rows:
            print(f"{str(r['requested']):>18} | {str(r['input']):>18} | {str(r['output']):>15}")
    seams = []
    if not args.quick:
        for dtype in (torch.float32, torch.float64):
            seams.append(seam_test(dtype, size=1000, tile=572))
        print("\nseam test, ronneberger2015 (1 -> 2 classes), random He-initialised weights:")
        print(f"{'dtype':>8} | {'image':>10} | {'tile':>10} | tiles | max |tiled - whole|")
        for s in seams:
            print(f"{s['dtype']:>8} | {str(s['image']):>10} | {str(s['tile']):>10} | "
                  f"{s['tiles']:5d} | {s['max_abs_diff']:.3g} (outputs up to "
                  f"{s['max_abs_output']:.3g})")
    RESULTS.mkdir(exist_ok=True)
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
           "torch": torch.__version__, "presets": tables, "seam_test": seams}
    (RESULTS / "shapes.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

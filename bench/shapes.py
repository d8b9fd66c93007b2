"""Shape tables, parameter counts and the seam test of the papers' presets.

Prints, for ``ronneberger2015`` and ``cicek2016``: parameter count, number of convolution
layers, halo, smallest valid input, and valid input sizes with their outputs; then stitches a
large image from overlap tiles with the full 2D preset and reports the largest difference from
one forward pass over the whole mirror-padded image (fp32 and fp64), and does the same for a
narrow ``cicek2016`` (batch norm with running statistics, after a few training-mode passes) with
several tile shapes through ``useg.inference.predict.predict`` (fp32, probabilities).

For the image sizes of the speed benches, it also gives the convolutions of one pass over the
whole mirror-padded image over those of the ideal (:func:`predict.one_pass_factor`): the
valid network's own overhead, which no tiling can remove and which the fraction of the conv
limit that bench/predict.py and bench/predict3d.py report includes.

Run: ``.venv/bin/python bench/shapes.py [--quick] [--output FILE]`` (default
bench/results/shapes.json)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, command_line, machine_info, write_json
from predict import ONE_PASS_IMAGES, ONE_PASS_VOLUMES, one_pass_factor
from torch import nn

from useg.inference.tiling import plan_tiles, predict_tiled
from useg.nets import (
    UNet,
    halo,
    min_input_shape,
    output_shape,
    pool_step,
    preset,
    valid_input_shape,
)


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


def seam_test_3d(width: int = 4, shape: tuple[int, ...] = (13, 17, 21)) -> dict:
    """The ``cicek2016`` preset at a narrow ``width``: probabilities of several tile plans
    against one pass over the whole mirror-padded volume."""
    from useg.inference.predict import predict
    from useg.inference.tile_choice import whole_image_tile

    torch.manual_seed(0)
    net = UNet(preset("cicek2016", in_channels=1, classes=3, width=width))
    # Training-mode passes move the running statistics away from their initial 0 and 1.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(2.0 + 3.0 * torch.randn(2, 1, 92, 92, 92))
    net.eval()
    cfg = net.config
    image = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    unchanged = {"offset": [0.0], "scale": [1.0]}
    whole_tile = whole_image_tile(net, shape)
    plan = plan_tiles(shape, whole_tile, halo(cfg), 0, pool_step(cfg))
    pads = [(0, 0)] + [(c, p - s - c)
                       for c, p, s in zip(plan.context, plan.padded_shape(), shape, strict=True)]
    with torch.no_grad():
        logits = net(torch.from_numpy(np.pad(image, pads, mode="reflect")[None]))[0]
    whole = torch.softmax(logits, 0).numpy()[(slice(None), *(slice(0, n) for n in shape))]
    rows = []
    for tile in ((100, 108, 116), (108, 100, 108), (100, 100, 100)):
        tiled = predict(net, image, tile=tile, device="cpu", precision="fp32", stats=unchanged)
        rows.append({"tile": list(tile), "tiles": len(plan_tiles(shape, tile, halo(cfg), 0,
                                                                 pool_step(cfg))),
                     "max_abs_diff": float(np.abs(tiled - whole).max())})
    return {"preset": f"cicek2016 width {width}", "batch_stats": cfg.batch_stats,
            "image": list(shape), "whole_tile": list(whole_tile), "tiles": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the full-size seam test")
    ap.add_argument("--output", type=Path, default=RESULTS / "shapes.json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    machine = machine_info()
    tables = {}
    for name, kwargs, requests, whole in [
        ("ronneberger2015", {"in_channels": 1, "classes": 2}, [188, 256, 512, 572, 1024, 2048],
         ONE_PASS_IMAGES),
        ("cicek2016", {"in_channels": 3, "classes": 3}, [(116, 132, 132), 128, 256],
         ONE_PASS_VOLUMES),
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
            "one_pass_factor": {"x".join(map(str, w)): one_pass_factor(cfg, w) for w in whole},
        }
        t = tables[name]
        print(f"\n{name}: {t['parameters']:,} parameters, {t['conv_layers']} conv layers, "
              f"halo {t['halo']}, min input {t['min_input']}, step {t['pool_step']}")
        print(f"{'requested':>18} | {'valid input':>18} | {'output':>15}")
        for r in rows:
            print(f"{str(r['requested']):>18} | {str(r['input']):>18} | {str(r['output']):>15}")
        print("one pass over a whole image, mirrored context, no tiles: convolutions over the "
              "ideal's (FLOPs per output pixel without any context) "
              + ", ".join(f"{k} {v:.3f}x" for k, v in t["one_pass_factor"].items()))
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
    seam_3d = None
    if not args.quick:
        seam_3d = seam_test_3d()
        print(f"\nseam test, {seam_3d['preset']} (running statistics), image "
              f"{seam_3d['image']}, fp32 probabilities:")
        for r in seam_3d["tiles"]:
            print(f"{str(r['tile']):>16} | {r['tiles']:3d} tiles | max |tiled - whole| "
                  f"{r['max_abs_diff']:.3g}")
    write_json(args.output, {"command": command_line(), "machine": machine,
                             "presets": tables, "seam_test": seams, "seam_test_3d": seam_3d})


if __name__ == "__main__":
    main()

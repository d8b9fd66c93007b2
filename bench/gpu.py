"""One prepared run on a lent GPU: correctness on CUDA, the conv limit, prediction against MONAI,
training steps, and the paper's 2D recipe on ISBI 2012 (issues #16 item 5 and #18 item 4).

Run (on the device machine, from the repository root; see bench/README.md, "On a lent GPU"):

    PYTHONPATH=src python3 bench/gpu.py --out $OUT/gpu.json [--budget-s 500] [--parts ...]

Locally, ``--quick --device cpu`` runs every part at toy sizes (a check of the script itself,
nothing published).

Parts, in this order (each is skipped, and the skip recorded, when the seconds left of
``--budget-s`` are fewer than its estimate, so that one call returns a complete JSON):

* ``check``: the CUDA paths give what the CPU gives: the probabilities of one image predicted
  on the GPU (fp32) against the CPU's, tiled against one whole-image pass on the GPU (the
  seamless property), bf16 autocast against fp32, and a 30-step training run on synthetic cells
  (loss finite, a model written).
* ``limit``: TFLOP/s of one 64->64 3-wide convolution (2D 1024^2 and 3D 128^3, channels-last)
  in bf16 and fp32 (TF32 as PyTorch's default allows for convolutions).
* ``train``: one training step (forward, weighted cross entropy, backward, SGD) of the paper's
  2D network at 572^2 and of the 3D one at 116x132x132, bf16 autocast and channels-last, the
  best of a few after warm-up; FLOPs = 3 x the forward convolutions, against the bf16 limit.
* ``predict2d`` / ``predict3d``: useg's overlap-tile prediction (bf16, its default tile) of a
  4096^2 image with the paper's width-64 network and of a 256^3 volume with cicek2016 width 32,
  against MONAI's ``sliding_window_inference`` (same weights in the same-padded network, bf16
  autocast, channels-last, gaussian blending, rois swept, overlap 0.25, sw_batch_size 4), and
  the largest difference of their probabilities, also against useg predicting with MONAI's
  same-padded network (what the windows and blending change). MONAI when importable: carry
  its wheel.
* ``isbi``: ``gpu-paper`` on ISBI 2012 (the paper's network, 572 tiles, SGD 0.99, poly, its
  2000 steps; weight map and elastic deformation), slices 0..14; checkpoint, threshold and the
  way from map to cells chosen on 15..19 (bench/isbi2012_segment.py's search); 20..24 scored
  once at that choice. Needs the dataset (``USEG_DATA``).

The JSON holds the GPU's name, torch and CUDA versions, the command and the date, and each
part's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import RESULTS, command_line, machine_info, publish, write_json

from useg.inference.predict import predict
from useg.nets import UNet

# Seconds each part is expected to take on an H200 (a guess before any run: the budget check's
# only input), and at --quick.
ESTIMATE_S = {"check": 40, "limit": 20, "train": 40, "predict2d": 90, "predict3d": 120,
              "isbi": 300}
PARTS = tuple(ESTIMATE_S)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _fmt(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 2 else torch.channels_last_3d


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _net(preset: str, width: int, padding: str = "valid") -> UNet:
    """bench/predict.py's network of a preset and width (the valid and same-padded ones get
    the very same weights)."""
    from predict import network_for

    return network_for({"preset": preset, "width": width}, padding)


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth random structure, float32, one channel."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 3)
    return (x / x.std())[None]


# ----------------------------------------------------------------------------------------------
# Parts


def part_check(args, device: torch.device) -> dict[str, Any]:
    """The CUDA paths agree with the CPU and with themselves."""
    side = 200 if args.quick else 700
    net = _net("ronneberger2015", 8 if args.quick else 16)
    image = _image((side, side + 77))
    cpu = predict(net, image, device="cpu", precision="fp32")
    gpu = predict(net, image, device=device, precision="fp32")
    tiled = predict(net, image, device=device, precision="fp32", tile=220 if args.quick else 252)
    bf16 = predict(net, image, device=device, precision="bf16")
    out = {"image": list(image.shape[1:]),
           "max_abs_gpu_fp32_vs_cpu": float(np.abs(gpu - cpu).max()),
           "max_abs_gpu_tiled_vs_default_tile": float(np.abs(tiled - gpu).max()),
           "max_abs_gpu_bf16_vs_fp32": float(np.abs(bf16 - gpu).max()),
           "tf32_convolutions_allowed": bool(torch.backends.cudnn.allow_tf32)}
    out["training"] = _short_training(args, device)
    return out


def _short_training(args, device: torch.device) -> dict[str, Any]:
    from useg.training.from_folders import make_config
    from useg.training.loop import train
    from useg.training.samples import load_pairs
    from useg.workflows.synthetic import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root / "train", n_images=2, shape=(128, 128), seed=1)
        cfg = make_config(2, recipe="cpu-fast", device=str(device), iterations=30, workers=0,
                          log_every=10, checkpoint_every=30, seed=0)
        samples = load_pairs(root / "train/images", root / "train/labels", ndim=2,
                             in_channels=1, **cfg.sample_options())
        t0 = time.perf_counter()
        model_file = train(cfg, samples, root / "run", progress=False)
        seconds = time.perf_counter() - t0
        from useg.training.run_folder import read_log

        rows = read_log(root / "run" / "log.csv")
        return {"steps": 30, "seconds": seconds, "model_written": model_file.exists(),
                "last_loss": float(rows[-1]["loss"]),
                "loss_finite": all(math.isfinite(float(r["loss"])) for r in rows),
                "precision": cfg.precision}


def conv_tflops(ndim: int, bf16: bool, device: torch.device, quick: bool) -> float:
    shape = ((256, 256) if quick else (1024, 1024)) if ndim == 2 else \
        ((32, 32, 32) if quick else (128, 128, 128))
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(64, 64, 3, padding=1)
    dtype = torch.bfloat16 if bf16 else torch.float32
    conv = conv.to(device=device, dtype=dtype, memory_format=_fmt(ndim)).eval()
    x = torch.randn(1, 64, *shape, device=device, dtype=dtype).contiguous(
        memory_format=_fmt(ndim))
    with torch.inference_mode():
        times = timed(lambda: conv(x), device, repeats=3 if quick else 20, warmup=3)
    return 2.0 * 64 * 64 * 3**ndim * math.prod(shape) / float(np.median(times)) / 1e12


def part_limit(args, device: torch.device) -> dict[str, Any]:
    return {f"{ndim}d_{p}_tflops": conv_tflops(ndim, p == "bf16", device, args.quick)
            for ndim in (2, 3) for p in ("bf16", "fp32")}


def _train_case(preset: str, width: int, tile: tuple[int, ...], device: torch.device,
                repeats: int) -> dict[str, Any]:
    """Seconds of one bare training step (bf16 autocast, channels-last) and its TFLOP/s."""
    from train_step import conv_flops

    from useg.nets import output_shape
    from useg.training.losses import SegmentationLoss

    ndim = len(tile)
    net = _net(preset, width).to(device=device, memory_format=_fmt(ndim)).train()
    x = torch.randn(1, 1, *tile, device=device).contiguous(memory_format=_fmt(ndim))
    flops = 3 * conv_flops(net, x)
    shape = output_shape(net.config, tile)
    y = torch.randint(0, 2, (1, *shape), device=device)
    w = torch.ones((1, *shape), device=device)
    loss_fn = SegmentationLoss()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, True):
            logits = net(x)
        loss_fn(logits.float(), y, w).backward()
        opt.step()

    times = timed(step, device, repeats=repeats, warmup=2)
    return {"preset": preset, "width": width, "tile": list(tile), "step_tflop": flops / 1e12,
            "best_step_s": min(times), "median_step_s": float(np.median(times)),
            "tflops": flops / min(times) / 1e12}


def part_train(args, device: torch.device, limit: dict[str, Any] | None) -> dict[str, Any]:
    cases = {"2d_paper": ("ronneberger2015", 64, (572, 572)),
             "3d_paper": ("cicek2016", 32, (116, 132, 132))}
    if args.quick:
        cases = {"2d_paper": ("ronneberger2015", 8, (188, 188)),
                 "3d_paper": ("cicek2016", 4, (116, 132, 132))}
    out = {}
    for name, (preset, width, tile) in cases.items():
        row = _train_case(preset, width, tile, device, 2 if args.quick else 10)
        key = f"{len(tile)}d_bf16_tflops"
        if limit and key in limit:
            row["fraction_of_bf16_conv_limit"] = row["tflops"] / limit[key]
        out[name] = row
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def part_predict(args, device: torch.device, ndim: int) -> dict[str, Any]:
    from useg.io import normalize as norm

    if ndim == 2:
        preset, width, shape = "ronneberger2015", 64, (4096, 4096)
        rois = (512, 1024)
        if args.quick:
            width, shape, rois = 8, (300, 300), (128,)
    else:
        preset, width, shape = "cicek2016", 32, (256, 256, 256)
        rois = (128, 192)
        if args.quick:
            width, shape, rois = 4, (64, 64, 64), (48,)
    image = _image(shape)
    net = _net(preset, width)
    repeats = 1 if args.quick else 3
    probs: dict[str, np.ndarray] = {}

    def useg_run():
        probs["useg"] = predict(net, image, device=device, precision="bf16")

    result: dict[str, Any] = {"preset": preset, "width": width, "shape": list(shape)}
    times = timed(useg_run, device, repeats)
    result["useg"] = {"seconds": times, "best_s": min(times),
                      "megavoxels_per_s": math.prod(shape) / min(times) / 1e6}
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        result["monai"] = "not importable (carry its wheel, see the docstring)"
        return result
    same = _net(preset, width, "same").to(device=device, memory_format=_fmt(ndim))
    # useg with MONAI's own (same-padded) network: what MONAI's windows and blending change,
    # apart from the padding.
    probs["useg_same"] = predict(same, image, device=device, precision="bf16")
    stats = norm.image_stats(image)
    for roi in rois:
        def monai_run(roi=roi):
            x = torch.from_numpy(norm.normalize(image, stats))[None].to(device)
            x = x.contiguous(memory_format=_fmt(ndim))
            with torch.inference_mode(), _autocast(device, True):
                logits = sliding_window_inference(x, roi_size=roi, sw_batch_size=4,
                                                  predictor=same, overlap=0.25,
                                                  mode="gaussian")
            probs["monai"] = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()

        times = timed(monai_run, device, repeats)
        result[f"monai_roi{roi}"] = {
            "seconds": times, "best_s": min(times),
            "useg_speedup": min(times) / result["useg"]["best_s"],
            "max_abs_vs_useg": float(np.abs(probs["monai"] - probs["useg"]).max()),
            "mean_abs_vs_useg": float(np.abs(probs["monai"] - probs["useg"]).mean()),
            "max_abs_vs_useg_same_network": float(
                np.abs(probs["monai"] - probs["useg_same"]).max())}
    return result


def part_isbi(args, device: torch.device) -> dict[str, Any]:
    from isbi2012 import (
        SCORES,
        TEST_SLICES,
        TRAIN_SLICES,
        VAL_SLICES,
        load_slices,
        predict_slices,
        prediction_tile,
        samples,
    )
    from isbi2012_segment import best_per_way, best_way, scores_at, search

    from useg.io.datasets import dataset
    from useg.nets.checkpoint import load_model
    from useg.training.from_folders import make_config
    from useg.training.loop import train

    root = dataset("isbi2012")
    if root is None:
        return {"skipped": "isbi2012 not found (set USEG_DATA to a folder holding it)"}
    k = 2 if args.quick else None
    cfg = make_config(2, recipe="gpu-paper", device=str(device), workers=4,
                      **({"iterations": 10, "width": 8, "tile": 188} if args.quick else {}))
    cfg.w0, cfg.sigma, cfg.class_balance, cfg.label_mode = 10.0, 5.0, True, "binary"
    cfg.val_every, cfg.seed = max(cfg.iterations // 20, 1), 0
    data = {}
    for part, indices in (("train", TRAIN_SLICES), ("val", VAL_SLICES), ("test", TEST_SLICES)):
        images, labels = load_slices(root, indices[:k] if k else indices)
        data[part] = (images, labels,
                      [f"train/{i}.png" for i in indices][:len(images)])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        chosen = train(cfg, samples(*data["train"][:2], cfg, data["train"][2]), Path(tmp),
                       val_samples=samples(*data["val"][:2], cfg, data["val"][2]),
                       progress=False)
        train_s = time.perf_counter() - t0
        model = load_model(chosen, device=str(device))
    tile = prediction_tile(model.meta["config"], data["val"][0][0].shape[1:])
    val_truth = np.stack([lab > 0 for lab in data["val"][1]])
    val_probs = predict_slices(model, data["val"][0], tile, cfg.precision, device=str(device))
    best = best_per_way(search(val_probs, val_truth))
    way = best_way(best)
    # The test slices are predicted and scored only now, once, at the validation choice.
    test_probs = predict_slices(model, data["test"][0], tile, cfg.precision, device=str(device))
    test_truth = np.stack([lab > 0 for lab in data["test"][1]])
    scores = scores_at(test_probs, test_truth, best[way]["settings"])
    return {"config": cfg.to_dict(), "train_s": train_s, "checkpoint_step": model.meta.get("step"),
            "way": way, "settings": best[way]["settings"],
            "validation": {k: best[way][k] for k in ("pixel_error", "adapted_rand_error")},
            "test": {k: scores[k] for k in SCORES},
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------


def merged(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The reports of several calls as one: their parts together (a later call's part replaces
    an earlier one's), what each call skipped or failed unless a later call ran it, and every
    command."""
    out = {**reports[0], "parts": {}, "skipped": {}, "failed": {},
           "commands": [r["command"] for r in reports]}
    for r in reports:
        out["parts"].update(r["parts"])
        for key in ("skipped", "failed"):
            out[key].update(r.get(key, {}))
    for key in ("skipped", "failed"):
        out[key] = {k: v for k, v in out[key].items() if k not in out["parts"]}
    out["command"] = " ; ".join(out["commands"])
    return out


def markdown(report: dict[str, Any]) -> str:
    """The tables of one run's JSON."""
    parts = report["parts"]
    lines = [f"# On a GPU: {report.get('gpu')} (torch {report['machine'].get('torch')}, CUDA "
             f"{report.get('cuda')})", "", f"Command: `{report['command']}`; "
             f"{report['machine'].get('date')}.", ""]
    if "check" in parts:
        c = parts["check"]
        lines += ["## CUDA against the CPU", "",
                  f"- GPU fp32 against CPU fp32, largest probability difference: "
                  f"{c['max_abs_gpu_fp32_vs_cpu']:.2e} (TF32 convolutions allowed: "
                  f"{c['tf32_convolutions_allowed']})",
                  f"- GPU tiled against the default tile: "
                  f"{c['max_abs_gpu_tiled_vs_default_tile']:.2e}",
                  f"- GPU bf16 against GPU fp32: {c['max_abs_gpu_bf16_vs_fp32']:.2e}",
                  f"- 30 training steps: loss finite {c['training']['loss_finite']}, model "
                  f"written {c['training']['model_written']}, {c['training']['seconds']:.1f} s",
                  ""]
    if "limit" in parts:
        lines += ["## Convolution limit (one 64->64 3-wide convolution, TFLOP/s)", "",
                  "| | bf16 | fp32 |", "|---|---|---|"]
        for nd in (2, 3):
            lim = parts["limit"]
            lines.append(f"| {nd}D | {lim[f'{nd}d_bf16_tflops']:.1f} | "
                         f"{lim[f'{nd}d_fp32_tflops']:.1f} |")
        lines.append("")
    if "train" in parts:
        lines += ["## Training step (bf16 autocast, channels-last)", "",
                  "| network | tile | step s (best) | TFLOP/s | fraction of the bf16 limit |",
                  "|---|---|---|---|---|"]
        for name, r in parts["train"].items():
            if not isinstance(r, dict):
                continue
            frac = r.get("fraction_of_bf16_conv_limit")
            lines.append(f"| {name} (width {r['width']}) | {r['tile']} | "
                         f"{r['best_step_s']:.4f} | {r['tflops']:.1f} | "
                         f"{'-' if frac is None else f'{frac:.2f}'} |")
        lines.append("")
    for name in ("predict2d", "predict3d"):
        if name not in parts:
            continue
        r = parts[name]
        lines += [f"## Prediction, {r['preset']} width {r['width']} on {r['shape']} (bf16)", "",
                  "| run | best s | useg faster by | largest / mean probability difference | "
                  "largest against useg with the same network |", "|---|---|---|---|---|",
                  f"| useg (default tile) | {r['useg']['best_s']:.2f} | | | |"]
        for key, m in r.items():
            if key.startswith("monai_roi"):
                lines.append(f"| MONAI roi {key[9:]} | {m['best_s']:.2f} | "
                             f"{m['useg_speedup']:.2f}x | {m['max_abs_vs_useg']:.2e} / "
                             f"{m['mean_abs_vs_useg']:.2e} | "
                             f"{m['max_abs_vs_useg_same_network']:.2e} |")
        if isinstance(r.get("monai"), str):
            lines.append(f"| MONAI | {r['monai']} | | | |")
        lines.append("")
    if "isbi" in parts and "test" in parts["isbi"]:
        r = parts["isbi"]
        v, t = r["validation"], r["test"]
        lines += ["## gpu-paper on ISBI 2012 (train 0..14, choose 15..19, test 20..24 once)", "",
                  f"Training {r['train_s'] / 60:.1f} min, checkpoint step {r['checkpoint_step']},"
                  f" way `{r['way']}` {r['settings']} (chosen on validation).", "",
                  "| | pixel error | adapted Rand error |", "|---|---|---|",
                  f"| validation | {v['pixel_error']:.4f} | {v['adapted_rand_error']:.4f} |",
                  f"| test | {t['pixel_error']:.4f} | {t['adapted_rand_error']:.4f} |", ""]
    for key in ("skipped", "failed"):
        for name, why in report.get(key, {}).items():
            lines.append(f"- {name} {key}: {why.strip().splitlines()[-1]}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="the JSON to write")
    parser.add_argument("--publish", type=Path, nargs="+", metavar="JSON",
                        help="here, after the runs: keep the JSONs of one or more calls (their "
                             "parts merged, later ones win) as bench/results/gpu.json and "
                             "print the tables (gpu.md)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--budget-s", type=float, default=500.0,
                        help="seconds this call may take; a part that would not fit is skipped")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a check of the script)")
    args = parser.parse_args()
    if args.publish:
        reports = [json.loads(p.read_text()) for p in args.publish]
        if any(r.get("quick") or r.get("device", "").startswith("cpu") for r in reports):
            sys.exit("a --quick or CPU run checks the script: nothing to publish")
        report = merged(reports)
        publish(RESULTS, "gpu", report, markdown(report))
        return
    if args.out is None:
        parser.error("--out is required (or --publish)")
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here")
    report: dict[str, Any] = {
        "benchmark": "gpu", "command": command_line(), "machine": machine_info(),
        "quick": args.quick, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda, "parts": {}, "skipped": {}, "failed": {}}
    for name in args.parts:
        left = args.budget_s - (time.perf_counter() - start)
        if not args.quick and left < ESTIMATE_S[name]:
            report["skipped"][name] = f"{left:.0f} s left, {ESTIMATE_S[name]} s expected"
            continue
        print(f"[{name}] ({left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "check":
                result = part_check(args, device)
            elif name == "limit":
                result = part_limit(args, device)
            elif name == "train":
                result = part_train(args, device, report["parts"].get("limit"))
            elif name in ("predict2d", "predict3d"):
                result = part_predict(args, device, int(name[-2]))
            else:
                result = part_isbi(args, device)
        except Exception as exc:  # one part's failure must not lose the others' figures
            report["failed"][name] = "".join(traceback.format_exception(exc))[-3000:]
            print(report["failed"][name], flush=True)
            continue
        result["part_seconds"] = time.perf_counter() - t0
        report["parts"][name] = result
        print(json.dumps(result, indent=1, default=str)[:2000], flush=True)
        write_json(args.out, report)  # what is done survives a kill at the time limit
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - start
    write_json(args.out, report)
    print(f"-> {args.out} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

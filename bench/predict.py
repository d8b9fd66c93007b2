"""Prediction speed and memory on CPU: useg's overlap tiles against MONAI's sliding window, 2D.

Run: .venv/bin/python bench/predict.py [--quick] [--sizes 2048] [--widths 64 32] [--repeats 2]
     [--memory-sizes 2048 4096 8192 16384] [--memory-width 16] [--no-profile] [--threads N]
     [--no-speed] [--monai-sweep [--sweep-rois 256 512 1024] [--sweep-overlaps 0.25 0.5]
     [--sweep-precisions fp32 bf16] [--sweep-widths 64 32]]

Speed (each configuration in a fresh subprocess, repeats interleaved, same image and weights):

- useg: ``predict(UNet("ronneberger2015", width=W), image)``: the paper's valid network, its
  default tile, fp32 and bf16 autocast (``--precisions``; by default bf16 only where the CPU
  has bf16 instructions: emulated, it is ~10x slower and would only lengthen the run);
- MONAI: ``sliding_window_inference`` over the same network made same-padded
  (``UNet("ronneberger2015", padding="same")``, loaded with the very same weights), roi 512,
  overlap 0.25, gaussian blending, ``sw_batch_size=1``, then softmax; once in PyTorch's default
  memory format (as MONAI's tutorials run it) and once in channels_last (a tuned peer).

Both include the intensity normalisation (the same percentile statistics) and the softmax.

MONAI in its best configuration (``--monai-sweep``, the ``monai_best`` part of the results): MONAI
in every configuration of a sweep, memory format (contiguous, channels_last) x roi (256, 512,
1024) x overlap (0.25, 0.5), each in the precision of the useg run it is compared with (fp32, and
bf16 autocast for both where the CPU has bf16 instructions); then useg and the fastest
configuration of each precision back to back, ``--repeats`` times, for the ratio. Each MONAI
output is compared with two useg outputs of the same precision: the timed one (valid network)
and useg predicting with MONAI's own network (same padding), which isolates what MONAI's windows
and blending change. The part records the CPU (lscpu model name and flags) and the date.
Duration, modelled from the windows MONAI runs and the committed rates of the 2-core avx512_bf16
machine (not measured): about 3 hours at 2048^2 for widths 64 and 32 (80% of it width 64), 2 of
them fp32; a CPU without bf16 instructions sweeps fp32 only by default, at its own fp32 speed.

The machine's limit, measured inside every subprocess just before and after its prediction:
the GFLOP/s of one 64->64 3x3 convolution at 512x512 (channels_last, fp32 and bf16), divided by
the network's convolution FLOPs per output pixel without tiling overhead (counted analytically
from the configuration below). Fraction of the limit = measured megapixels/s / limit.

Memory: peak RSS of each subprocess (``ru_maxrss``) and, sampled every 0.1 s, its anonymous and
file-backed parts. The memory series predicts disk-backed ``np.memmap`` images of growing size
into a disk-backed ``out=`` memmap, with a narrow network (``--memory-width``).

Results: bench/results/predict.json (3D: bench/predict3d.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    command_line,
    cpu_line,
    machine_info,
    peak_rss_bytes,
    summary,
    write_json,
)

from useg.device import cpu_has_native_bf16
from useg.io.arrays import release_pages

# ----------------------------------------------------------------------------------------------
# Analytic work of a network, and the machine's convolution speed


def flops_per_pixel(cfg: Any) -> float:
    """Convolution FLOPs (2 per multiply-accumulate) per output pixel of one pass over an image
    without tiling overhead: every layer at the density of its level (1 / product of the pooling
    factors above it); up-convolutions with stride equal to the kernel use one tap per pixel."""
    taps = [math.prod(k) for k in cfg.kernels()]
    density = [1.0]
    for p in cfg.pools():
        density.append(density[-1] / math.prod(p))
    macs, c_in = 0.0, cfg.in_channels
    for level in range(cfg.depth + 1):
        mid, out = cfg.level_channels(level)
        macs += density[level] * taps[level] * (c_in * mid + mid * out)
        c_in = out
    for level in reversed(range(cfg.depth)):
        c_up = c_in if cfg.up_keep_channels else c_in // 2
        c_skip = cfg.level_channels(level)[1]
        convs = taps[level] * ((c_up + c_skip) * c_skip + c_skip**2)
        macs += density[level] * (c_in * c_up + convs)
        c_in = c_skip
    macs += c_in * cfg.classes
    return 2.0 * macs


# The image and volume shapes whose one-pass factor bench/shapes.py tabulates (and
# bench/predict3d.py --layers reports beside its own cube).
ONE_PASS_IMAGES = ((1024, 1024), (2048, 2048), (16384, 16384))
ONE_PASS_VOLUMES = ((256, 256, 256), (128, 512, 512), (512, 512, 512))


def one_pass_factor(cfg: Any, shape: Sequence[int]) -> float:
    """Convolution FLOPs of one pass over a whole image of ``shape`` padded by the network's
    context (the smallest valid input at least that large, as mirrored context at the border
    needs), over ``shape``'s pixels times :func:`flops_per_pixel`. Valid convolutions compute
    the border's context even without tiles, so a prediction of that image reaches at most one
    tile pass's fraction of the limit divided by this factor."""
    from useg.nets.geometry import conv_macs, halo, valid_input_shape

    padded = [n + 2 * h for n, h in zip(shape, halo(cfg), strict=True)]
    inp = valid_input_shape(cfg, padded, mode="up")
    return 2 * conv_macs(cfg, inp) / (math.prod(shape) * flops_per_pixel(cfg))


def layer_flops(module: Any, out_shape: Sequence[int]) -> float:
    """FLOPs (2 per multiply-add) of one convolution or up-convolution module whose output has
    the spatial shape ``out_shape``; an up-convolution's stride spreads its taps, so with stride
    equal to the kernel each output pixel meets one tap."""
    import torch

    taps = math.prod(module.kernel_size)
    if isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
        taps /= math.prod(module.stride)
    return (2.0 * module.in_channels * module.out_channels / module.groups * taps
            * math.prod(out_shape))


def conv_gflops(ndim: int = 2, dtype: str = "fp32", repeats: int = 5) -> float:
    """Median GFLOP/s of one 64->64 convolution with a 3-wide kernel, channels_last: 512x512 in
    2D, 64^3 in 3D."""
    import torch

    shape = (512, 512) if ndim == 2 else (64, 64, 64)
    conv_cls = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    fmt = torch.channels_last if ndim == 2 else torch.channels_last_3d
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    conv = conv_cls(64, 64, 3, padding=1).eval().to(dtype=dt, memory_format=fmt)
    x = torch.randn(1, 64, *shape, generator=gen).to(dt).contiguous(memory_format=fmt)
    flops = 2.0 * 64 * 64 * 3**ndim * math.prod(shape)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            conv(x)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return flops / float(np.median(times)) / 1e9


# ----------------------------------------------------------------------------------------------
# One configuration, run in a fresh subprocess


class RssSampler:
    """Samples the anonymous and file-backed resident memory of this process in a thread."""

    def __init__(self, period: float = 0.05):
        self.period, self.peak = period, {"RssAnon": 0, "RssFile": 0}
        self.at_peak = {"RssAnon": 0, "RssFile": 0}  # both parts when their sum was largest
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in self.peak:
                now[key] = int(line.split()[1]) * 1024
                self.peak[key] = max(self.peak[key], now[key])
        if sum(now.values()) > sum(self.at_peak.values()):
            self.at_peak = now

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self):
        if Path("/proc/self/status").exists():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self._sample()


def network_for(spec: dict, padding: str):
    import torch

    from useg.nets import UNet

    torch.manual_seed(0)  # valid and same networks get the very same weights
    kw = {"batch_stats": False} if spec["preset"] == "cicek2016" else {}
    return UNet(spec["preset"], width=spec["width"], padding=padding, **kw).eval()


def _profile_summary(prof, wall: float) -> dict:
    """Self CPU time per group of operators, and what ran outside PyTorch operators."""
    groups = {
        "convolution": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution"),
        "up-convolution (transposed)": ("aten::conv_transpose", "aten::_convolution_transpose"),
        "concatenation and copies": ("aten::cat", "aten::copy_", "aten::_to_copy", "aten::clone",
                                     "aten::contiguous"),
        "max pooling": ("aten::max_pool",),
        "relu": ("aten::relu", "aten::clamp_min"),
        "normalisation layers": ("aten::batch_norm", "aten::native_batch_norm",
                                 "aten::_batch_norm"),
        "softmax": ("aten::softmax", "aten::_softmax"),
        "blending (add, mul, div, pad, index)": ("aten::add", "aten::mul", "aten::div",
                                                 "aten::index", "aten::pad", "aten::constant_pad",
                                                 "aten::slice", "aten::fill_", "aten::zeros"),
    }
    seconds: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        s = ev.self_cpu_time_total / 1e6
        total += s
        name = next((g for g, prefixes in groups.items() if ev.key.startswith(prefixes)), "other")
        seconds[name] = seconds.get(name, 0.0) + s
    seconds["outside PyTorch operators (NumPy reads, normalisation, writes, Python)"] = max(
        0.0, wall - total)
    return {k: {"seconds": round(v, 3), "share": round(v / wall, 4)}
            for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}


def worker(spec: dict) -> dict:
    """Run one configuration and report its time and memory (called in a fresh process)."""
    import torch

    from useg.inference.predict import predict
    from useg.io import normalize as norm

    result: dict[str, Any] = {"loadavg_before": os.getloadavg()[0]}
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    ndim = spec["ndim"]
    # The machine's limit (skipped by the MONAI sweep, which compares runs, not the limit).
    with_limits = spec.get("limits", True)
    limits = [conv_gflops(ndim, "fp32")] if with_limits else []
    mmap_mode = "r" if spec.get("mmap") else None
    image = np.load(spec["image"], mmap_mode=mmap_mode)
    if ndim == len(image.shape):
        image = image[None]
    out = None
    if spec.get("out_memmap"):
        out = np.lib.format.open_memmap(spec["out_memmap"], mode="w+", dtype=np.float32,
                                        shape=(spec["classes"], *image.shape[1:]))
    prof = None
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
    with RssSampler() as sampler:
        if spec["kind"] == "useg":
            net = network_for(spec, spec.get("padding", "valid"))
            # A memory budget (GiB) for the tile, as useg predict --memory; the default else.
            gib = spec.get("memory_gib")
            _record_tile_used(result)
            if prof:
                prof.__enter__()
            t0, c0 = time.perf_counter(), time.process_time()
            probs = predict(net, image, device="cpu", precision=spec["precision"], out=out,
                            memory_gib=gib)
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        else:
            from monai.inferers import sliding_window_inference

            net = network_for(spec, "same")
            fmt = {"channels_last": torch.channels_last if ndim == 2 else torch.channels_last_3d,
                   "contiguous": torch.contiguous_format}[spec["memory_format"]]
            net = net.to(memory_format=fmt)
            if prof:
                prof.__enter__()
            t0, c0 = time.perf_counter(), time.process_time()
            stats = norm.image_stats(image)
            x = torch.from_numpy(norm.normalize(np.asarray(image), stats))[None]
            x = x.contiguous(memory_format=fmt)
            # The precision of useg's run: bf16 autocast around the network; MONAI blends the
            # windows in the input's dtype (float32) and the softmax runs in float32.
            bf16 = spec.get("precision", "fp32") == "bf16"
            with torch.inference_mode():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = sliding_window_inference(
                        x, roi_size=spec["roi"], sw_batch_size=1, predictor=net,
                        overlap=spec["overlap"], mode="gaussian",
                    )
                probs = torch.softmax(logits.float(), dim=1)[0].numpy()
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        if prof:
            prof.__exit__(None, None, None)
    if with_limits:
        limits.append(conv_gflops(ndim, "fp32"))
        # The bf16 limit only when the caller asks (a speed comparison that times bf16):
        # emulated (no bf16 instructions), the one 3D convolution alone takes minutes.
        bf16 = conv_gflops(ndim, "bf16") if spec.get("bf16_limit") else None
        result.update(conv_gflops_fp32=float(np.mean(limits)), conv_gflops_fp32_before_after=limits,
                      conv_gflops_bf16=bf16)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # where there is no VmHWM
    result.update(
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        megapixels_per_s=math.prod(image.shape[1:]) / seconds / 1e6,
        peak_rss_bytes=peak_rss_bytes() or maxrss * 1024,
        peak_rss_anon_bytes=sampler.peak["RssAnon"],
        peak_rss_file_bytes=sampler.peak["RssFile"],
        rss_anon_file_at_peak_bytes=[sampler.at_peak.get("RssAnon", 0),
                                     sampler.at_peak.get("RssFile", 0)],
        loadavg_after=os.getloadavg()[0],
        torch_threads=torch.get_num_threads(),
    )
    if prof:
        result["profile"] = _profile_summary(prof, seconds)
    if out is not None:
        out.flush()
        # Sanity of the disk-backed output: probabilities sum to one on a few rows.
        rows = np.linspace(0, out.shape[1] - 1, 7).astype(int)
        total = np.asarray(out[:, rows]).sum(axis=0)
        result["out_rows_sum_to_one"] = bool(np.allclose(total, 1.0, atol=1e-4))
    if spec.get("save"):
        np.save(spec["save"], np.asarray(probs, dtype=np.float32))
    if spec.get("compare_to"):
        # After the measurements: the references are read here, not during the prediction.
        result["agreement"] = {name: agreement(np.load(path, mmap_mode="r"), probs)
                               for name, path in spec["compare_to"].items()}
    return result


def agreement(reference: Any, probs: Any, slab: int = 32) -> dict:
    """Fraction of pixels whose most likely class is the same in both, and the max and mean
    |difference| of the probabilities, slab by slab along the first spatial axis."""
    same, n, max_diff, total = 0, 0, 0.0, 0.0
    for lo in range(0, reference.shape[1], slab):
        a = np.asarray(reference[:, lo : lo + slab], dtype=np.float32)
        b = np.asarray(probs[:, lo : lo + slab], dtype=np.float32)
        same += int((a.argmax(0) == b.argmax(0)).sum())
        n += a[0].size
        diff = np.abs(a - b)
        max_diff, total = max(max_diff, float(diff.max())), total + float(diff.sum())
    return {"argmax_agreement": same / n, "max_abs_prob_diff": max_diff,
            "mean_abs_prob_diff": total / (n * reference.shape[0])}


def _record_tile_used(result: dict) -> None:
    """Make ``predict`` write the tile it chose into ``result["tile"]``, and whether it kept
    freed memory for it into ``result["freed_memory_kept"]`` (it halves its default budget
    then)."""
    import useg.inference.predict as module

    choose = module.tile_geometry

    def recorded(*args: Any, **kwargs: Any):
        geometry = choose(*args, **kwargs)
        result["tile"] = list(geometry[0])
        result["freed_memory_kept"] = bool(kwargs.get("freed_kept"))
        return geometry

    module.tile_geometry = recorded


def run_worker(spec: dict, script: Path = Path(__file__), env: dict | None = None,
               flag: str = "--worker") -> dict:
    """Run ``script flag spec`` in a fresh process (with ``env`` added to this one's) and return
    the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, str(script), flag, json.dumps(spec)],
        capture_output=True, text=True, check=False, env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# Reporting


def accuracy(reference: Path, other: Path) -> dict:
    """Max and mean |difference| of probabilities, fraction of changed argmax labels."""
    a, b = np.load(reference), np.load(other)
    diff = np.abs(a - b)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "changed_label_fraction": float((a.argmax(0) != b.argmax(0)).mean())}


def synthetic_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Touching cells (``useg.workflows.synthetic``), mirror-tiled from a 2048 (2D) or 128 (3D)
    block."""
    from useg.workflows.synthetic import touching_cells

    block = tuple(min(s, 2048 if len(shape) == 2 else 128) for s in shape)
    image = touching_cells(block, rng=seed)[0][0]
    pads = [(0, s - b) for s, b in zip(shape, block, strict=True)]
    return np.pad(image, pads, mode="symmetric").astype(np.float32)


def write_memmap_image(path: Path, n: int, base: np.ndarray) -> None:
    """An (n, n) float32 .npy on disk, written in row blocks by mirror-tiling ``base``."""
    img = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n))
    b = base.shape[0]
    reps = -(-n // b)
    row = np.concatenate([base if i % 2 == 0 else base[:, ::-1] for i in range(reps)], axis=1)
    for i in range(reps):
        lo, hi = i * b, min(n, (i + 1) * b)
        block = row if i % 2 == 0 else row[::-1]
        img[lo:hi] = block[: hi - lo, :n]
        img.flush()
        release_pages(img)  # keep this (parent) process small: see peak_rss_bytes
    del img


def speed_comparison(args, ndim: int, preset: str, sizes: list[int | tuple[int, ...]],
                     widths: list[int], roi: int, tmp: Path, script: Path) -> dict:
    """Interleaved repeats of every configuration, ratios against MONAI, bf16 accuracy.

    ``sizes``: cube (square) sides, or whole shapes (e.g. an anisotropic volume)."""
    from useg.nets import preset as get_preset

    precisions = cpu_precisions(args.precisions, cpu_has_native_bf16(), "speed comparison")
    # (kind, precision, MONAI memory format, label of extra environment for the worker)
    configs: list[tuple[str, str, str | None, str | None]] = [
        ("useg", p, None, None) for p in precisions]
    variants: dict[str, dict[str, str]] = getattr(args, "useg_env_variants", None) or {}
    configs += [("useg", p, None, label) for label in variants for p in precisions]
    configs += [("monai", "fp32", fmt, None) for fmt in args.monai_formats]
    configs += [("monai", "fp32", fmt, label) for label in variants for fmt in args.monai_formats]
    labels: dict[str, str | None] = {}
    results: dict = {}
    for size in sizes:
        shape = tuple(size) if isinstance(size, tuple | list) else (size,) * ndim
        size = "x".join(map(str, shape))  # noqa: PLW2901 (the name of the case from here on)
        image_path = tmp / f"image_{size}.npy"
        np.save(image_path, synthetic_image(shape))
        for width in widths:
            cfg = get_preset(preset, width=width)
            fpp = flops_per_pixel(cfg)
            key = f"{preset} width {width}, {size}"
            runs: dict[str, list[dict]] = {}
            for rep in range(args.repeats):
                for kind, precision, fmt, label in configs:
                    name = f"{kind} {precision}" + _suffix(fmt, label)
                    labels[name] = label
                    spec = {"kind": kind, "ndim": ndim, "preset": preset, "width": width,
                            "precision": precision, "image": str(image_path),
                            "classes": cfg.classes, "memory_format": fmt, "roi": [roi] * ndim,
                            "overlap": 0.25, "threads": args.threads,
                            "bf16_limit": "bf16" in precisions}
                    if rep == 0 and kind == "useg" and label is None:
                        spec["save"] = str(tmp / f"probs_{size}_{width}_{precision}.npy")
                    r = run_worker(spec, script, variants.get(label or "", {}))
                    runs.setdefault(name, []).append(r)
                    rss = r["peak_rss_bytes"] / 2**30
                    print(f"  {key} | {name:<28} {r['seconds']:8.1f} s  "
                          f"{r['megapixels_per_s']:7.3f} MP/s  rss {rss:5.2f} GiB  conv "
                          f"{r['conv_gflops_fp32']:5.0f} GFLOP/s  load {r['loadavg_before']:.1f}",
                          flush=True)
            entry: dict[str, Any] = {"flops_per_output_pixel": fpp, "configurations": {}}
            for name, rs in runs.items():
                # MONAI in its first format, under the same environment as this configuration.
                peer = f"monai fp32{_suffix(args.monai_formats[0], labels[name])}"
                peer = peer if peer in runs else None
                mps = [r["megapixels_per_s"] for r in rs]
                # The limit in megapixels/s, from the convolution speed in the same process.
                limit = [r["conv_gflops_fp32"] * 1e9 / fpp / 1e6 for r in rs]
                bf16_gflops = [r["conv_gflops_bf16"] for r in rs]
                c = {
                    "seconds": summary([r["seconds"] for r in rs]),
                    "cpu_seconds": summary([r["cpu_seconds"] for r in rs]),
                    "megapixels_per_s": summary(mps),
                    "peak_rss_bytes": summary([r["peak_rss_bytes"] for r in rs]),
                    "peak_rss_anon_bytes": summary([r["peak_rss_anon_bytes"] for r in rs]),
                    "conv_gflops_fp32": summary([r["conv_gflops_fp32"] for r in rs]),
                    "limit_megapixels_per_s_fp32": summary(limit),
                    "fraction_of_fp32_limit": summary(
                        [m / li for m, li in zip(mps, limit, strict=True)]),
                    "loadavg": [[r["loadavg_before"], r["loadavg_after"]] for r in rs],
                }
                if "bf16" in precisions:
                    c["conv_gflops_bf16"] = summary(bf16_gflops)
                    c["fraction_of_bf16_limit"] = summary(
                        [m / (g * 1e9 / fpp / 1e6) for m, g in zip(mps, bf16_gflops, strict=True)])
                if "tile" in rs[0]:
                    c["tile"] = rs[0]["tile"]
                if peer and name != peer:
                    # Paired by repeat: both ran back to back under the same machine load.
                    ratios = [a["megapixels_per_s"] / b["megapixels_per_s"]
                              for a, b in zip(rs, runs[peer], strict=True)]
                    c["speed_vs_monai_fp32"] = summary(ratios)
                    c["monai_peer"] = peer
                    c["speed_vs_monai_fp32_of_medians"] = float(
                        np.median(mps) / np.median([r["megapixels_per_s"] for r in runs[peer]]))
                    # CPU seconds are less sensitive than wall time to other users of the machine.
                    c["cpu_time_vs_monai_fp32"] = summary(
                        [b["cpu_seconds"] / a["cpu_seconds"]
                         for a, b in zip(rs, runs[peer], strict=True)])
                entry["configurations"][name] = c
            if "bf16" in precisions:
                entry["bf16_vs_fp32_accuracy"] = accuracy(
                    tmp / f"probs_{size}_{width}_fp32.npy", tmp / f"probs_{size}_{width}_bf16.npy")
            results[key] = entry
    return results


# The MONAI sweep: roi sides (valid for the same-padded networks: multiples of the pooling step)
SWEEP_ROIS = {2: (256, 512, 1024), 3: (64, 96, 128)}
SWEEP_OVERLAPS = (0.25, 0.5)


def add_sweep_arguments(parser: argparse.ArgumentParser, ndim: int) -> None:
    """The options of the MONAI sweep, the same for the 2D and the 3D bench."""
    g = parser.add_argument_group("MONAI sweep (the monai_best part of the results)")
    g.add_argument("--monai-sweep", action="store_true",
                   help="time useg against MONAI in every configuration of the sweep (memory "
                        "formats of --monai-formats x rois x overlaps, in useg's precision) and "
                        "against the fastest one")
    g.add_argument("--sweep-rois", type=int, nargs="+", default=list(SWEEP_ROIS[ndim]),
                   help=f"MONAI roi sides (default {' '.join(map(str, SWEEP_ROIS[ndim]))}; "
                        "sides larger than the image are dropped)")
    g.add_argument("--sweep-overlaps", type=float, nargs="+", default=list(SWEEP_OVERLAPS))
    g.add_argument("--sweep-precisions", nargs="+", choices=["fp32", "bf16"],
                   help="default: fp32 and bf16 on a CPU with bf16 instructions (avx512_bf16 or "
                        "amx_bf16), fp32 alone elsewhere (bf16 is emulated there, ~10x slower)")
    g.add_argument("--sweep-widths", type=int, nargs="+",
                   help="network widths of the sweep (default: those of --widths)")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """The precisions of the speed comparison, the same for the 2D and the 3D bench."""
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                        help="useg's precisions in the speed comparison (default: fp32 and bf16 "
                             "on a CPU with bf16 instructions, fp32 alone elsewhere)")


def cpu_precisions(asked: list[str] | None, native_bf16: bool, part: str) -> list[str]:
    """The precisions a part times: as asked, else fp32 and, where the CPU has bf16
    instructions (avx512_bf16 or amx_bf16: ``native_bf16``), bf16; emulated bf16 is ~10x slower
    than fp32, so timing it by default would only add hours to a run."""
    if asked:
        return list(dict.fromkeys(["fp32", *asked]))
    if native_bf16:
        return ["fp32", "bf16"]
    print(f"{part}: fp32 only, this CPU has no bf16 instructions (add bf16 to the precisions "
          "to time emulated bf16 too)", flush=True)
    return ["fp32"]


def sweep_precisions(args, machine: dict) -> list[str]:
    """The precisions of the sweep: as asked, or by the CPU's bf16 instructions."""
    if args.sweep_precisions:
        return args.sweep_precisions
    return cpu_precisions(None, bool(machine.get("bf16_instructions")), "MONAI sweep")


def sweep_name(precision: str, fmt: str, roi: int, overlap: float) -> str:
    return f"monai {precision} ({fmt}, roi {roi}, overlap {overlap:g})"


def _sweep_rois(args, preset: str, width: int, ndim: int, size: int) -> list[int]:
    """The sweep's roi sides that fit the image (the image's side when none does), each checked
    to be an input the same-padded network takes as it is."""
    from useg.nets import preset as get_preset
    from useg.nets import valid_input_shape

    cfg = get_preset(preset, width=width, padding="same")
    rois = sorted({r for r in args.sweep_rois if r <= size}) or [size]
    for r in rois:
        if tuple(valid_input_shape(cfg, (r,) * ndim, mode="up")) != (r,) * ndim:
            raise SystemExit(f"roi {r} is not a valid input of the same-padded {preset}: use a "
                             "multiple of its pooling step")
    return rois


def _run_measures(r: dict) -> dict:
    return {k: r[k] for k in ("seconds", "cpu_seconds", "megapixels_per_s", "peak_rss_bytes",
                              "torch_threads")} | {
        "loadavg": [r["loadavg_before"], r["loadavg_after"]]}


def monai_sweep(args, ndim: int, preset: str, sizes: list[int], widths: list[int], tmp: Path,
                script: Path) -> dict:
    """useg against MONAI's sliding window in each configuration of the sweep (memory format x
    roi x overlap, in the precision of the useg run it is compared with), then against the
    fastest of them, remeasured back to back with useg ``args.repeats`` times.

    Outputs: every MONAI output is compared (fraction of pixels with the same most likely class,
    max |difference| of the probabilities) with two useg outputs of the same precision: the
    timed one (the valid network) and useg's prediction with MONAI's very network (same padding,
    same weights), which stitches exactly, so that comparison isolates what MONAI's windows and
    blending change. The valid and the same network are different functions near every tile
    border; with untrained weights they disagree on many pixels whatever the tiling."""
    from useg.nets import preset as get_preset

    machine, started = machine_info("monai"), time.strftime("%Y-%m-%d %H:%M:%S %z")
    precisions = sweep_precisions(args, machine)
    widths = args.sweep_widths or widths

    def show(label: str, r: dict) -> None:
        extra = "".join(f"  vs {ref}: argmax {a['argmax_agreement']:.4f}, max |dp| "
                        f"{a['max_abs_prob_diff']:.3f}"
                        for ref, a in r.get("agreement", {}).items())
        print(f"  {label:<52} {r['seconds']:8.1f} s {r['megapixels_per_s']:8.4f} MP/s  load "
              f"{r['loadavg_before']:.1f}{extra}", flush=True)

    cases: dict[str, Any] = {}
    for size in sizes:
        image_path = tmp / f"sweep_image_{size}.npy"
        np.save(image_path, synthetic_image((size,) * ndim))
        for width in widths:
            cfg = get_preset(preset, width=width)
            key = f"{preset} width {width}, {'x'.join([str(size)] * ndim)}"
            rois = _sweep_rois(args, preset, width, ndim, size)
            base = {"ndim": ndim, "preset": preset, "width": width, "image": str(image_path),
                    "classes": cfg.classes, "threads": args.threads, "limits": False}
            print(f"MONAI sweep, {key}: formats {args.monai_formats}, rois {rois}, overlaps "
                  f"{args.sweep_overlaps}, precisions {precisions}", flush=True)
            entry: dict[str, Any] = {"rois": rois, "useg": {}, "useg_same_padding": {},
                                     "monai": {}, "best": {}}

            def useg_spec(precision: str, padding: str = "valid", save: Path | None = None,
                          base: dict = base) -> dict:
                spec = {**base, "kind": "useg", "precision": precision, "padding": padding}
                return spec | ({"save": str(save)} if save else {})

            def monai_spec(precision: str, fmt: str, roi: int, overlap: float,
                           compare: dict | None = None, base: dict = base) -> dict:
                spec = {**base, "kind": "monai", "precision": precision, "memory_format": fmt,
                        "roi": [roi] * ndim, "overlap": overlap}
                return spec | ({"compare_to": compare} if compare else {})

            # The sweep: one run of each configuration, useg's two outputs first (references).
            for precision in precisions:
                refs = {pad: tmp / f"sweep_{pad}_{size}_{width}_{precision}.npy"
                        for pad in ("valid", "same")}
                r = run_worker(useg_spec(precision, "valid", refs["valid"]), script)
                show(f"useg {precision}", r)
                entry["useg"][precision] = _run_measures(r) | {"tile": r["tile"]}
                r = run_worker(useg_spec(precision, "same", refs["same"]), script)
                show(f"useg {precision}, MONAI's network (same padding)", r)
                entry["useg_same_padding"][precision] = _run_measures(r) | {"tile": r["tile"]}
                compare = {"useg": str(refs["valid"]), "useg_same_padding": str(refs["same"])}
                for fmt in args.monai_formats:
                    for roi in rois:
                        for overlap in args.sweep_overlaps:
                            name = sweep_name(precision, fmt, roi, overlap)
                            r = run_worker(monai_spec(precision, fmt, roi, overlap, compare),
                                           script)
                            show(name, r)
                            entry["monai"][name] = {
                                "precision": precision, "memory_format": fmt, "roi": roi,
                                "overlap": overlap, **_run_measures(r),
                                "useg_speed_ratio": entry["useg"][precision]["megapixels_per_s"]
                                / r["megapixels_per_s"],
                                "agreement_with_useg": r["agreement"]["useg"],
                                "agreement_with_useg_same_padding":
                                    r["agreement"]["useg_same_padding"],
                            }
                for path in refs.values():
                    path.unlink()
            # The fastest MONAI configuration of each precision, back to back with useg.
            for precision in precisions:
                peers = {n: c for n, c in entry["monai"].items() if c["precision"] == precision}
                name = max(peers, key=lambda n: peers[n]["megapixels_per_s"])
                best = peers[name]
                pairs = []
                for _ in range(args.repeats):
                    u = run_worker(useg_spec(precision), script)
                    show(f"useg {precision} (paired)", u)
                    m = run_worker(monai_spec(precision, best["memory_format"], best["roi"],
                                              best["overlap"]), script)
                    show(f"{name} (paired)", m)
                    pairs.append((u, m))
                useg_mps = [u["megapixels_per_s"] for u, _ in pairs]
                monai_mps = [m["megapixels_per_s"] for _, m in pairs]
                entry["best"][precision] = {
                    "monai": name,
                    "useg_vs_best": summary([a / b for a, b in zip(useg_mps, monai_mps,
                                                                   strict=True)]),
                    "cpu_time_vs_best": summary([m["cpu_seconds"] / u["cpu_seconds"]
                                                 for u, m in pairs]),
                    "useg_megapixels_per_s": summary(useg_mps),
                    "monai_megapixels_per_s": summary(monai_mps),
                    "useg_vs_best_in_sweep": best["useg_speed_ratio"],
                    "agreement_with_useg": best["agreement_with_useg"],
                    "agreement_with_useg_same_padding": best["agreement_with_useg_same_padding"],
                    "loadavg": [[u["loadavg_before"], m["loadavg_after"]] for u, m in pairs],
                }
            cases[key] = entry
        image_path.unlink()
    return {
        "machine": machine,
        "date": started,
        "command": command_line(),
        "sweep": {"memory_formats": args.monai_formats, "rois": args.sweep_rois,
                  "overlaps": args.sweep_overlaps, "precisions": precisions,
                  "widths": widths,
                  "mode": "gaussian", "sw_batch_size": 1, "paired_repeats": args.repeats,
                  "bf16": "torch.autocast around the network (useg and MONAI alike)",
                  "weights": "untrained (torch.manual_seed(0)), the same in every network",
                  "outputs": "agreement_with_useg: against the timed useg output (valid "
                             "network); agreement_with_useg_same_padding: against useg "
                             "predicting with MONAI's network (same padding), which isolates "
                             "MONAI's windows and blending (but for the image border: useg "
                             "mirrors beyond it, MONAI's network sees zeros)"},
        "cases": cases,
    }


def machine_line(machine: dict) -> str:
    """The CPU, the flags that decide convolution speed, and whether it has bf16 instructions."""
    bf16 = machine.get("bf16_instructions")
    return (f"CPU {cpu_line(machine)}; bf16 instructions: "
            f"{'?' if bf16 is None else 'yes' if bf16 else 'no'}")


def print_sweep(part: dict) -> None:
    print(f"MONAI sweep, {part['date']}, {machine_line(part['machine'])}")
    for key, entry in part["cases"].items():
        rows = [(f"useg {p} (tile {'x'.join(map(str, u['tile']))})", u["megapixels_per_s"], None)
                for p, u in entry["useg"].items()]
        rows += [(f"useg {p}, same padding (output reference)", u["megapixels_per_s"], None)
                 for p, u in entry["useg_same_padding"].items()]
        rows += [(n, c["megapixels_per_s"], c) for n, c in entry["monai"].items()]
        w = max(len(r[0]) for r in rows) + 2
        print(f"{key}\n  {'':<{w}}{'':>9}{'':>8}{'agreement with useg':>22}"
              f"{'with useg, same net':>22}\n"
              f"  {'configuration':<{w}}{'MP/s':>9}{'useg x':>8}{'argmax':>11}{'max |dp|':>11}"
              f"{'argmax':>11}{'max |dp|':>11}")
        for name, mps, c in rows:
            cols = ""
            if c is not None:
                a, s = c["agreement_with_useg"], c["agreement_with_useg_same_padding"]
                cols = (f"{c['useg_speed_ratio']:>8.2f}{a['argmax_agreement']:>11.4f}"
                        f"{a['max_abs_prob_diff']:>11.3f}{s['argmax_agreement']:>11.4f}"
                        f"{s['max_abs_prob_diff']:>11.3f}")
            print(f"  {name:<{w}}{mps:>9.4f}{cols}")
        for p, b in entry["best"].items():
            r = b["useg_vs_best"]
            print(f"  useg {p} vs the fastest MONAI {p}, {b['monai']}: {r['median']:.2f}x "
                  f"({len(r['runs'])} paired run(s), {r['min']:.2f}-{r['max']:.2f}; CPU time "
                  f"{b['cpu_time_vs_best']['median']:.2f}x; in the sweep "
                  f"{b['useg_vs_best_in_sweep']:.2f}x)")


def _suffix(fmt: str | None, label: str | None) -> str:
    parts = [p for p in (fmt, label) if p]
    return f" ({', '.join(parts)})" if parts else ""


def print_table(results: dict) -> None:
    w = max([58] + [len(f"{k} | {n}") + 2 for k, e in results.items() for n in e["configurations"]])
    head = (f"{'configuration':<{w}}{'MP/s':>8}{'min-max':>16}{'x MONAI':>9}{'(cpu s)':>9}"
            f"{'of limit':>10}{'RSS GiB':>9}")
    print(head)
    for key, entry in results.items():
        for name, c in entry["configurations"].items():
            m = c["megapixels_per_s"]
            ratio = c.get("speed_vs_monai_fp32", {}).get("median")
            cpu = c.get("cpu_time_vs_monai_fp32", {}).get("median")
            spread = f"{m['min']:.3f}-{m['max']:.3f}"
            ratio_text = "" if ratio is None else f"{ratio:.2f}"
            cpu_text = "" if cpu is None else f"{cpu:.2f}"
            print(f"{key + ' | ' + name:<{w}}{m['median']:>8.3f}{spread:>16}{ratio_text:>9}"
                  f"{cpu_text:>9}"
                  f"{c['fraction_of_fp32_limit']['median']:>10.2f}"
                  f"{c['peak_rss_bytes']['median'] / 2**30:>9.2f}")
        acc = entry.get("bf16_vs_fp32_accuracy")
        if acc is None:
            continue
        print(f"{key + ' | bf16 vs fp32':<{w}} max |dp| {acc['max_abs_diff']:.2e}, "
              f"changed labels {acc['changed_label_fraction']:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    parser.add_argument("--sizes", type=int, nargs="*",
                        help="image sizes of the speed comparison (default 2048; none: skip it)")
    parser.add_argument("--widths", type=int, nargs="+", help="network widths (default 64 32)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 2)")
    parser.add_argument("--monai-formats", nargs="+", default=["contiguous", "channels_last"],
                        choices=["contiguous", "channels_last"])
    parser.add_argument("--memory-sizes", type=int, nargs="*",
                        help="image sizes of the memory series (default 2048 4096 8192 16384)")
    parser.add_argument("--memory-width", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads per run (default: all)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-speed", action="store_true",
                        help="skip the speed comparison (the sweep still uses --sizes)")
    add_precision_argument(parser)
    add_sweep_arguments(parser, 2)
    parser.add_argument("--output", type=Path, default=RESULTS / "predict.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sizes = args.sizes
    if sizes is None:
        sizes = [768] if args.quick else [2048]
    widths = args.widths or ([16] if args.quick else [64, 32])
    args.repeats = args.repeats or (1 if args.quick else 2)
    memory_sizes = args.memory_sizes
    if memory_sizes is None:
        memory_sizes = [1024, 2048] if args.quick else [2048, 4096, 8192, 16384]
    started = time.time()
    result = result_head(
        "2D prediction on CPU: useg overlap tiles vs MONAI sliding window", {
            "network": "ronneberger2015 (valid) for useg; the same weights with padding='same' "
                       "for MONAI",
            "image": "synthetic touching cells (useg.workflows.synthetic), float32, one channel",
            "monai": {"roi": 512, "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 1},
            "useg": "predict() with its default tile; bf16 = autocast",
            "limit": "conv GFLOP/s of a 64->64 3x3 conv at 512x512 channels_last (mean of before "
                     "and after each prediction, same process) / FLOPs per output pixel",
            "torch_threads": args.threads or "all (torch default)",
        })
    with tempfile.TemporaryDirectory(prefix="useg-bench-") as tmp:
        tmp = Path(tmp)
        if sizes and not args.no_speed:
            print(f"speed: sizes {sizes}, widths {widths}, {args.repeats} repeat(s)", flush=True)
            result["speed"] = speed_comparison(args, 2, "ronneberger2015", sizes, widths,
                                               min(512, sizes[0]), tmp, Path(__file__))
        if sizes and args.monai_sweep:
            result["monai_best"] = monai_sweep(args, 2, "ronneberger2015", sizes, widths, tmp,
                                               Path(__file__))
        if not args.no_profile:
            result["profile"] = profiles(widths[-1], tmp)
        if memory_sizes:
            result["memory"] = memory_series(memory_sizes, args.memory_width, tmp)
    result["elapsed_s"] = time.time() - started
    result = save_parts(args.output, result)
    print(machine_line(result["machine"]))
    if "speed" in result:
        print_table(result["speed"])
    if "monai_best" in result:
        print_sweep(result["monai_best"])
    if "memory" in result:
        print_memory(result["memory"])
    print(f"elapsed {result['elapsed_s'] / 60:.1f} min -> {args.output}")


PARTS = ("speed", "profile", "memory", "allocator", "monai_best", "budgets")


def result_head(benchmark: str, setup: dict) -> dict[str, Any]:
    """The start of a 2D or 3D prediction result: what it measures, the command, the local date,
    the machine (MONAI's version included) and the setup; the parts come after."""
    return {"benchmark": benchmark, "command": command_line(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info("monai"),
            "setup": setup}


def save_parts(path: Path, result: dict) -> dict:
    """Write ``result`` to ``path`` with the parts of an earlier result there that this run
    skipped (e.g. ``--sizes`` with no size reruns only the memory series), each with the
    command, the machine and (where recorded) the date that measured it: ``machine`` and
    ``date`` are this run's. Returns what was written."""
    measured = [part for part in PARTS if part in result]
    commands = {part: result["command"] for part in measured}
    machines = {part: result["machine"] for part in measured}
    dates = {part: result["date"] for part in measured}
    if path.exists():
        earlier = json.loads(path.read_text())
        for part in PARTS:
            if part not in result and part in earlier:
                result[part] = earlier[part]
                commands[part] = earlier.get("part_commands", {}).get(part, earlier["command"])
                # Results from before part_machines: the machine of the run that wrote them.
                machines[part] = earlier.get("part_machines", {}).get(part, earlier["machine"])
                date = earlier.get("part_dates", {}).get(part, earlier.get("date"))
                if date:
                    dates[part] = date
    result["part_commands"] = commands
    result["part_machines"] = machines
    result["part_dates"] = dates
    write_json(path, result)
    return result


def profiles(width: int, tmp: Path) -> dict:
    """Where the time goes: operator groups of one useg fp32/bf16 prediction of an image that
    fits one default tile, and of MONAI (contiguous) on the same image."""
    from useg.inference.tile_choice import default_tile
    from useg.nets import UNet, output_shape

    net = UNet("ronneberger2015", width=width)
    side = output_shape(net.config, default_tile(net, (1024, 1024)))[0]
    path = tmp / f"profile_{side}.npy"
    np.save(path, synthetic_image((side, side)))
    out = {"image": [side, side], "width": width}
    for kind, precision, fmt in [("useg", "fp32", None), ("useg", "bf16", None),
                                 ("monai", "fp32", "contiguous")]:
        spec = {"kind": kind, "ndim": 2, "preset": "ronneberger2015", "width": width,
                "precision": precision, "image": str(path), "classes": 2, "memory_format": fmt,
                "roi": [512, 512], "overlap": 0.25, "profile": True}
        r = run_worker(spec)
        out[f"{kind} {precision}"] = {"seconds": r["seconds"], "groups": r["profile"]}
        print(f"  profile {kind} {precision}: {r['seconds']:.1f} s: " + ", ".join(
            f"{g} {v['share']:.0%}" for g, v in list(r["profile"].items())[:5]), flush=True)
    return out


def memory_series(sizes: list[int], width: int, tmp: Path) -> dict:
    """Peak RSS of useg predicting disk-backed images of growing size into a disk-backed out."""
    print(f"memory: sizes {sizes}, width {width}, memmap in and out", flush=True)
    base = synthetic_image((2048, 2048))
    series = {}
    for n in sizes:
        image_path, out_path = tmp / f"mm_image_{n}.npy", tmp / f"mm_out_{n}.npy"
        write_memmap_image(image_path, n, base)
        spec = {"kind": "useg", "ndim": 2, "preset": "ronneberger2015", "width": width,
                "precision": "fp32", "image": str(image_path), "mmap": True,
                "out_memmap": str(out_path), "classes": 2}
        r = run_worker(spec)
        series[str(n)] = {k: r[k] for k in (
            "seconds", "megapixels_per_s", "peak_rss_bytes", "peak_rss_anon_bytes",
            "peak_rss_file_bytes", "rss_anon_file_at_peak_bytes", "tile", "out_rows_sum_to_one",
            "loadavg_before")}
        series[str(n)]["image_bytes"] = n * n * 4
        series[str(n)]["output_bytes"] = 2 * n * n * 4
        gib = {k: r[f"peak_rss{k}_bytes"] / 2**30 for k in ("", "_anon", "_file")}
        print(f"  {n}x{n}: {r['seconds']:7.1f} s, {r['megapixels_per_s']:.2f} MP/s, peak RSS "
              f"{gib['']:.2f} GiB (anon {gib['_anon']:.2f}, file {gib['_file']:.2f}), tile "
              f"{r['tile']}, rows sum to 1: {r['out_rows_sum_to_one']}", flush=True)
        image_path.unlink()
        out_path.unlink()
    return {"width": width, "precision": "fp32", "sizes": series}


def print_memory(memory: dict) -> None:
    print(f"memory series (width {memory['width']}, memmap input and output):")
    print(f"{'size':>8}{'peak RSS GiB':>14}{'anon GiB':>10}{'file GiB':>10}{'input GiB':>11}"
          f"{'output GiB':>12}{'MP/s':>8}")
    for n, r in memory["sizes"].items():
        print(f"{n:>8}{r['peak_rss_bytes'] / 2**30:>14.2f}{r['peak_rss_anon_bytes'] / 2**30:>10.2f}"
              f"{r['peak_rss_file_bytes'] / 2**30:>10.2f}{r['image_bytes'] / 2**30:>11.2f}"
              f"{r['output_bytes'] / 2**30:>12.2f}{r['megapixels_per_s']:>8.2f}")


if __name__ == "__main__":
    main()

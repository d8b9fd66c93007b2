"""The built-in demo: train a small U-Net for a few minutes, predict a large image with overlap
tiles, evaluate it and write a short report with overlays.

Data: ISBI 2012 from the shared data folder when present (train slices 0..19, validation
slices 20..24), otherwise the built-in synthetic touching cells, so the demo runs on a fresh
machine with nothing but the package.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.errors import InputError
from useg.evaluation import adapted_rand_error, iou, pixel_error
from useg.inference.predict import predict
from useg.io.datasets import dataset
from useg.io.files import atomic_write
from useg.nets.checkpoint import load_model
from useg.postprocess.segments import threshold_components
from useg.training.config import TrainConfig
from useg.training.from_folders import make_config
from useg.training.loop import train
from useg.training.samples import Sample, boundary_target, make_sample
from useg.workflows import synthetic

__all__ = ["overlay", "run_demo"]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, [0.5, 99.5])
    return (np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def overlay(image: np.ndarray, prob: np.ndarray, segments: np.ndarray, path: str | os.PathLike,
            truth: np.ndarray | None = None) -> Path:
    """Side-by-side PNG: image, foreground probability, segment outlines over the image (and the
    ground truth's outlines when given)."""
    from PIL import Image

    gray = _to_uint8(image)
    rgb = np.stack([gray] * 3, axis=-1)
    outline = boundary_target(segments) > 0
    seg_rgb = rgb.copy()
    seg_rgb[outline] = (255, 64, 32)
    panels = [rgb, np.stack([(np.clip(prob, 0, 1) * 255).astype(np.uint8)] * 3, -1), seg_rgb]
    if truth is not None:
        gt_rgb = rgb.copy()
        gt_rgb[boundary_target(truth) > 0] = (32, 200, 255)
        panels.append(gt_rgb)
    gap = np.full((rgb.shape[0], 8, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(row).save(tmp)
    return path


def _isbi_data(root: Path) -> dict[str, Any]:
    def pick(folder: Path, names: range) -> list[Path]:
        return [folder / f"{i}.png" for i in names if (folder / f"{i}.png").exists()]

    return {
        "name": "ISBI 2012 (train slices 0-19, validation slices 20-24)",
        "train": list(zip(pick(root / "train/images", range(20)),
                          pick(root / "train/labels", range(20)), strict=True)),
        "val": list(zip(pick(root / "train/images", range(20, 25)),
                        pick(root / "train/labels", range(20, 25)), strict=True)),
        "reader": io,
    }


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    *,
    iterations: int | None = None,
    device: str = "auto",
    data: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Run the demo end to end and return the path of its ``report.md``.

    Parameters
    ----------
    iterations : int, optional
        Training steps (default sized for a few minutes on two CPU cores).
    data : {"auto", "isbi", "synthetic"}
        ``auto`` uses ISBI 2012 when the shared data folder has it.
    """
    out = io.check_output_folder(out_dir)
    name, train_s, val_s, test_image, test_truth = _demo_data(data, seed)
    io.make_folder(out)
    cfg = _demo_config(train_s, name, iterations, seed, device)
    t0 = time.perf_counter()
    state = out / "run"
    resume = (state / "state.safetensors").exists()
    best = train(cfg, train_s, state, val_samples=val_s, resume=resume, progress=progress)
    train_seconds = time.perf_counter() - t0

    model = load_model(best, device="cpu")
    t0 = time.perf_counter()
    # Tiles much smaller than the image, to show the seamless overlap-tile strategy at work.
    probs = predict(model, test_image, tile=380, device=device, progress=progress)
    predict_seconds = time.perf_counter() - t0
    fg = probs[1]
    segments, truth_seg, scores = _demo_scores(fg, test_truth)
    io.write_image(out / "probability.tif", fg.astype(np.float32))
    io.write_image(out / "segments.tif", segments.astype(np.uint16))
    view = (slice(0, 512), slice(0, 512))  # a readable crop of the large image
    overlay(np.asarray(test_image)[0][view], fg[view], segments[view], out / "overlay.png",
            truth=truth_seg[view])
    summary = {
        "data": name, "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 2), "image_shape": list(fg.shape),
        "iterations": cfg.iterations, "model": str(best), **scores,
    }
    io.write_json(out / "summary.json", summary)
    report = _write_report(out, name, cfg.iterations, (train_seconds, predict_seconds), fg.shape,
                           scores)
    print(json.dumps(summary, indent=2))
    return report


def _demo_data(data: str, seed: int) -> tuple[str, list[Sample], list[Sample], Any, Any]:
    """The data's name, training and validation samples, and the test image and its truth
    (foreground 255): ISBI 2012 when ``data`` allows and it is there, else synthetic cells."""
    root = dataset("isbi2012") if data in ("auto", "isbi") else None
    if data == "isbi" and root is None:
        raise InputError("isbi2012 not found in the shared data folder (set USEG_DATA)")
    opts = dict(mode="binary", w0=10.0, sigma=5.0)
    if root is not None:
        d = _isbi_data(root)
        train_s = [make_sample(io.read_image(i)[0], io.read_labels(lab)[0], name=str(i), **opts)
                   for i, lab in d["train"]]
        val_pairs = [(io.read_image(i)[0], io.read_labels(lab)[0]) for i, lab in d["val"]]
        test_image, test_truth = val_pairs[-1]
        val_s = [make_sample(im, lab, name="val", **opts) for im, lab in val_pairs[:2]]
        return d["name"], train_s, val_s, test_image, test_truth
    opts = {k: v for k, v in opts.items() if k != "mode"}
    train_s = []
    for i in range(6):
        img, inst = synthetic.touching_cells((256, 256), rng=seed * 1000 + i)
        train_s.append(make_sample(img, inst, mode="instances", name=f"synth{i}", **opts))
    img, inst = synthetic.touching_cells((256, 256), rng=seed * 1000 + 100)
    val_s = [make_sample(img, inst, mode="instances", name="val", **opts)]
    # A large image, predicted with overlap tiles; its truth is foreground without borders.
    test_image, test_inst = synthetic.touching_cells((1024, 1024), rng=seed * 1000 + 200)
    test_truth = np.where(make_sample(test_image, test_inst, mode="instances",
                                      w0=0).target == 1, 255, 0)
    return "synthetic touching cells (built in)", train_s, val_s, test_image, test_truth


def _demo_config(
    train_s: list[Sample], name: str, iterations: int | None, seed: int, device: str
) -> TrainConfig:
    # The 2D U-Net of the paper (valid padding, dropout 0.5), narrower and shallower.
    return make_config(
        2, in_channels=train_s[0].image.shape[0], width=16, depth=3,
        tile=[188, 188], iterations=iterations or 400, optimizer="adam", lr=1e-3,
        schedule="cosine", augment={"elastic": True}, val_every=100, checkpoint_every=100,
        log_every=10, seed=seed, device=device, workers=1,
        labels={"mode": "binary", "classes": ["background/membrane", "foreground"],
                "data": {"demo": name}},
    )


def _demo_scores(
    fg: np.ndarray, test_truth: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Predicted segments, true segments, and pixel error, adapted Rand error and foreground
    IoU of the foreground probability ``fg`` at 0.5."""
    # Membrane pixels join their nearest segment, as in the ISBI evaluation.
    segments = threshold_components(fg, 0.5, fill=True)
    truth_bin = (np.asarray(test_truth) > 0)
    truth_seg = threshold_components(truth_bin.astype(np.float32), 0.5)
    scores = {
        "pixel_error": pixel_error(fg > 0.5, truth_bin),
        "adapted_rand_error": adapted_rand_error(segments, truth_seg)[0],
        "iou_foreground": iou((fg > 0.5).astype(int), truth_bin.astype(int))[1],
    }
    return segments, truth_seg, {k: float(v) for k, v in scores.items()}


def _write_report(
    out: Path,
    name: str,
    iterations: int,
    seconds: tuple[float, float],
    shape: tuple[int, ...],
    scores: dict[str, float],
) -> Path:
    """``out/report.md``: what was trained (``iterations`` steps) and predicted (an image of
    ``shape``), the time each took (``seconds``), the scores and the overlay."""
    train_seconds, predict_seconds = seconds
    lines = [
        "# useg demo", "",
        f"Data: {name}. A U-Net (ronneberger2015 layout, width 16, depth 3, valid padding) "
        f"trained for {iterations} steps in {train_seconds:.0f} s, then a "
        f"{shape[0]}x{shape[1]} image predicted with overlap tiles in "
        f"{predict_seconds:.1f} s.", "",
        "| measure | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in scores.items()], "",
        "![image, probability, segments, ground truth](overlay.png)", "",
        "Overlay (top-left 512x512 crop): image, foreground probability, predicted segment "
        "outlines (red), ground-truth outlines (blue).", "",
        "Training curves: `run/curves.png`; model: `run/best.safetensors` "
        "(use it with `useg predict --model`).", "",
    ]
    report = out / "report.md"
    with atomic_write(report) as tmp:
        tmp.write_text("\n".join(lines))
    return report

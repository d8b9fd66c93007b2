"""The built-in demo: train a small U-Net for a few minutes, predict a large image with overlap
tiles, evaluate it and write a short report with overlays.

Data: the built-in synthetic touching cells (six 256x256 images to train on, one to validate
on, and a 1024x1024 test image of its own), so the demo runs on a fresh machine with nothing
but the package; or ISBI 2012 from the shared data folder (``data="isbi"``: train slices
0..19, validation slices 20 and 21, test slice 24; the training fine-tunes the packaged
``em-membrane`` model, which never saw slice 24).

The network is the ``cpu-fast`` recipe (:mod:`useg.training.recipes`) with
:data:`DEMO_OPTIONS` over it, for :data:`DEMO_STEPS` steps or what fits in
:data:`DEMO_BUDGET` seconds, so that the whole demo ends within about five minutes on two CPU
cores. Its checkpoint and its threshold
are chosen on the validation image; the test image is scored once, beside what the best
threshold of the raw test image scores (:func:`raw_threshold_floor`: a floor that needs no
learning, generous to itself since its thresholds are chosen on the test image).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.errors import InputError, check_choice
from useg.evaluation import adapted_rand_error, iou, pixel_error
from useg.inference.predict import predict
from useg.io.datasets import dataset
from useg.io.files import atomic_write
from useg.nets.checkpoint import load_model
from useg.postprocess.segments import threshold_components
from useg.report.figures import overlay_panels
from useg.training.config import TrainConfig
from useg.training.from_folders import labels_record, make_config
from useg.training.loop import train
from useg.training.run_folder import read_config
from useg.training.samples import make_sample, targets_from_labels
from useg.workflows import synthetic

__all__ = ["DEMO_BUDGET", "DEMO_OPTIONS", "DEMO_STEPS", "overlay", "raw_threshold_floor",
           "run_demo", "score_lines", "verdict"]

# The cpu-fast recipe with what the demo sets over it: smaller tiles, which learn these images
# in fewer seconds, batch norm and a border weight of 5. Measured over 1500 steps on the
# synthetic cells (threshold chosen on the validation image), batch norm and w0 5 against the
# recipe's none and 10: adapted Rand error 0.015 against 0.044, pixel error 0.027 against 0.026,
# in 160 s against 153 s.
DEMO_OPTIONS: dict[str, Any] = {"tile": [188, 188], "norm": "batch", "w0": 5.0}
DEMO_STEPS = 1500
# Seconds of training at most, counted from the start of the demo: the demo, prediction and
# scores included, then ends within about five minutes.
DEMO_BUDGET = 240.0
# The thresholds the demo chooses from on the validation images.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def overlay(image: np.ndarray, prob: np.ndarray, segments: np.ndarray, path: str | os.PathLike,
            truth: np.ndarray | None = None) -> Path:
    """Side-by-side PNG: image, foreground probability, segment outlines over the image (and the
    ground truth's outlines when given): :func:`useg.report.figures.overlay_panels` in a
    row."""
    from PIL import Image

    panels = overlay_panels(image, prob, segments, truth)
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(row).save(tmp)
    return path


def _isbi_data(root: Path) -> dict[str, Any]:
    def pick(folder: Path, names: range) -> list[Path]:
        return [folder / f"{i}.png" for i in names if (folder / f"{i}.png").exists()]

    return {
        "name": "ISBI 2012 (train slices 0-19, validation slices 20-21, test slice 24)",
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
    data: str = "synthetic",
    seed: int = 0,
    progress: bool = True,
    time_budget: float | None = DEMO_BUDGET,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Run the demo end to end and return the path of its ``report.md``.

    Parameters
    ----------
    iterations : int, optional
        Training steps (default :data:`DEMO_STEPS`).
    data : {"synthetic", "isbi", "auto"}
        ``auto`` uses ISBI 2012 when the shared data folder has it, else synthetic cells.
    time_budget : float, optional
        Seconds the training may take, counted from the start of the demo (default
        :data:`DEMO_BUDGET`; None: no limit): fewer steps when they would not fit.
    say : callable, optional
        Receives the one-line notes of the training and the scores (e.g. ``print``).
    """
    started = time.perf_counter()
    out = io.check_output_folder(out_dir)
    d = _demo_data(data, seed)
    # The configuration checks the options (the device among them) before anything is created;
    # training makes the folders, and removes them should it fail before its first model.
    cfg = d.config(iterations, seed, device, time_budget)
    train_s = [make_sample(image, labels, name=f"train{i}", **cfg.sample_options())
               for i, (image, labels) in enumerate(d.train)]
    val_s = [make_sample(image, labels, name=f"val{i}", **cfg.sample_options())
             for i, (image, labels) in enumerate(d.val)]
    t0 = time.perf_counter()
    state = out / "run"
    resume = (state / "state.safetensors").exists()
    best = train(cfg, train_s, state, val_samples=val_s, resume=resume, progress=progress,
                 say=say, started=started)
    train_seconds = time.perf_counter() - t0
    steps = int(read_config(state)["iterations"])

    model = load_model(best, device="cpu")
    # The threshold is chosen on the validation images; the test image is looked at once.
    threshold = _choose_threshold(
        [predict(model, image, device=device, progress=False)[1] for image, _ in d.val],
        [d.truth(labels) for _, labels in d.val])
    t0 = time.perf_counter()
    # Tiles much smaller than the image, to show the seamless overlap-tile strategy at work.
    probs = predict(model, d.test[0], tile=380, device=device, progress=progress)
    predict_seconds = time.perf_counter() - t0
    fg, truth = probs[1], d.truth(d.test[1])
    segments, truth_seg, scores = _demo_scores(fg, truth, threshold)
    floor = raw_threshold_floor(np.asarray(d.test[0])[0], truth)
    io.write_image(out / "probability.tif", fg.astype(np.float32))
    io.write_image(out / "segments.tif", segments.astype(np.uint16))
    view = (slice(0, 512), slice(0, 512))  # a readable crop of the large image
    overlay(np.asarray(d.test[0])[0][view], fg[view], segments[view], out / "overlay.png",
            truth=truth_seg[view])
    summary = {
        "data": d.name, "test_image": d.test_name, "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 2), "image_shape": list(fg.shape),
        "iterations": steps, "model": str(best), "threshold": threshold,
        "threshold_chosen_on": "the validation images (pixel error + adapted Rand error)",
        **scores, "floor": floor, "verdict": verdict(scores, floor), "good": GOOD_SCORES,
    }
    io.write_json(out / "summary.json", summary)
    report = _write_report(out, d, cfg, steps, (train_seconds, predict_seconds), fg.shape,
                           threshold, scores, floor)
    if say is not None:
        for line in score_lines(scores, threshold, floor):
            say(line)
    return report


# What a good score is, shown beside the scores.
GOOD_SCORES = (
    "lower is better, 0 is perfect. Adapted Rand error: how far the cells found are from the "
    "true cells, counting pixel pairs wrongly merged into or split between cells; pixel error: "
    "the share of wrong pixels, most of them on the edges of the 1-2 px membranes. A model "
    "worth using is far below the floor in both; well trained, under 0.05 adapted Rand error"
)


@dataclass
class _DemoData:
    """The demo's images: pairs of (image ``(1, Y, X)``, labels) for training, validation (the
    checkpoint and the threshold are chosen on them) and the test (scored once)."""

    name: str
    test_name: str
    label_mode: str
    train: list[tuple[np.ndarray, np.ndarray]]
    val: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    # Fine-tuning: the model whose network and weights training starts from (None: a new
    # network, the recipe's with DEMO_OPTIONS).
    init: str | None = None

    def truth(self, labels: np.ndarray) -> np.ndarray:
        """The foreground (cell interiors) of ``labels``, as a boolean image."""
        if self.label_mode == "instances":  # without the borders the target carves
            return targets_from_labels(labels, "instances")[0] == 1
        return np.asarray(labels) > 0

    def config(self, iterations: int | None, seed: int, device: str,
               time_budget: float | None) -> TrainConfig:
        """The cpu-fast recipe with :data:`DEMO_OPTIONS` over it (with ``init``, the model's
        network: no network options)."""
        options = dict(DEMO_OPTIONS)
        if self.init is not None:
            options.pop("norm")
        return make_config(
            2, recipe="cpu-fast", in_channels=self.train[0][0].shape[0], init=self.init,
            label_mode=self.label_mode, **options, iterations=iterations or DEMO_STEPS,
            time_budget=time_budget, augment={"elastic": True}, val_every=DEMO_STEPS // 5,
            checkpoint_every=100, log_every=10, seed=seed, device=device, workers=1,
            labels=labels_record(self.label_mode, 2, {"demo": self.name}),
        )


def _demo_data(data: str, seed: int) -> _DemoData:
    """ISBI 2012 when ``data`` asks for it (``auto``: when it is there), else synthetic cells."""
    check_choice("data", data, ("synthetic", "isbi", "auto"))
    root = dataset("isbi2012") if data in ("auto", "isbi") else None
    if data == "isbi" and root is None:
        raise InputError("isbi2012 not found in the shared data folder (set USEG_DATA)")
    if root is not None:
        d = _isbi_data(root)

        def read(pairs: list[tuple[Path, Path]]) -> list[tuple[np.ndarray, np.ndarray]]:
            return [(io.read_image(i)[0], io.read_labels(lab)[0]) for i, lab in pairs]

        val = read(d["val"])
        # Four minutes do not train EM membranes from scratch: the demo fine-tunes the packaged
        # em-membrane model, trained on slices 0..14 and chosen on 15..19; slice 24 is new to
        # both.
        return _DemoData(d["name"], "ISBI 2012 training slice 24, not trained or chosen on",
                         "binary", read(d["train"]), val[:2], val[-1], init="em-membrane")
    base = seed * 1000

    def cells(shape: tuple[int, int], rng: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic.touching_cells(shape, rng=rng)

    return _DemoData(
        "synthetic touching cells (built in)",
        f"a synthetic 1024x1024 image of its own (seed {base + 200}), not trained or chosen on",
        "instances", [cells((256, 256), base + i) for i in range(6)],
        [cells((256, 256), base + 100)], cells((1024, 1024), base + 200))


def _choose_threshold(probs: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """The threshold of :data:`THRESHOLDS` with the smallest pixel error + adapted Rand error
    over the foreground probabilities ``probs`` of images with foreground ``truths``."""
    def total(t: float) -> float:
        return sum(sum(_scores_at(p, truth, t)) for p, truth in zip(probs, truths, strict=True))

    return float(min(THRESHOLDS, key=total))


def _scores_at(fg: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float]:
    """Pixel error and adapted Rand error of ``fg > threshold`` against ``truth``."""
    segments = threshold_components(fg, threshold, fill=True)
    truth_seg = threshold_components(truth.astype(np.float32), 0.5)
    return (float(pixel_error(fg > threshold, truth)),
            float(adapted_rand_error(segments, truth_seg)[0]))


def raw_threshold_floor(image: np.ndarray, truth: np.ndarray, n: int = 25) -> dict[str, Any]:
    """What thresholding the raw ``image`` (Y, X) scores against the foreground ``truth``: for
    pixel error and adapted Rand error, each the best of ``n`` thresholds (quantiles of the
    image) chosen on this image itself, a floor that needs no learning.

    Examples
    --------
    >>> truth = np.zeros((32, 32), bool); truth[4:12, 4:12] = truth[16:30, 16:30] = True
    >>> floor = raw_threshold_floor(np.where(truth, 0.9, 0.1), truth, n=5)
    >>> floor["pixel_error"], floor["adapted_rand_error"]
    (0.0, 0.0)
    """
    image = np.asarray(image, np.float32)
    best: dict[str, Any] = {}
    for t in np.unique(np.quantile(image, np.linspace(0.02, 0.98, n))):
        for key, value in zip(("pixel_error", "adapted_rand_error"),
                              _scores_at((image > t).astype(np.float32), truth, 0.5),
                              strict=True):
            if key not in best or value < best[key]:
                best[key], best[f"{key}_threshold"] = value, float(t)
    best["how"] = (f"the raw image above a threshold, each score at the best of {n} thresholds "
                   "chosen on the test image itself")
    return best


def _demo_scores(
    fg: np.ndarray, truth: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Predicted segments, true segments, and pixel error, adapted Rand error and foreground
    IoU of the foreground probability ``fg`` above ``threshold``."""
    # Membrane pixels join their nearest segment, as in the ISBI evaluation.
    segments = threshold_components(fg, threshold, fill=True)
    truth_seg = threshold_components(truth.astype(np.float32), 0.5)
    scores = {
        "pixel_error": pixel_error(fg > threshold, truth),
        "adapted_rand_error": adapted_rand_error(segments, truth_seg)[0],
        "iou_foreground": iou((fg > threshold).astype(int), truth.astype(int))[1],
    }
    return segments, truth_seg, {k: float(v) for k, v in scores.items()}


def score_lines(scores: dict[str, float], threshold: float, floor: dict[str, Any]) -> list[str]:
    """The demo's scores beside the floor without learning and what a good score is."""
    return [
        f"test image, U-Net (threshold {threshold:g}, chosen on the validation images): pixel "
        f"error {scores['pixel_error']:.4f}, adapted Rand error "
        f"{scores['adapted_rand_error']:.4f}",
        f"floor without learning ({floor['how']}): pixel error {floor['pixel_error']:.4f}, "
        f"adapted Rand error {floor['adapted_rand_error']:.4f}",
        verdict(scores, floor),
        f"good: {GOOD_SCORES}",
    ]


def verdict(scores: dict[str, float], floor: dict[str, Any]) -> str:
    """One line: whether the model beat the floor in both scores, and what to do if not.

    A busy machine fits fewer steps into the time budget, and a model that has not learnt enough
    can be worse than thresholding the raw image: the user must be told, not left to compare.
    """
    short = [name.replace("_", " ") for name in ("pixel_error", "adapted_rand_error")
             if scores[name] >= floor[name]]
    if not short:
        return "verdict: the U-Net beats the floor in both scores"
    return (f"WARNING: the U-Net does not beat the floor in {' and '.join(short)}: it trained "
            "too few steps for this image (fewer fit in the time budget when the machine is "
            "busy); run the same command again to train on from where it stopped")


def _write_report(
    out: Path,
    d: _DemoData,
    cfg: TrainConfig,
    iterations: int,
    seconds: tuple[float, float],
    shape: tuple[int, ...],
    threshold: float,
    scores: dict[str, float],
    floor: dict[str, Any],
) -> Path:
    """``out/report.md``: what was trained (``iterations`` steps) and predicted (an image of
    ``shape``), the time each took (``seconds``), the scores beside the floor and the
    overlay."""
    train_seconds, predict_seconds = seconds
    net = (f"width {cfg.net['width']}, depth {cfg.net['depth']}, {cfg.net['padding']} padding, "
           f"norm {cfg.net['norm']}, tile {'x'.join(map(str, cfg.tile))}")
    lines = [
        "# useg demo", "",
        f"Data: {d.name}. A U-Net (the cpu-fast recipe, ronneberger2015 layout: {net}) "
        f"trained for {iterations} steps ({train_seconds:.0f} s of training in this "
        f"run), then the test image, {d.test_name}, {shape[0]}x{shape[1]}, predicted with "
        f"overlap tiles in {predict_seconds:.1f} s.", "",
        "| | pixel error | adapted Rand error | foreground IoU |", "|---|---|---|---|",
        f"| U-Net, threshold {threshold:g} (chosen on the validation images) | "
        f"{scores['pixel_error']:.4f} | {scores['adapted_rand_error']:.4f} | "
        f"{scores['iou_foreground']:.4f} |",
        f"| floor without learning: {floor['how']} | {floor['pixel_error']:.4f} | "
        f"{floor['adapted_rand_error']:.4f} | |", "",
        f"{verdict(scores, floor)}.", "",
        f"Good scores: {GOOD_SCORES}.", "",
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

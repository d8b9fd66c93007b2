"""ISBI 2012: where a membrane model's pixel errors lie, on the validation slices.

Run: .venv/bin/python bench/isbi2012_errors.py [--model em-membrane] [--threads 2]

The pixel error of docs/isbi2012.md counts every pixel whose class differs from the drawn one.
This bench asks where those pixels are: how far each lies from the nearest edge between drawn
membrane and drawn cell interior (a pixel next to the edge is 1 pixel from it), which kind of
error it is (membrane predicted on drawn interior, or interior on drawn membrane), and how much
membrane is predicted against how much is drawn. It scores the validation slices 15..19 (TTA,
the 8 flips and quarter turns) at the model's own operating point (the threshold in its
header, chosen on those slices), so it chooses nothing; the test slices stay unseen.

Results: bench/results/isbi2012_errors.json and .md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import RESULTS, command_line, cpu_line, machine_info, publish
from isbi2012 import VAL_SLICES, isbi_root, load_slices, predict_slices, prediction_tile
from isbi2012_segment import THRESHOLDS
from scipy import ndimage as ndi

from useg.nets.checkpoint import load_model, model_info, resolve_model

DISTANCES = (1, 2, 3, 5, 10)  # pixels from the nearest drawn edge
# Interior thresholds around the operating point, to show how thickness and pixel error trade.
SWEEP = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7)


def edge_distance(interior: np.ndarray) -> np.ndarray:
    """Per pixel of a binary slice, the distance to the nearest pixel of the other class."""
    return np.where(interior, ndi.distance_transform_edt(interior),
                    ndi.distance_transform_edt(~interior))


def where_errors_lie(prob: np.ndarray, interior: np.ndarray, threshold: float) -> dict:
    """Pixel errors of ``prob > threshold`` against ``interior`` (stacks of slices), by distance
    from the drawn edges and by kind."""
    predicted = prob > threshold
    wrong = predicted != interior
    distance = np.stack([edge_distance(s) for s in interior])
    errors = int(wrong.sum())
    return {
        "threshold": threshold,
        "pixel_error": float(wrong.mean()),
        "share_of_errors_within": {str(k): float((wrong & (distance <= k)).sum() / errors)
                                   for k in DISTANCES},
        # The pixel error if the errors within k pixels of a drawn edge were not counted.
        "pixel_error_beyond": {str(k): float((wrong & (distance > k)).mean()) for k in DISTANCES},
        "membrane_on_drawn_interior": float((~predicted & interior).mean()),
        "interior_on_drawn_membrane": float((predicted & ~interior).mean()),
        "membrane_drawn": float((~interior).mean()),
        "membrane_predicted": float((~predicted).mean()),
    }


def threshold_sweep(prob: np.ndarray, interior: np.ndarray) -> list[dict]:
    """Pixel error and membrane predicted at each of ``SWEEP`` (a diagnostic: chooses nothing)."""
    return [{"threshold": t, "pixel_error": float(((prob > t) != interior).mean()),
             "membrane_predicted": float((prob <= t).mean())} for t in SWEEP]


def markdown(report: dict) -> str:
    r = report["errors"]
    lines = ["# ISBI 2012: where the pixel errors lie (validation slices 15..19)", "",
             f"Command: `{report['command']}`; CPU {cpu_line(report['machine'])}; model "
             f"{report['model']}, TTA, threshold {r['threshold']} (its operating point).", "",
             f"Pixel error {r['pixel_error']:.4f}: membrane predicted on drawn interior "
             f"{r['membrane_on_drawn_interior']:.4f}, interior predicted on drawn membrane "
             f"{r['interior_on_drawn_membrane']:.4f}. Membrane drawn on "
             f"{r['membrane_drawn']:.1%} of the pixels, predicted on "
             f"{r['membrane_predicted']:.1%}.", "",
             "| pixels from the nearest drawn edge, k | share of the errors within k | pixel "
             "error not counting them |", "|---|---|---|"]
    for k in DISTANCES:
        lines.append(f"| {k} | {r['share_of_errors_within'][str(k)]:.3f} | "
                     f"{r['pixel_error_beyond'][str(k)]:.4f} |")
    lines += ["", "At other interior thresholds (the same maps; shown, not chosen: the "
              "operating point was chosen on these slices with pixel and adapted Rand error "
              f"together, from {THRESHOLDS[0]:g} up):", "",
              "| threshold | pixel error | membrane predicted |", "|---|---|---|"]
    for row in report["sweep"]:
        lines.append(f"| {row['threshold']:g} | {row['pixel_error']:.4f} | "
                     f"{row['membrane_predicted']:.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="em-membrane",
                        help="a 2D membrane model: file, run folder or packaged name")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = isbi_root()
    path = resolve_model(args.model)
    point = model_info(path).get("operating_point") or {}
    threshold = float(point.get("threshold_on_probabilities_1", 0.5))
    model = load_model(path, device="cpu")
    images, labels = load_slices(root, VAL_SLICES)
    tile = prediction_tile(model.meta["config"], images[0].shape[1:])
    prob = predict_slices(model, images, tile, "fp32")
    interior = np.stack([lab > 0 for lab in labels])
    report = {"benchmark": "isbi2012_errors", "command": command_line(),
              "machine": machine_info(), "model": args.model, "slices": "15..19 (validation)",
              "errors": where_errors_lie(prob, interior, threshold),
              "sweep": threshold_sweep(prob, interior)}
    text = markdown(report)
    publish(RESULTS, "isbi2012_errors", report, text)
    print(text)


if __name__ == "__main__":
    main()

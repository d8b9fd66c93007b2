"""U-Net border weight map: useg vs the naive one-distance-transform-per-object computation.

Run: .venv/bin/python bench/weightmap.py [--repeats N] [--output FILE]

Input: a 512x512 Voronoi tessellation of 300 cells separated by 1-2 pixel background gaps (the
situation of touching cells the weight map is made for). The naive peer computes one full
Euclidean distance transform per object and keeps the two smallest distances per pixel (a
running minimum, so it does not even pay for sorting 300 full maps); useg computes each object's
distances only in a window bounded by the cutoff of the border term. Both give the same map
wherever d1 + d2 <= cutoff (checked below). Results: bench/results/weightmap.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import (
    RESULTS,
    command_line,
    interleaved,
    machine_info,
    print_timings,
    summary,
    write_json,
)
from scipy import ndimage as ndi

from useg.training.weights import border_cutoff, border_weight_map, class_balance_weights

W0, SIGMA = 10.0, 5.0


def voronoi_cells(shape: tuple[int, int], n_cells: int, seed: int = 0) -> np.ndarray:
    """Voronoi cells of random seeds; pixels within ~1 px of a cell border become background."""
    rng = np.random.default_rng(seed)
    marker = np.zeros(shape, np.int32)
    rows = rng.integers(0, shape[0], n_cells)
    cols = rng.integers(0, shape[1], n_cells)
    marker[rows, cols] = np.arange(1, n_cells + 1)
    _, nearest = ndi.distance_transform_edt(marker == 0, return_indices=True)
    cells = marker[tuple(nearest)]
    # A pixel with a different cell among its 4-neighbours is on a border: gaps 1-2 px wide.
    border = np.zeros(shape, bool)
    border[1:] |= cells[1:] != cells[:-1]
    border[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    cells[border] = 0
    return cells


def naive_border_weight_map(instances: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Textbook version: one full distance transform per object."""
    background = instances == 0
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    for label in np.unique(instances[~background]):
        dist = ndi.distance_transform_edt(instances != label)
        np.minimum(d2, np.maximum(d1, dist), out=d2)
        np.minimum(d1, dist, out=d1)
    weights = class_balance_weights(background.view(np.uint8)).astype(np.float64)
    weights[background] += w0 * np.exp(-((d1 + d2)[background] ** 2) / (2 * sigma**2))
    return weights.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of useg")
    parser.add_argument("--naive-repeats", type=int, default=5, help="timed runs of the peer")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--output", type=Path, default=RESULTS / "weightmap.json")
    args = parser.parse_args()

    inst = voronoi_cells((args.size, args.size), args.cells)
    n_objects = int(np.unique(inst).size - 1)
    fast = border_weight_map(inst, w0=W0, sigma=SIGMA)
    slow = naive_border_weight_map(inst, W0, SIGMA)
    max_diff = float(np.abs(fast - slow).max())
    assert max_diff <= 1e-4 * W0 + 1e-5, max_diff

    times = interleaved(
        {
            "useg": lambda: border_weight_map(inst, w0=W0, sigma=SIGMA),
            "naive": lambda: naive_border_weight_map(inst, W0, SIGMA),
        },
        {"useg": args.repeats, "naive": args.naive_repeats},
        warm_up=False,  # both ran once above, for the comparison
    )
    t_useg, t_naive = times["useg"], times["naive"]

    result = {
        "benchmark": "border weight map (U-Net eq. 2), 2D",
        "command": command_line(),
        "machine": machine_info(),
        "input": {
            "shape": list(inst.shape),
            "objects": n_objects,
            "background_fraction": float((inst == 0).mean()),
            "w0": W0,
            "sigma": SIGMA,
            "cutoff": border_cutoff(SIGMA),
        },
        "max_abs_difference": max_diff,
        "useg": summary(t_useg, "_s"),
        "naive_edt_per_object": summary(t_naive, "_s"),
        "speedup_median": float(np.median(t_naive) / np.median(t_useg)),
    }
    out = write_json(args.output, result)

    print(
        f"border weight map, {inst.shape[0]}x{inst.shape[1]}, {n_objects} objects, "
        f"max |useg - naive| = {max_diff:.2e}"
    )
    print_timings([("useg", result["useg"], ""),
                   ("naive (EDT per object)", result["naive_edt_per_object"], "")],
                  label="implementation")
    print(f"speedup (median): {result['speedup_median']:.0f}x   -> {out}")


if __name__ == "__main__":
    main()

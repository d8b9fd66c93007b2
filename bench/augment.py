"""Elastic deformation: useg vs elasticdeform (2D) and TorchIO RandomElasticDeformation (3D).

Run: .venv/bin/python bench/augment.py [--threads 1] [--repeats N] [--output FILE]

Peers (bench only, not dependencies of useg):
    .venv/bin/pip install --no-binary elasticdeform elasticdeform
    .venv/bin/pip install torchio

Same work on both sides: an image and its label map deformed by a cubic B-spline displacement
field from the same control grid, image interpolated linearly (mirror border), labels by nearest
neighbour. 2D: 512x512, the U-Net paper's 3x3 grid with std 10 px; elasticdeform gets the very
same control displacements (its output is compared with useg's). 3D: 128^3, a control point
every 32 voxels (5x5x5, the 3D U-Net's setting), TorchIO with 5 control points per axis.
All libraries run with the same number of threads (default 1: elasticdeform is single-threaded;
SimpleITK, which TorchIO calls, and torch are set to it). Results: bench/results/augment.json
(``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import (
    RESULTS,
    command_line,
    interleaved,
    machine_info,
    print_timings,
    summary,
    write_json,
)

from useg.training.augment import DeformParams, control_grid_shape, deform, rotation_matrix


def bench_2d(args) -> dict:
    import elasticdeform

    rng = np.random.default_rng(0)
    shape = (512, 512)
    image = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 5, shape).astype(np.int32)
    control = rng.normal(scale=10.0, size=(2, 3, 3))  # U-Net paper: 3x3 grid, std 10 px
    rows = {}
    for case, angle, zoom in (("elastic", None, None), ("elastic+rotate+zoom", 20.0, 1.1)):
        params = replace(DeformParams.identity(2), displacement=torch.from_numpy(control))
        if angle is not None:
            rot = rotation_matrix(2, np.radians(angle), (0, 1))
            params = replace(params, rotation=tuple(map(tuple, rot.tolist())), scale=(zoom, zoom))

        def run_useg(params=params):
            out, lab, _ = deform(
                torch.from_numpy(image)[None], torch.from_numpy(labels), params=params
            )
            return out[0].numpy(), lab.numpy()

        def run_peer(angle=angle, zoom=zoom):
            return elasticdeform.deform_grid(
                [image, labels],
                control,
                order=[1, 0],
                mode=["mirror", "constant"],
                cval=[0.0, -1],
                rotate=angle,
                zoom=zoom,
            )

        mine, theirs = run_useg(), run_peer()
        times = interleaved(
            {"useg": run_useg, "elasticdeform": run_peer},
            {"useg": args.repeats, "elasticdeform": args.repeats},
        )
        rows[case] = {
            "useg": summary(times["useg"], "_s"),
            "elasticdeform": summary(times["elasticdeform"], "_s"),
            "speedup_median": float(np.median(times["elasticdeform"]) / np.median(times["useg"])),
            # Same field and conventions: images agree; labels differ only where a sample lies
            # within half a pixel outside the image (useg: nearest pixel, elasticdeform: cval).
            "image_max_abs_difference": float(np.abs(mine[0] - theirs[0]).max()),
            "label_disagreement_fraction": float((mine[1] != theirs[1]).mean()),
        }
    return {
        "shape": list(shape),
        "control_grid": [3, 3],
        "displacement_std": 10.0,
        "target_speedup": 5.0,
        "cases": rows,
    }


def bench_3d(args) -> dict:
    import SimpleITK as sitk
    import torchio as tio

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    rng = np.random.default_rng(1)
    shape = (128, 128, 128)
    image = torch.from_numpy(rng.random(shape, dtype=np.float32))[None]
    labels = torch.from_numpy(rng.integers(0, 5, shape))
    grid = control_grid_shape(shape, 32.0)
    control = torch.from_numpy(rng.normal(scale=4.0, size=(3, *grid)))  # 3D U-Net: std 4
    params = replace(DeformParams.identity(3), displacement=control)
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=labels[None])
    )
    transform = tio.RandomElasticDeformation(
        num_control_points=grid[0],
        max_displacement=8.0,
        locked_borders=0,
        image_interpolation="linear",
        label_interpolation="nearest",
    )

    def run_useg():
        return deform(image, labels, params=params)

    def run_peer():
        return transform(subject)

    fns = {"useg": run_useg, "torchio": run_peer}
    repeats = {"useg": args.repeats, "torchio": args.peer_repeats_3d}
    if torch.cuda.is_available():
        image_c, labels_c = image.cuda(), labels.cuda()

        def run_cuda():
            out = deform(image_c, labels_c, params=params)
            torch.cuda.synchronize()
            return out

        fns["useg_cuda"] = run_cuda
        repeats["useg_cuda"] = args.repeats
    times = interleaved(fns, repeats)
    result = {
        "shape": list(shape),
        "control_grid": list(grid),
        "displacement_std": 4.0,
        "target_speedup": 4.0,
        "useg": summary(times["useg"], "_s"),
        "torchio": summary(times["torchio"], "_s"),
        "speedup_median": float(np.median(times["torchio"]) / np.median(times["useg"])),
    }
    if "useg_cuda" in times:
        result["useg_cuda"] = summary(times["useg_cuda"], "_s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--peer-repeats-3d", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS / "augment.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    result = {
        "benchmark": "elastic deformation of image + label map",
        "command": command_line(),
        "machine": machine_info("elasticdeform", "torchio", "SimpleITK"),
        "2d": bench_2d(args),
        "3d": bench_3d(args),
    }
    out = write_json(args.output, result)

    print(f"threads: {args.threads}")
    rows = []
    for case, row in result["2d"]["cases"].items():
        for name in ("useg", "elasticdeform"):
            speed = f"{row['speedup_median']:.1f}x" if name == "useg" else ""
            rows.append((f"2D 512^2 {case} {name}", row[name], speed))
    r3 = result["3d"]
    for name in ("useg", "torchio", "useg_cuda"):
        if name in r3:
            speed = f"{r3['speedup_median']:.1f}x" if name == "useg" else ""
            rows.append((f"3D 128^3 elastic {name}", r3[name], speed))
    print_timings(rows, extra="speedup")
    print(f"-> {out}")


if __name__ == "__main__":
    main()

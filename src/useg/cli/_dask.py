"""The ``--dask`` options of ``useg predict``: one large image, block by block, into zarr."""

from __future__ import annotations

import argparse
import sys

from useg.errors import InputError


def sizes(text: str) -> tuple[int, ...]:
    """``"572"`` or ``"64x256x256"`` (or commas) -> a tuple of positive ints (argparse type)."""
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or NxM[xK], got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "block-parallel prediction with dask (one large image; see docs/scale.md)"
    )
    g.add_argument(
        "--dask", action="store_true",
        help="predict block by block with dask, resuming an interrupted run; INPUT may be a "
        "chunked array (vol.zarr/raw, image.ome.zarr, file.h5:/raw) and --out is a zarr store "
        "that receives OUT/probs and OUT/labels",
    )
    g.add_argument(
        "--scheduler", default=None,
        help="dask scheduler address (tcp://host:8786), or threads / processes / synchronous "
        "(default: a local cluster of --workers processes, or threads)",
    )
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes of a local cluster started when no --scheduler is "
                   "given")
    g.add_argument("--block", type=sizes, default=None,
                   help="block (and output chunk) size, e.g. 256 or 128x256x256, rounded up to "
                   "whole tiles (default: about 256 per axis in 3D, 2048 in 2D)")


def run(args: argparse.Namespace) -> int:
    from useg import io
    from useg.chunked import is_array_spec, parse_spec
    from useg.dask_predict import predict_dask

    if len(args.inputs) != 1:
        raise InputError("--dask predicts one image (or volume) at a time; give one INPUT")
    source = str(args.inputs[0])
    image = source
    if not is_array_spec(source):
        image, _ = io.read_image(source)  # an ordinary image file is read whole
    out = str(args.out)
    results = io.result_paths(out, None, probabilities=not args.no_probs)
    if parse_spec(out).kind != "zarr":
        raise InputError(f"{out}: with --dask, --out is a zarr store (e.g. result.zarr)")
    tile = args.tile[0] if args.tile and len(args.tile) == 1 else args.tile
    block = args.block[0] if args.block and len(args.block) == 1 else args.block
    scheduler = args.scheduler
    cluster = None
    if scheduler is None and args.workers and args.workers > 1:
        import os

        import dask
        from distributed import LocalCluster

        # dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers (and into this
        # process's environment); it also freezes glibc's mmap threshold, so every large array
        # is mapped and unmapped afresh: measured, each block then costs about twice the CPU
        # time (bench/scale.py).
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set(
            {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
        ):
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                   processes=True, dashboard_address=":0")
        scheduler = cluster
        torch_threads = args.torch_threads
        if torch_threads is None:
            torch_threads = max(1, (os.cpu_count() or 1) // args.workers)
    else:
        torch_threads = args.torch_threads
    try:
        summary = predict_dask(
            args.model, image, results.get("probabilities"), labels=results["labels"],
            block=block, tile=tile, device=args.device, scheduler=scheduler,
            workers=args.workers, tta=args.tta, precision=args.precision,
            batch_size=args.batch_size, overwrite=args.overwrite,
            progress=not args.quiet and sys.stderr.isatty(), torch_threads=torch_threads,
        )
    finally:
        if cluster is not None:
            cluster.close()
    rate = summary["voxels"] / max(summary["seconds"], 1e-9)
    print(
        f"{source} -> {out}: {len(summary['computed'])} blocks computed, "
        f"{summary['skipped']} already done, of {summary['blocks']} "
        f"({summary['seconds']:.1f} s, {rate / 1e6:.2f} Mvoxel/s)"
    )
    return 0

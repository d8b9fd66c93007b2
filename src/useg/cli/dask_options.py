"""The ``--dask`` options of ``useg predict`` (one large image, block by block, into zarr):
argument definitions only; :func:`useg.inference.files.predict_paths` runs them."""

from __future__ import annotations

import argparse

from useg.cli import positive_int, sizes


def add_dask_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--dask``, ``--scheduler``, ``--workers`` and ``--block`` to ``p``."""
    g = p.add_argument_group(
        "block-parallel prediction with dask (one large image; see docs/scale.md)"
    )
    g.add_argument(
        "--dask", action="store_true",
        help="predict block by block with dask, resuming an interrupted run; INPUT may be a "
        "chunked array (vol.zarr/raw, image.ome.zarr, a level image.ome.zarr/1, file.h5:/raw) "
        "and --out is a zarr store that receives OUT/probs and OUT/labels; an --out ending in "
        ".ome.zarr is an OME-Zarr image of the probabilities with a pyramid and the label "
        "images OUT/labels/classes (and /instances), in the input's voxel size (needs "
        "useg[ome])",
    )
    g.add_argument(
        "--scheduler", default=None,
        help="dask scheduler address (tcp://host:8786), or threads / processes / synchronous "
        "(default: a local cluster of --workers processes, or threads)",
    )
    g.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes of a local cluster started when no --scheduler is "
                   "given")
    g.add_argument("--block", type=sizes, default=None,
                   help="block (and output chunk) size, e.g. 256 or 128x256x256, rounded up to "
                   "whole tiles (default: about 256 per axis in 3D, 2048 in 2D)")

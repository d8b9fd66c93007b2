"""The first stage: files and arrays in, files out. Needs only NumPy (and the readers it uses).

Modules: :mod:`~useg.io.images` (PNG/TIFF in the library's axis order, with spacing),
:mod:`~useg.io.files` (the atomic writer, JSON, listing, pairing by name, naming results),
:mod:`~useg.io.arrays` (mirrored boxes of array-likes), :mod:`~useg.io.chunked` (zarr,
OME-Zarr, HDF5), :mod:`~useg.io.normalize` (intensity statistics, for training and prediction
alike) and :mod:`~useg.io.datasets` (the shared data folder). The names below are the ones used
as ``io.<name>``.
"""

from __future__ import annotations

from useg.io.files import (
    IMAGE_EXTS,
    atomic_write,
    file_stem,
    list_images,
    natural_key,
    pair_by_stem,
    plan_results,
    read_json,
    result_paths,
    write_json,
)
from useg.io.images import read_image, read_labels, write_image

__all__ = [
    "IMAGE_EXTS",
    "atomic_write",
    "file_stem",
    "list_images",
    "natural_key",
    "pair_by_stem",
    "plan_results",
    "read_image",
    "read_json",
    "read_labels",
    "result_paths",
    "write_image",
    "write_json",
]

"""The first stage: files and arrays in, files out. Needs only NumPy (and the readers it uses).

Modules: :mod:`~useg.io.images` (PNG/TIFF in the library's axis order, with spacing),
:mod:`~useg.io.files` (the atomic writer, JSON, listing, pairing by name, naming results),
:mod:`~useg.io.arrays` (boxes of array-likes, mirrored or filled beyond the border),
:mod:`~useg.io.chunked` (zarr, OME-Zarr, HDF5), :mod:`~useg.io.normalize` (intensity
statistics, for training and prediction alike) and :mod:`~useg.io.datasets` (the shared data
folder). The public names of :mod:`~useg.io.files` and :mod:`~useg.io.images` are also
``io.<name>``.
"""

from __future__ import annotations

from useg.io import files, images
from useg.io.files import *  # noqa: F403 (the names of files.__all__)
from useg.io.images import *  # noqa: F403 (the names of images.__all__)

__all__ = [*files.__all__, *images.__all__]

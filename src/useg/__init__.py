"""useg: U-Net and 3D U-Net segmentation for microscopy images and volumes.

The package is laid out by pipeline stage (docs/design.md): :mod:`useg.io` -> :mod:`useg.nets`
-> :mod:`useg.training` -> :mod:`useg.inference` -> :mod:`useg.evaluation`, with
:mod:`useg.workflows` and :mod:`useg.cli` on top. The names below are its public API.
"""

from __future__ import annotations

import importlib
import os
import sys

__version__ = "0.1.0"

# Every activation of a large tile is a fresh allocation; with 4 KiB pages the kernel faults in
# and zero-fills each page on first touch, a share of every forward pass and training step.
# PyTorch advises transparent huge pages for its CPU buffers of 2 MiB and more when this
# variable is set before its first allocation, which importing useg precedes in our entry
# points; the memory is the same, up to rounding buffers to whole huge pages. A value the user
# set (0 turns it off) is kept. See useg.device.huge_pages_in_effect, bench/huge_pages.py.
if sys.platform.startswith("linux"):
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# Public name -> module that defines it. Imported on first use, so that ``import useg`` stays
# fast and a command that needs only NumPy never pays for importing torch. No public name is
# the name of a submodule, so importing submodules never rebinds one.
_API = {
    "UNet": "useg.nets.unet",
    "UNetConfig": "useg.nets.config",
    "preset": "useg.nets.config",
    "load_model": "useg.nets.checkpoint",
    "save_model": "useg.nets.checkpoint",
    "predict": "useg.inference.predict",
    "UsegError": "useg.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later look-ups find it without coming here
        return value
    raise AttributeError(f"module 'useg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

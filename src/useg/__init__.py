"""useg: U-Net and 3D U-Net segmentation for microscopy images and volumes.

The package is laid out by pipeline stage (docs/design.md): :mod:`useg.io` -> :mod:`useg.nets`
-> :mod:`useg.training` -> :mod:`useg.inference` -> :mod:`useg.evaluation`, with
:mod:`useg.workflows` and :mod:`useg.cli` on top. The names below are its public API.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

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

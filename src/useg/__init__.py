"""useg: U-Net and 3D U-Net segmentation for microscopy images and volumes."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public API name -> module that defines it. Imported lazily so ``import useg`` stays fast and a
# command that needs only NumPy never pays for importing torch.
_API = {
    "UNet": "useg.nets",
    "UNetConfig": "useg.nets",
    "preset": "useg.nets",
    "load_model": "useg.checkpoint",
    "save_model": "useg.checkpoint",
    "predict": "useg.predict",
    "UsegError": "useg.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'useg' has no attribute {name!r}")

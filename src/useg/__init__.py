"""useg: U-Net and 3D U-Net segmentation for microscopy images and volumes."""

from __future__ import annotations

import importlib
import sys
import types

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


class _Package(types.ModuleType):
    """The ``useg`` package object, whose public names cannot be rebound to submodules.

    The first import of a submodule, by anyone and in any order, makes the import system set it
    as an attribute of its package; the function ``useg.predict`` shares its name with the
    module ``useg.predict`` and would be replaced by it. That module stays reachable as
    ``from useg.predict import ...`` and ``sys.modules["useg.predict"]``.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later look-ups find it without coming here
        return value
    raise AttributeError(f"module 'useg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package

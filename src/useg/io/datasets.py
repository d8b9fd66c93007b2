"""Where the shared real datasets live (the ``shared/data`` folder beside the project)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "dataset"]


def data_root() -> Path | None:
    """Return the folder of the shared real datasets, or None when it is absent.

    ``USEG_DATA`` overrides the location; otherwise ``../shared/data`` beside the project root
    (or beside the current directory) is used.

    Examples
    --------
    >>> root = data_root()
    >>> root is None or root.is_dir()
    True
    """
    env = os.environ.get("USEG_DATA")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    candidates = [
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def dataset(name: str) -> Path | None:
    """Return the folder of one shared dataset (e.g. ``"isbi2012"``), or None when absent."""
    root = data_root()
    if root is None:
        return None
    p = root / name
    return p if p.is_dir() else None

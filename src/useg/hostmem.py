"""Keeping freed host memory for reuse while a CPU network runs.

glibc's ``malloc`` serves every block above 32 MiB with a fresh ``mmap`` and returns it to the
kernel on ``free``. A 3D U-Net tile allocates and frees about twenty activations of hundreds of
megabytes, so every one of them is faulted in page by page and zero-filled by the kernel anew:
for the ``cicek2016`` network at width 16 on a 256^3 volume that was 37 of 157 CPU seconds
(``bench/predict3d.py``; profile in ``bench/results/predict3d.json``). Raising the mmap and trim
thresholds while the network runs lets ``malloc`` hand the freed blocks of one layer to the next
instead; the heap then holds some fragmented slack (about a third of the tensors' peak), which
:func:`useg.predict.default_tile` counts in its memory budget.

Only glibc is tuned (other C libraries, macOS and Windows run unchanged), and the setting can be
switched off with ``USEG_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator

__all__ = ["HEAP_SLACK", "keep_freed_memory"]

#: Peak resident memory over the tensors' peak when freed blocks stay in the heap, measured for
#: the 3D U-Net (1.33 at a 220^3 tile, 1.38 at 348x220x220); see the module docstring.
HEAP_SLACK = 1.4

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int; blocks of 2 GiB and more are mapped regardless.
_KEEP = 2**31 - 1
# What glibc's own dynamic thresholds settle at once large blocks have been freed (an mmap
# threshold of 32 MiB and a trim threshold of twice that): set back on leaving.
_RESTORE_MMAP = 32 << 20
_RESTORE_TRIM = 64 << 20

_lock = threading.Lock()
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
    except (OSError, AttributeError):
        return None
    return libc


def enabled() -> bool:
    """Whether :func:`keep_freed_memory` tunes the allocator on this system."""
    return os.environ.get("USEG_KEEP_FREED_MEMORY", "1") != "0" and _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory(active: bool = True) -> Iterator[bool]:
    """Within the block, large freed blocks stay in the process for reuse.

    Nested and concurrent uses share one setting; on leaving the outermost, the thresholds are
    set back to glibc's usual values and the free heap is returned to the kernel
    (``malloc_trim``). Yields whether the allocator was tuned.

    Examples
    --------
    >>> import numpy as np
    >>> with keep_freed_memory():
    ...     total = sum(float(np.ones(1 << 20).sum()) for _ in range(3))
    >>> total
    3145728.0
    """
    global _depth
    libc = _glibc() if active and enabled() else None
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_KEEP))
            libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_KEEP))
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_RESTORE_MMAP))
                libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_RESTORE_TRIM))
                libc.malloc_trim(ctypes.c_size_t(0))

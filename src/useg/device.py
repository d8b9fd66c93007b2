"""Choosing the compute device and precision once, to pass down explicitly.

Precision ``auto`` picks the fastest of fp32 and bf16 that the device runs natively, and is never
slower than fp32. On CPU, bf16 autocast is only fast with bf16 instructions (``avx512_bf16`` or
``amx_bf16`` on x86, ``bf16`` on Arm); without them every bf16 operation is emulated through
float32 and much slower than plain fp32. So ``auto`` takes bf16 on CPU only when the CPU flags
say native AND a short measurement (a few convolutions in fp32 and in bf16 autocast) confirms it
is faster. The measured answer is cached once per machine in ``$XDG_CACHE_HOME/useg`` (else
``~/.cache/useg``), keyed by CPU model, relevant flags and torch version; ``USEG_PRECISION_CACHE=0``
turns that file off (the answer is then measured once per process).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from useg.errors import ConfigError, UsegWarning, check_choice

__all__ = [
    "PRECISION_CHOICES",
    "autocast",
    "cpu_has_native_bf16",
    "freed_memory_fits",
    "freed_memory_handed_back",
    "freed_memory_kept",
    "huge_pages_in_effect",
    "kernel_huge_page_mode",
    "resolve_device",
    "resolve_precision",
]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)

# CPU flags that mean bf16 arithmetic in hardware (x86: AVX-512 BF16 and AMX; Arm: FEAT_BF16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
# Flags that change how fast either precision runs; the cache key holds those the CPU has.
_SPEED_FLAGS = NATIVE_BF16_FLAGS | {"avx2", "avx512f", "avx512_vnni", "amx_tile", "asimd", "sve"}

# bf16 must beat fp32 by this factor in the measurement: a tie is not worth the lost precision.
_MARGIN = 0.9
_CACHE_FORMAT = "useg-precision-cache"
_measured: dict[str, dict[str, Any]] = {}  # this process's measurements, by cache key


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        return name
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def device_memory(device: torch.device) -> float:
    """Bytes one computation on ``device`` could use at most: the free memory of a GPU, or the
    machine's memory (``inf`` where the system does not say)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not a POSIX system: do not guess
        return math.inf


# glibc's mallopt parameters (malloc.h) and what it takes by default.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024
_KEEP_ALL = 2**31 - 1  # mallopt takes an int
# glibc malloc variables in the environment: the user chose its behaviour, so useg leaves it alone.
MALLOC_ENV_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def freed_memory_fits(step_bytes: float, device: torch.device) -> bool:
    """Whether keeping freed memory (:func:`freed_memory_kept`) is affordable for a computation
    of ``step_bytes`` at its peak: on the CPU, when twice that peak (about what keeping it
    measured) stays within half the machine's memory."""
    return device.type == "cpu" and 2 * step_bytes <= device_memory(device) / 2


_kept = False


@contextlib.contextmanager
def freed_memory_kept(keep: bool = True) -> Any:
    """Within the block, glibc keeps memory that is freed for the next allocation instead of
    handing it back to the kernel; yields whether it does.

    A training step frees and allocates the same large activations every step; handed back,
    each comes back as fresh pages that the kernel faults in and zeroes again, a large share of
    a 3D step on a 2-core CPU (``bench/train_step.py``, "freed memory handed back"). Kept, the
    process's peak memory grows (to about twice the step's peak, measured), so callers keep it
    only where that fits (:func:`freed_memory_fits`). On leaving, glibc's default thresholds
    are set again and the kept memory is handed back. One thing glibc cannot undo: once set,
    its thresholds stay fixed, where by default they grow with the first large blocks freed;
    so in a long-lived process (a notebook) that trained, large blocks are mapped and unmapped
    afresh from then on, as with freed memory handed back. ``useg train`` ends its process
    after training, where this does not matter. Nothing changes where the process is not on
    glibc, where the user set glibc's malloc variables (their choice stands), or with
    ``USEG_KEEP_FREED_MEMORY=0``.
    """
    global _kept
    libc = None
    if (keep and not _kept and os.environ.get("USEG_KEEP_FREED_MEMORY", "1") != "0"
            and not any(v in os.environ for v in MALLOC_ENV_VARIABLES)):
        libc = _glibc()
    if libc is None:
        yield False
        return
    _keep(libc, True)
    try:
        yield True
    finally:
        _keep(libc, False)


@contextlib.contextmanager
def freed_memory_handed_back() -> Any:
    """Within a :func:`freed_memory_kept` block, hand freed memory back for a while (e.g. for
    a validation, whose tiles differ from the training step's and would only add to what is
    kept); elsewhere nothing changes."""
    libc = _glibc() if _kept else None
    if libc is None:
        yield
        return
    _keep(libc, False)
    try:
        yield
    finally:
        _keep(libc, True)


def _keep(libc: Any, keep: bool) -> None:
    """Set glibc to keep freed memory, or back to its defaults (handing back what it kept)."""
    global _kept
    threshold = _KEEP_ALL if keep else _GLIBC_DEFAULT_THRESHOLD
    libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    if not keep:
        libc.malloc_trim(0)
    _kept = keep


@functools.lru_cache(maxsize=1)
def _glibc() -> Any:
    """The process's C library when it is glibc (it has ``mallopt`` and ``malloc_trim``)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def kernel_huge_page_mode() -> str | None:
    """The kernel's transparent huge page mode, ``always``, ``madvise`` or ``never`` (the word in
    brackets in ``/sys/kernel/mm/transparent_hugepage/enabled``); None where it does not say."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return next((w[1:-1] for w in text.split() if w.startswith("[")), None)


def huge_pages_in_effect() -> bool:
    """Whether PyTorch's large CPU buffers get transparent huge pages in this process.

    ``import useg`` asks PyTorch for them (``THP_MEM_ALLOC_ENABLE=1``, unless set already), but
    PyTorch reads that once, at its first CPU allocation, so a process that allocated a tensor
    before importing useg keeps 4 KiB pages; and the kernel grants them only if its setting
    (``/sys/kernel/mm/transparent_hugepage/enabled``) allows. So this touches a fresh 8 MiB
    buffer and asks the kernel (``/proc/self/smaps``) whether huge pages back it. Linux only.

    Examples
    --------
    >>> isinstance(huge_pages_in_effect(), bool)
    True
    """
    if not sys.platform.startswith("linux"):
        return False
    probe = torch.zeros(8 << 20, dtype=torch.uint8)
    address = probe.data_ptr()
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return False
    inside = False
    for line in filter(None, lines):
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's header: start-end perms ...
            start, _, end = head.partition("-")
            inside = int(start, 16) <= address < int(end, 16)
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) > 0
    return False


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISION_CHOICES`, else a :class:`ConfigError`."""
    return check_choice("precision", precision, PRECISION_CHOICES)


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """Model name and flags of this machine's CPU, from ``/proc/cpuinfo`` (Linux).

    Elsewhere the model is :func:`platform.processor` and the flags are empty, so bf16 counts as
    not native there.
    """
    model, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:  # x86 / Arm
            flags = frozenset(value.split())
    return model or platform.processor() or platform.machine(), flags


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions, so that bf16 autocast is not emulated.

    Examples
    --------
    >>> isinstance(cpu_has_native_bf16(), bool)
    True
    """
    return bool(cpu_info()[1] & NATIVE_BF16_FLAGS)


def resolve_precision(precision: str = "auto", device: str | torch.device = "cpu") -> str:
    """The precision to run on ``device``: ``auto`` resolved, the others checked.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``auto``: on CUDA, bf16 when the GPU supports it, else fp32; on CPU, bf16 only when the
        CPU has bf16 instructions and a short measurement (cached per machine, see the module
        docstring) finds it faster than fp32, else fp32.
    device : str or torch.device
        As for :func:`resolve_device`.

    Returns
    -------
    str
        ``fp32``, ``bf16`` or ``fp16``.

    Raises
    ------
    ConfigError
        For an unknown precision, or fp16 on CPU.

    Warns
    -----
    UsegWarning
        For bf16 on a CPU without bf16 instructions (emulated, likely much slower than fp32).

    Examples
    --------
    >>> resolve_precision("fp32", "cpu")
    'fp32'
    """
    check_precision(precision)
    device = resolve_device(device)
    if device.type == "cuda":
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return precision
    if precision == "fp16":
        raise ConfigError("fp16 needs CUDA; on CPU use precision auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() and _cpu_bf16_faster() else "fp32"
    if precision == "bf16" and not cpu_has_native_bf16():
        warnings.warn(
            f"bf16 on this CPU ({cpu_info()[0]}) is emulated, without avx512_bf16 or amx_bf16 "
            "instructions, and likely much slower than fp32; use precision auto or fp32 "
            "(--precision auto)",
            UsegWarning,
            stacklevel=2,
        )
    return precision


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed-precision context for ``precision`` in fp32 (none), bf16 or fp16 (CUDA only).

    ``auto`` must be resolved first (:func:`resolve_precision`).
    """
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("fp16 needs CUDA; on CPU use precision auto, fp32 or bf16")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Measuring bf16 against fp32 on this CPU, and remembering the answer


def measure_cpu_precisions(budget: float = 1.0) -> dict[str, float]:
    """Best seconds of one small convolution block in fp32 and in bf16 autocast on CPU.

    Two 64-channel 3x3 convolutions with ReLU (the bulk of a U-Net's work), channels last, as
    :func:`useg.inference.predict.predict` runs them; the two precisions alternate so that a load
    change on the machine affects both alike. Stops after ``budget`` seconds, warm-up included,
    once each has been timed once. Uses its own random generator, so the global one is untouched.
    """
    deadline = time.perf_counter() + budget
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    weights = [torch.randn(64, 64, 3, 3, generator=gen) * 0.05 for _ in range(2)]
    weights = [w.contiguous(memory_format=torch.channels_last) for w in weights]
    cpu = torch.device("cpu")

    def run(precision: str) -> float:
        start = time.perf_counter()
        with torch.inference_mode(), autocast(cpu, precision):
            y = x
            for w in weights:
                y = torch.relu(torch.nn.functional.conv2d(y, w, padding=1))
            y.float().sum().item()
        return time.perf_counter() - start

    best = {"fp32": float("inf"), "bf16": float("inf")}
    for p in best:  # first passes build the kernels; not timed
        run(p)
    for _ in range(4):
        for p in best:
            best[p] = min(best[p], run(p))
        if time.perf_counter() > deadline:
            break
    return best


def _cache_file() -> Path | None:
    if os.environ.get("USEG_PRECISION_CACHE", "").strip().lower() in ("0", "off", "false", "no"):
        return None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "useg" / "precision.json"


def _cache_key() -> tuple[str, dict[str, Any]]:
    model, flags = cpu_info()
    about = {"cpu": model, "flags": sorted(flags & _SPEED_FLAGS), "torch": torch.__version__}
    return json.dumps(about, sort_keys=True), about


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache's entries; empty when the file is missing, unreadable or not ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    from useg.errors import UsegError
    from useg.io.files import write_json

    # A cache that cannot be written only costs a measurement in the next process.
    with contextlib.suppress(OSError, UsegError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"format": _CACHE_FORMAT, "version": 1, "entries": entries})


def _cpu_bf16_faster() -> bool:
    """Whether bf16 autocast beats fp32 on this CPU: measured once, then cached."""
    key, about = _cache_key()
    if key in _measured:
        return bool(_measured[key]["bf16_faster"])
    path = _cache_file()
    entries = _read_cache(path) if path is not None else {}
    entry = entries.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("bf16_faster"), bool):
        _measured[key] = entry
        return entry["bf16_faster"]
    seconds = measure_cpu_precisions()
    entry = {
        **about,
        "fp32_s": seconds["fp32"],
        "bf16_s": seconds["bf16"],
        "bf16_faster": bool(seconds["bf16"] < _MARGIN * seconds["fp32"]),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _measured[key] = entry
    if path is not None:
        entries[key] = entry
        _write_cache(path, entries)
    return entry["bf16_faster"]

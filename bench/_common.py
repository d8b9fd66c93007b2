"""What every benchmark shares: the machine it ran on, its command line, JSON output, timing.

Benchmarks run as ``.venv/bin/python bench/NAME.py``, which puts ``bench/`` on ``sys.path``, so
they import this module as ``from _common import ...``. It imports only the standard library at
module level (torch, scipy and useg inside the functions that need them): prediction workers
import their benchmark, and with it this module, in every fresh subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"

# glibc's allocator settings, from the process's start, that keep freed blocks for reuse instead
# of returning every block over 32 MiB to the kernel (which then faults and zeroes it again).
KEEP_FREED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
# lscpu flags kept in the results: the vector and matrix instruction sets (x86: AVX, AVX-512,
# AMX, FMA, F16C; Arm: Advanced SIMD, SVE, BF16, I8MM).
VECTOR_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "asimd", "sve", "bf16", "i8mm")
# Of those, the flags that decide the speed of fp32 and bf16 convolutions (the summaries' CPU).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
               "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


# ----------------------------------------------------------------------------------------------
# The machine


def lscpu() -> dict[str, Any]:
    """The CPU's model name and its vector/matrix instruction flags, as ``lscpu`` states them
    (``/proc/cpuinfo`` through :func:`useg.device.cpu_info` where there is no lscpu)."""
    fields: dict[str, str] = {}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                              env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first socket's, on several
    if fields.get("Model name"):
        model, flags, source = fields["Model name"], fields.get("Flags", "").split(), "lscpu"
    else:
        from useg.device import cpu_info

        model, all_flags = cpu_info()
        flags, source = sorted(all_flags), "/proc/cpuinfo"
    return {"model": model or platform.processor() or platform.machine(),
            "flags": [f for f in flags if f.startswith(VECTOR_FLAG_PREFIXES)],
            "source": source}


def package_version(name: str) -> str | None:
    """The installed version of the distribution ``name``; None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(*packages: str, **extra: Any) -> dict[str, Any]:
    """The machine a benchmark runs on, taken at its start (after it set torch's threads).

    ``cpu``: lscpu's model name and vector/matrix flags; whether the CPU has bf16 instructions
    (useg's own test, which ``--precision auto`` starts from); core count, torch's threads and
    CPU capability, ``OMP_NUM_THREADS``; the kernel's huge page mode and whether PyTorch's
    large buffers get huge pages in this process (:func:`useg.device.huge_pages_in_effect`);
    python, numpy, scipy and torch versions, and those of the distributions named in
    ``packages`` (None where missing); the CUDA device, if any; the load average and the UTC
    date. ``extra`` items are added as they are.
    """
    import numpy as np
    import scipy
    import torch

    from useg.device import cpu_has_native_bf16, huge_pages_in_effect, kernel_huge_page_mode

    info: dict[str, Any] = {
        "cpu": lscpu(),
        "bf16_instructions": cpu_has_native_bf16(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "huge_pages": {"kernel": kernel_huge_page_mode(),
                       "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                       "in_effect": huge_pages_in_effect()},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        **{name: package_version(name) for name in packages},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    info.update(extra)
    return info


def cpu_line(machine: dict[str, Any]) -> str:
    """A results file's CPU in one line: model name x cores (the flags that decide convolution
    speed). Reads :func:`machine_info` and the layouts of older results: ``lscpu_model_name``
    and ``cpu_speed_flags``, or ``cpu`` (/proc/cpuinfo's name) and the subset ``cpu_flags``."""
    cpu = machine.get("cpu")
    if isinstance(cpu, dict):
        name = cpu.get("model")
        flags = [f for f in SPEED_FLAGS if f in cpu.get("flags", [])]
    else:
        name = machine.get("lscpu_model_name", cpu or "?")
        flags = machine.get("cpu_speed_flags", machine.get("cpu_flags", []))
    return f"{name} x {machine.get('cpu_count', '?')} ({', '.join(flags) or 'no flags recorded'})"


# ----------------------------------------------------------------------------------------------
# Command line and results files


def command_line() -> str:
    """This benchmark's command as run from the repository root, for the results."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return shlex.join([".venv/bin/python", script, *sys.argv[1:]])


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`useg.io.files.atomic_write`)."""
    from useg.io.files import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def publish(folder: str | os.PathLike, name: str, report: Any, markdown: str) -> None:
    """A bench's results: ``<name>.json`` and ``<name>.md`` in ``folder``, each written
    atomically, and the markdown on stdout."""
    write_json(Path(folder) / f"{name}.json", report)
    write_text(Path(folder) / f"{name}.md", markdown)
    print(markdown)


def kept_run(path: str | os.PathLike, identity: Any) -> Any:
    """The run kept at ``path`` by :func:`keep_run` if it was made with ``identity`` (compared as
    JSON reads it back: tuples are lists), else None."""
    path = Path(path)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["run"] if saved.get("identity") == json.loads(json.dumps(identity)) else None


def keep_run(path: str | os.PathLike, identity: Any, run: Any) -> None:
    """Keep a finished run at ``path`` with what it was made with, for :func:`kept_run`."""
    write_json(path, {"identity": identity, "run": run})


def write_json(path: str | os.PathLike, result: Any) -> Path:
    """Write ``result`` to ``path`` atomically (:func:`useg.io.write_json`), folders created."""
    from useg.io import write_json as atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, result)


# ----------------------------------------------------------------------------------------------
# Timing and memory


def summary(values: list[float], suffix: str = "") -> dict[str, Any]:
    """Median, min, max (keys ending with ``suffix``, e.g. ``_s``) and every value."""
    return {f"median{suffix}": float(statistics.median(values)),
            f"min{suffix}": float(min(values)), f"max{suffix}": float(max(values)),
            "runs": [float(v) for v in values]}


def interleaved(fns: dict[str, Callable[[], Any]], repeats: dict[str, int],
                warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds of each call of several functions timed in alternation, so that load from other
    users of the machine hits all of them alike; ``repeats[name]`` calls of each, after one
    untimed call of each when ``warm_up``."""
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(max(repeats.values())):
        for name, fn in fns.items():
            if i < repeats[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def print_timings(rows: list[tuple[str, dict[str, Any], str]], label: str = "case",
                  extra: str = "") -> None:
    """A table of (label, :func:`summary` with suffix ``_s``, extra column) rows, in ms."""
    w = max(len(label), *(len(r[0]) for r in rows)) + 2
    print(f"{label:<{w}}{'median ms':>11}{'min ms':>9}{'max ms':>9}{extra:>{9 if extra else 0}}")
    for name, s, text in rows:
        print(f"{name:<{w}}{1e3 * s['median_s']:>11.1f}{1e3 * s['min_s']:>9.1f}"
              f"{1e3 * s['max_s']:>9.1f}{text if extra else '':>{9 if extra else 0}}")


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory: ``VmHWM``, the high-water mark of its own address
    space (Linux; None elsewhere). Not ``ru_maxrss``: on Linux that survives ``exec``, so a
    child started by a large parent (vfork + exec, or a spawned dask worker) reports the
    parent's peak when it is the larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def best_of(fn, repeats: int = 3) -> float:
    """Best seconds of ``repeats`` calls of ``fn`` after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

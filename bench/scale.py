"""Block-parallel prediction of a large zarr image with dask: 1 vs 2 local workers, and resume.

Run: .venv/bin/python bench/scale.py [--ndim 2|3] [--size N] [--quick] [--workers 1,2]
     [--width W] [--depth D] [--chunk C] [--tile T] [--block B] [--repeats N]

The default (``--ndim 2``) predicts a 90112 x 90112 uint8 mosaic, 8.12 GB on disk; the whole
run takes about 20-25 minutes on two otherwise idle cores (estimated from a 1.07 GB run,
``--size 32768``: 412 s with the two cores shared with other jobs, load 7-8, which would make
the full run last about 50 minutes). What it does:

1. writes an uncompressed uint8 zarr image (no compressor, so its chunk files really hold
   ``size^ndim`` bytes; their total size is measured and reported), chunk by chunk, with cheap
   synthetic content: a checkerboard of 16-pixel squares plus low-amplitude noise. The default
   side is the smallest multiple of the chunk whose ``side^ndim`` is at least 8.0e9 bytes
   (2D: 90112, 8.12 GB; 3D: 2048, 8.6 GB);
2. predicts it with a small untrained U-Net (valid padding; fixed normalisation, so no
   statistics pass over the image) into a uint8 label array (zstd-compressed), with a
   ``distributed.LocalCluster`` of 1 and of 2 single-threaded worker processes (one torch thread
   each), ``--repeats`` times; reports wall time, Mpixel/s and input MB/s, worker CPU seconds,
   and each worker's peak RSS (the larger of a psutil sample every 0.1 s and the kernel's
   VmHWM); the main process shows predict_dask's progress bar (pixels and blocks done, rate,
   time left);
3. starts the 2-worker run in a child process, kills it (SIGKILL, whole process group) when
   about half the blocks are marked done, restarts it and measures how long the rest takes
   against the uninterrupted run, and checks the resumed labels equal the uninterrupted ones.

Labels are compared across worker counts slab by slab (the outputs do not fit in memory). For
images of at most 2^27 pixels the single-process ``useg.inference.predict.predict`` is also
timed, and its labels compared with the dask result.

The workers run without dask's ``MALLOC_TRIM_THRESHOLD_=65536`` (``--malloc-trim dask`` keeps
it): with it a 4096^2 block cost 2.9 CPU seconds instead of 1.4 here, most of the difference in
page faults (glibc then maps and unmaps every large array afresh).

Defaults per ``--ndim`` (each can be overridden):

- 2D: U-Net width 1, depth 1 (halo 8, pooling step 2); tile 528 (output 512 per tile), block
  4096 (8 x 8 tiles; 484 blocks of 1-1.5 CPU seconds at full size, fine enough for the
  progress bar and for killing half-way), input chunk 2048. Measured here with
  ``useg.inference.predict.predict`` and one torch thread on a 4096^2 image: tiles of 528 to 784
  run at about 19 Mpixel per CPU second, 1040 at 14 and 2064 at 11.5 (large tiles spill out of the
  caches), 272 at 11 (per-tile overhead); 528 is the smallest of the fast ones and its output
  stride, 512, is a power of two, so blocks of 4096 start on input chunk borders. A block
  reads its 4112^2 input box from 3 x 3 chunks of 4096 (0.10 s, a tenth of its compute),
  4 x 4 chunks of 2048 (0.013 s) or 6 x 6 of 1024 (0.027 s, and more files): 2048 reads
  fastest;
- 3D: U-Net width 2, depth 2; tile 196, block one tile stride (156), input chunk 128; about
  1-2 Mvoxel/s per worker, so the 8.6 GB default takes hours.

``--quick`` is a smoke run (2D: 2048^2 with 16 blocks; 3D: 96^3 with 8 blocks).
Results: bench/results/scale.json (``--output`` elsewhere), merged with earlier entries under
``quick-2d``, ``quick-3d``, or ``<ndim>d-<size>`` (e.g. ``2d-90112``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _common import RESULTS, command_line, machine_info, peak_rss_bytes, summary, write_json

TARGET_BYTES = 8_000_000_000  # the default image holds at least this many bytes on disk
DEFAULTS = {  # per ndim: network, chunk, tile, block (None: one tile stride); see the docstring
    2: {"width": 1, "depth": 1, "chunk": 2048, "tile": 528, "block": 4096},
    3: {"width": 2, "depth": 2, "chunk": 128, "tile": 196, "block": None},
}
QUICK = {2: {"size": 2048, "chunk": 512, "tile": 528, "block": 512},
         3: {"size": 96, "chunk": 32, "tile": 100, "block": None}}


def default_size(ndim: int, chunk: int, target: int = TARGET_BYTES) -> int:
    """The smallest multiple of ``chunk`` whose ``ndim``-th power is at least ``target``."""
    side = max(1, round(target ** (1 / ndim)))
    while side**ndim < target:
        side += 1
    while side > 1 and (side - 1) ** ndim >= target:
        side -= 1
    return -(-side // chunk) * chunk


# ----------------------------------------------------------------------------------------------
# data and model


def create_uncompressed(spec: str, shape: tuple[int, ...], chunk: int):
    """A uint8 zarr v3 array without compressor (``useg.io.chunked.create_array`` always
    compresses), with the axis names ``useg.io.chunked.open_array`` reads."""
    import zarr

    container, _, inner = spec.partition(".zarr/")
    axes = "ZYX"[3 - len(shape):]
    root = zarr.open_group(container + ".zarr", mode="a", zarr_format=3)
    return root.create_array(inner, shape=shape, dtype=np.uint8, chunks=(chunk,) * len(shape),
                             compressors=None, fill_value=0, overwrite=True,
                             dimension_names=[a.lower() for a in axes],
                             attributes={"axes": axes})


def disk_usage(path: Path) -> dict:
    """Sum of the file sizes under ``path``, and the bytes the file system allocated to them."""
    size = allocated = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            size, allocated, files = size + st.st_size, allocated + st.st_blocks * 512, files + 1
    return {"bytes": size, "GB": size / 1e9, "allocated_bytes": allocated, "files": files}


def write_image(spec: str, ndim: int, size: int, chunk: int, seed: int = 0,
                progress: bool = True) -> dict:
    """A uint8 image written chunk by chunk (2 threads: writes and numpy release the GIL)."""
    arr = create_uncompressed(spec, (size,) * ndim, chunk)
    noise = np.random.default_rng(seed).integers(0, 32, (chunk,) * ndim, dtype=np.uint8)
    n = math.ceil(size / chunk)

    def one(idx):
        lo = [i * chunk for i in idx]
        hi = [min(size, v + chunk) for v in lo]
        check = np.zeros((1,) * ndim, np.uint8)
        for axis, (a, b) in enumerate(zip(lo, hi, strict=True)):
            shape = [1] * ndim
            shape[axis] = b - a
            check = check ^ ((np.arange(a, b) // 16) % 2).astype(np.uint8).reshape(shape)
        shift = int(sum(idx)) % chunk
        block = check * np.uint8(160) + np.roll(noise, shift, axis=0)[
            tuple(slice(0, b - a) for a, b in zip(lo, hi, strict=True))] + np.uint8(48)
        arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = block
        return block.nbytes

    from tqdm.auto import tqdm

    start = time.perf_counter()
    written = 0
    with ThreadPoolExecutor(2) as pool, tqdm(total=size**ndim, unit="B", unit_scale=True,
                                              desc="write input", disable=not progress) as bar:
        for nbytes in pool.map(one, np.ndindex(*(n,) * ndim)):
            written += nbytes
            bar.update(nbytes)
    seconds = time.perf_counter() - start
    return {"bytes": written, "seconds": seconds, "MB_per_s": written / seconds / 1e6}


def save_tiny_model(path: Path, ndim: int, width: int, depth: int) -> Path:
    import torch

    from useg.nets import UNet, UNetConfig
    from useg.nets.checkpoint import save_model

    net = UNet(UNetConfig(ndim=ndim, width=width, depth=depth, classes=2)).eval()
    net.reset_parameters(torch.Generator().manual_seed(0))
    meta = {"normalization": {"mode": "fixed", "offset": [0.0], "scale": [255.0]}}
    return save_model(net, path, meta)


def same_labels(a_spec: str, b_spec: str) -> bool:
    """Whether two label arrays are equal, compared slab by slab along the first axis (two
    threads: decompression releases the GIL)."""
    from useg.io.chunked import open_array

    a, b = open_array(a_spec)[0], open_array(b_spec)[0]
    if a.shape != b.shape:
        return False
    step = a.chunks[0]

    def one(lo: int) -> bool:
        return bool(np.array_equal(a[lo:lo + step], b[lo:lo + step]))

    with ThreadPoolExecutor(2) as pool:
        return all(pool.map(one, range(0, a.shape[0], step)))


# ----------------------------------------------------------------------------------------------
# peak memory of the workers


def _start_sampler(dask_worker, period: float = 0.1) -> int:
    """Sample this worker's RSS in a thread; imports torch and useg first, so that the timed run
    measures prediction rather than imports. (State lives on the worker object: the function is
    shipped by value, with its own copy of this module's globals.)"""
    import psutil

    import useg.inference.dask  # noqa: F401
    import useg.inference.predict  # noqa: F401

    proc = psutil.Process()
    state = {"peak": proc.memory_info().rss, "stop": False}
    dask_worker._useg_rss = state

    def loop():
        while not state["stop"]:
            state["peak"] = max(state["peak"], proc.memory_info().rss)
            time.sleep(period)

    threading.Thread(target=loop, daemon=True).start()
    return os.getpid()


def _read_sampler(dask_worker) -> dict:
    state = dask_worker._useg_rss
    state["stop"] = True
    hwm = peak_rss_bytes()  # the kernel's; unlike ru_maxrss not inherited from the parent
    return {"peak_rss_MB_psutil": state["peak"] / 1e6,
            "peak_rss_MB_vmhwm": hwm / 1e6 if hwm is not None else None,
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


# ----------------------------------------------------------------------------------------------
# runs


def run_dask(args, model: Path, source: str, out: str, workers: int, overwrite: bool = True,
             on_block=None) -> dict:
    import dask
    from distributed import Client, LocalCluster

    from useg.inference.dask import predict_dask

    records = []

    def collect(record):
        records.append(record)
        if on_block is not None:
            on_block(record)

    settings = {}
    if args.malloc_trim == "unset":
        # dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers (and into this
        # process's environment, whence later clusters would inherit it): setting it also
        # freezes glibc's mmap threshold, so every large array is mapped and unmapped afresh
        # and each block costs about twice the CPU time in page faults.
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        settings["distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"] = None
    t0 = time.perf_counter()
    with dask.config.set(settings), LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        client.run(_start_sampler)
        startup = time.perf_counter() - t0
        res = predict_dask(
            str(model), source, labels=out, block=args.block, tile=args.tile, scheduler=client,
            overwrite=overwrite, progress=not args.no_progress, torch_threads=1,
            on_block=collect,
        )
        memory = client.run(_read_sampler)
    return {
        "workers": workers, "cluster_start_and_warm_up_s": startup, "seconds": res["seconds"],
        "blocks": res["blocks"], "computed": len(res["computed"]), "skipped": res["skipped"],
        "voxels": res["voxels"], "block": list(res["block"]), "tile": list(res["tile"]),
        "worker_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in records),
        "worker_memory": list(memory.values()),
    }


def child_main(cfg: str) -> None:
    """The run that the resume measurement kills."""
    ns = argparse.Namespace(**json.loads(cfg))
    run_dask(ns, Path(ns.model), ns.source, ns.out, ns.workers)


def kill_half_way(args, model: Path, source: str, out: str, workers: int, blocks: int) -> dict:
    import psutil

    cfg = json.dumps({**vars(args), "model": str(model), "source": source, "out": out,
                      "workers": workers, "no_progress": True})
    done = Path(out) / ".useg-run" / "done"

    def count() -> int:  # hidden names are markers being written (atomically)
        return sum(not n.startswith(".") for n in os.listdir(done)) if done.is_dir() else 0

    start = last = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", cfg], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None:
        if count() >= blocks // 2:
            break
        if not args.no_progress and time.perf_counter() - last >= 30:
            last = time.perf_counter()
            print(f"  run to be killed: {count()}/{blocks} blocks done after "
                  f"{last - start:.0f} s (kill at {blocks // 2})", flush=True)
        time.sleep(0.05)
    family = []
    if child.poll() is None:
        family = psutil.Process(child.pid).children(recursive=True)
        os.killpg(child.pid, signal.SIGKILL)
        for p in family:  # any that left the process group
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    child.wait()
    psutil.wait_procs(family, timeout=10)
    return {"killed_after_s": time.perf_counter() - start,
            "blocks_done_at_kill": count(),
            "killed": bool(family)}


def baseline(model: Path, source: str, tile) -> tuple[float, float, np.ndarray]:
    import torch

    from useg.inference.predict import predict
    from useg.io.chunked import as_channels_first, open_array
    from useg.nets.checkpoint import load_model

    torch.set_num_threads(1)
    net = load_model(model)
    arr, meta = open_array(source)
    start, cpu = time.perf_counter(), time.process_time()
    image = as_channels_first(arr, meta["axes"], net.config.ndim)
    probs = predict(net, image, tile=tile, device="cpu")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, np.argmax(probs, axis=0).astype(np.uint8)


def peak_rss(memory: dict) -> float:
    """A worker's peak RSS in MB: the kernel's high-water mark where there is one (the 0.1 s
    sampler can miss a short spike)."""
    return max(memory["peak_rss_MB_psutil"], memory.get("peak_rss_MB_vmhwm") or 0.0)


def results_key(args) -> str:
    key = f"quick-{args.ndim}d" if args.quick else f"{args.ndim}d-{args.size}"
    return key + ("-malloc-trim-dask" if args.malloc_trim == "dask" else "")


def merge_results(path: Path, key: str, entry: dict) -> None:
    """Add ``entry`` under ``key``; entries of earlier versions (3D only: ``quick``,
    ``size<N>``) are renamed to the keys this version gives them."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {}
    for k, v in old.items():
        if k == "quick":
            k = "quick-3d"
        elif k.startswith("size") and k[4:].isdigit():
            k = f"3d-{k[4:]}"
        merged.setdefault(k, v)
    merged[key] = entry
    write_json(path, merged)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2,
                        help="2: square mosaic, 3: cubic volume (default 2)")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the image (default: the smallest multiple of the chunk "
                             "holding at least 8.0e9 bytes: 90112 in 2D, 2048 in 3D)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2048^2 (16 blocks) in 2D, 96^3 (8 blocks) in 3D")
    parser.add_argument("--width", type=int, default=None,
                        help="U-Net width (default 1 in 2D, 2 in 3D)")
    parser.add_argument("--depth", type=int, default=None,
                        help="U-Net depth (default 1 in 2D, 2 in 3D)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=None,
                        help="input chunk side (default 2048 in 2D, 128 in 3D)")
    parser.add_argument("--tile", type=int, default=None,
                        help="network input tile side (default 528 in 2D, 196 in 3D)")
    parser.add_argument("--block", type=int, default=None,
                        help="block side (default 4096 in 2D, one tile stride in 3D)")
    parser.add_argument("--dir", default="/tmp/useg-scale", help="scratch folder (deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--no-resume", action="store_true", help="skip the kill/resume part")
    parser.add_argument("--malloc-trim", choices=("unset", "dask"), default="unset",
                        help="workers' MALLOC_TRIM_THRESHOLD_: unset (glibc's own behaviour, "
                             "default) or dask's default 65536 (twice the CPU per block)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "scale.json"),
                        help="results file, merged with its earlier entries "
                             "(default bench/results/scale.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    from useg.nets import UNetConfig, halo

    given = {k: getattr(args, k) for k in ("size", "chunk", "tile", "block")}
    for k, v in {**DEFAULTS[args.ndim], **(QUICK[args.ndim] if args.quick else {})}.items():
        if k == "size" or getattr(args, k) is None:
            setattr(args, k, v)
    for k, v in given.items():  # explicit options win over --quick
        if v is not None:
            setattr(args, k, v)
    if args.size is None:
        args.size = default_size(args.ndim, args.chunk)
    if args.block is None:
        cfg = UNetConfig(ndim=args.ndim, width=args.width, depth=args.depth)
        args.block = args.tile - 2 * halo(cfg)[0]
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child)
        return
    counts = [int(w) for w in args.workers.split(",")]

    from useg.io.chunked import open_array

    nd, size = args.ndim, args.size
    npix = size**nd
    unit = "px" if nd == 2 else "vox"
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    wall_start = time.perf_counter()
    phases: dict[str, float] = {}
    entry: dict = {
        "command": command_line(),
        "note": "wall times on a machine shared with other jobs (see load average); CPU "
                "seconds are the steadier measure of the work done; 'voxels' are pixels in 2D",
        "machine": machine_info("dask", "distributed", "zarr"),
        "config": {"ndim": nd, "size": size, "shape": [size] * nd, "chunk": args.chunk,
                   "tile": args.tile, "block": args.block,
                   "network": f"{nd}D U-Net width {args.width} depth {args.depth} valid, "
                              "2 classes",
                   "torch_threads_per_worker": 1,
                   "worker_MALLOC_TRIM_THRESHOLD_": ("unset" if args.malloc_trim == "unset"
                                                     else "dask default (65536)"),
                   "input": "uint8 zarr v3, uncompressed",
                   "output": "uint8 labels (zarr v3, default compressor)"},
    }
    try:
        model = save_tiny_model(scratch / "tiny.safetensors", nd, args.width, args.depth)
        source = f"{scratch}/input.zarr/raw"
        shape_text = "x".join([str(size)] * nd)
        print(f"writing {shape_text} uint8 image ({npix / 1e9:.2f} GB, uncompressed) ...",
              flush=True)
        entry["generate"] = write_image(source, nd, size, args.chunk,
                                        progress=not args.no_progress)
        entry["input_on_disk"] = disk_usage(scratch / "input.zarr")
        print(f"  {entry['input_on_disk']['GB']:.2f} GB on disk in "
              f"{entry['input_on_disk']['files']} files, written in "
              f"{entry['generate']['seconds']:.0f} s", flush=True)
        phases["generate"] = entry["generate"]["seconds"]
        runs: dict[int, list[dict]] = {}
        outputs: dict[int, str] = {}
        for w in counts:
            for r in range(args.repeats):
                out = f"{scratch}/out-{w}.zarr/labels"
                print(f"predicting with {w} worker(s), repeat {r + 1} ...", flush=True)
                t0 = time.perf_counter()
                res = run_dask(args, model, source, out, w)
                phases[f"predict_{w}_workers"] = (phases.get(f"predict_{w}_workers", 0.0)
                                                  + time.perf_counter() - t0)
                res["voxels_per_s"] = res["voxels"] / res["seconds"]
                res["input_MB_per_s"] = npix / res["seconds"] / 1e6
                runs.setdefault(w, []).append(res)
                outputs[w] = out
        entry["runs"] = {str(w): rs for w, rs in runs.items()}
        entry["summary"] = {
            str(w): {"seconds": summary([r["seconds"] for r in rs]),
                     "worker_cpu_seconds": summary([r["worker_cpu_seconds"] for r in rs]),
                     "voxels_per_s": summary([r["voxels_per_s"] for r in rs]),
                     "voxels_per_cpu_s": summary([r["voxels"] / r["worker_cpu_seconds"]
                                                    for r in rs]),
                     # the kernel's high-water mark; the 0.1 s sampler can miss a spike
                     "peak_rss_MB_per_worker": max(peak_rss(m) for r in rs
                                                   for m in r["worker_memory"]),
                     "peak_rss_MB_per_worker_sampled": max(m["peak_rss_MB_psutil"] for r in rs
                                                           for m in r["worker_memory"])}
            for w, rs in runs.items()
        }
        first = counts[0]
        for w in counts[1:]:
            ratios = [a["seconds"] / b["seconds"] for a in runs[first] for b in runs[w]]
            entry["summary"][f"speedup_{w}_vs_{first}_workers"] = summary(ratios)
        entry["output_on_disk_GB"] = {str(w): disk_usage(Path(o).parent)["GB"]
                                      for w, o in outputs.items()}
        print("comparing labels across worker counts ...", flush=True)
        t0 = time.perf_counter()
        entry["checks"] = {"labels_equal_across_worker_counts": all(
            same_labels(outputs[first], outputs[w]) for w in counts[1:])}
        phases["compare_worker_counts"] = time.perf_counter() - t0
        if npix <= 2**27:
            print("single-process predict (peer) ...", flush=True)
            seconds, cpu, peer = baseline(model, source, args.tile)
            entry["single_process_predict"] = {"seconds": seconds, "cpu_seconds": cpu,
                                               "voxels_per_s": npix / seconds}
            entry["checks"]["labels_equal_single_process"] = bool(
                np.array_equal(peer, open_array(outputs[first])[0][:]))
            entry["summary"][f"dask_{first}_worker_vs_single_process_time"] = (
                entry["summary"][str(first)]["seconds"]["median"] / seconds)
            entry["summary"][f"dask_{first}_worker_vs_single_process_cpu"] = float(np.median(
                [r["worker_cpu_seconds"] for r in runs[first]])) / cpu
        if not args.no_resume:
            w = max(counts)
            out = f"{scratch}/resume.zarr/labels"
            total = runs[w][0]["blocks"]
            print(f"resume: kill a {w}-worker run half-way, then restart ...", flush=True)
            t0 = time.perf_counter()
            killed = kill_half_way(args, model, source, out, w, total)
            phases["run_killed_half_way"] = time.perf_counter() - t0
            print(f"  killed after {killed['killed_after_s']:.0f} s with "
                  f"{killed['blocks_done_at_kill']}/{total} blocks done; restarting ...",
                  flush=True)
            first_block = []
            t0 = time.perf_counter()
            res = run_dask(args, model, source, out, w, overwrite=False,
                           on_block=lambda _: first_block.append(time.perf_counter() - t0)
                           if not first_block else None)
            phases["resume"] = time.perf_counter() - t0
            full = float(np.median([r["seconds"] for r in runs[w]]))
            expected = full * res["computed"] / total
            entry["resume"] = {
                **killed, "blocks_total": total, "blocks_skipped": res["skipped"],
                "blocks_recomputed": res["computed"], "resume_seconds": res["seconds"],
                "cluster_start_and_warm_up_s": res["cluster_start_and_warm_up_s"],
                "first_block_after_s": first_block[0] if first_block else None,
                "expected_seconds_from_full_run": expected,
                "resume_vs_expected": res["seconds"] / expected if expected else None,
                "worker_memory": res["worker_memory"],
            }
            print("comparing resumed labels ...", flush=True)
            t0 = time.perf_counter()
            entry["checks"]["resumed_labels_equal"] = same_labels(out, outputs[w])
            phases["compare_resumed"] = time.perf_counter() - t0
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    phases["total"] = time.perf_counter() - wall_start
    entry["wall_seconds"] = phases

    print()
    disk = entry["input_on_disk"]
    print(f"image {shape_text} uint8: {disk['GB']:.2f} GB on disk ({disk['files']} files), "
          f"chunk {args.chunk}, tile {args.tile}, block {args.block}, "
          f"written at {entry['generate']['MB_per_s']:.0f} MB/s; {entry['config']['network']}")
    print(f"{'workers':>8} {'seconds (med)':>14} {'M' + unit + '/s':>8} {'input MB/s':>11} "
          f"{'worker CPU s':>13} {'M' + unit + '/CPU s':>11} {'peak RSS/worker MB':>19}")
    for w in counts:
        s = entry["summary"][str(w)]
        med = s["seconds"]["median"]
        print(f"{w:>8} {med:>14.1f} {npix / med / 1e6:>8.2f} {npix / med / 1e6:>11.2f} "
              f"{s['worker_cpu_seconds']['median']:>13.1f} "
              f"{s['voxels_per_cpu_s']['median'] / 1e6:>11.2f} "
              f"{s['peak_rss_MB_per_worker']:>19.0f}")
    for key, value in entry["summary"].items():
        if key.startswith("speedup") or key.startswith("dask_"):
            v = value["median"] if isinstance(value, dict) else value
            print(f"{key}: {v:.2f}")
    if "single_process_predict" in entry:
        sp = entry["single_process_predict"]
        print(f"single-process predict: {sp['seconds']:.1f} s ({sp['cpu_seconds']:.1f} CPU s)")
    if "resume" in entry:
        r = entry["resume"]
        print(f"resume: killed after {r['killed_after_s']:.1f} s with "
              f"{r['blocks_done_at_kill']}/{r['blocks_total']} blocks done; restart recomputed "
              f"{r['blocks_recomputed']} in {r['resume_seconds']:.1f} s "
              f"(expected {r['expected_seconds_from_full_run']:.1f} s from the full run; "
              f"plus cluster start and warm-up {r['cluster_start_and_warm_up_s']:.1f} s; "
              f"peak RSS/worker {max(peak_rss(m) for m in r['worker_memory']):.0f} MB)")
    print("checks:", entry["checks"])
    print("wall seconds:", {k: round(v, 1) for k, v in phases.items()})
    key = results_key(args)
    merge_results(Path(args.output), key, entry)
    print(f"wrote {args.output} [{key}]")


if __name__ == "__main__":
    main()

"""Block-parallel prediction of a large zarr volume with dask: 1 vs 2 local workers, and resume.

Run: .venv/bin/python bench/scale.py [--size 2048] [--quick] [--workers 1,2] [--repeats N]

What it does:

1. writes a uint8 zarr volume of ``size^3`` voxels (2048^3 = 8.6 GB by default), chunk by chunk,
   with cheap synthetic content (a checkerboard of 16-voxel cubes plus low-amplitude noise);
2. predicts it with a tiny 3D U-Net (width 2, depth 2, valid padding; fixed normalisation, so no
   statistics pass over the volume) into a uint8 label array, with a ``distributed.LocalCluster``
   of 1 and of 2 single-threaded worker processes (one torch thread each), ``--repeats`` times;
   reports wall time, voxels/s and input MB/s, and each worker's peak RSS (psutil, sampled);
3. starts the 2-worker run in a child process, kills it (SIGKILL, whole process group) when
   about half the blocks are marked done, restarts it and measures how long the rest takes
   against the uninterrupted run, and checks the resumed labels equal the uninterrupted ones.

``--quick`` is a smoke run (96^3, 8 blocks). The full size takes hours on two cores with this
network (about 1-2 Mvoxel/s per worker). For sizes up to 512 the single-process
``useg.predict.predict`` is also timed, and its labels compared with the dask result.
Results: bench/results/scale.json (one entry per size, merged with earlier entries).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "scale.json"


# ----------------------------------------------------------------------------------------------
# data and model


def write_volume(spec: str, size: int, chunk: int, seed: int = 0) -> dict:
    """A uint8 volume written chunk by chunk (2 threads: zarr compresses without the GIL)."""
    from useg.chunked import create_array

    arr = create_array(spec, (size,) * 3, np.uint8, (chunk,) * 3, spacing=(1.0, 1.0, 1.0),
                       axes="ZYX", overwrite=True)
    noise = np.random.default_rng(seed).integers(0, 32, (chunk,) * 3, dtype=np.uint8)
    n = math.ceil(size / chunk)

    def one(idx):
        lo = [i * chunk for i in idx]
        hi = [min(size, v + chunk) for v in lo]
        z, y, x = (np.arange(a, b)[:, None, None] // 16 for a, b in zip(lo, hi, strict=True))
        cube = ((z + y.transpose(1, 0, 2) + x.transpose(1, 2, 0)) % 2).astype(np.uint8) * 160
        shift = int(sum(idx)) % chunk
        block = cube + np.roll(noise, shift, axis=0)[: hi[0] - lo[0], : hi[1] - lo[1],
                                                    : hi[2] - lo[2]] + 48
        arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = block
        return block.nbytes

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        written = sum(pool.map(one, np.ndindex(n, n, n)))
    seconds = time.perf_counter() - start
    return {"bytes": written, "seconds": seconds, "MB_per_s": written / seconds / 1e6}


def save_tiny_model(path: Path) -> Path:
    import torch

    from useg.checkpoint import save_model
    from useg.nets import UNet, UNetConfig

    net = UNet(UNetConfig(ndim=3, width=2, depth=2, classes=2)).eval()
    net.reset_parameters(torch.Generator().manual_seed(0))
    meta = {"normalization": {"mode": "fixed", "offset": [0.0], "scale": [255.0]}}
    return save_model(net, path, meta)


# ----------------------------------------------------------------------------------------------
# peak memory of the workers


def _start_sampler(dask_worker, period: float = 0.1) -> int:
    """Sample this worker's RSS in a thread; imports torch and useg first, so that the timed run
    measures prediction rather than imports. (State lives on the worker object: the function is
    shipped by value, with its own copy of this module's globals.)"""
    import psutil

    import useg.dask_predict  # noqa: F401
    import useg.predict  # noqa: F401

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
    import resource

    state = dask_worker._useg_rss
    state["stop"] = True
    return {"peak_rss_MB_psutil": state["peak"] / 1e6,
            "ru_maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


# ----------------------------------------------------------------------------------------------
# runs


def run_dask(args, model: Path, source: str, out: str, workers: int, overwrite: bool = True,
             on_block=None) -> dict:
    from distributed import Client, LocalCluster

    from useg.dask_predict import predict_dask

    records = []

    def collect(record):
        records.append(record)
        if on_block is not None:
            on_block(record)

    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
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

    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, "--child", cfg], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None:
        if count() >= blocks // 2:
            break
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

    from useg.checkpoint import load_model
    from useg.chunked import as_channels_first, open_array
    from useg.predict import predict

    torch.set_num_threads(1)
    net = load_model(model)
    arr, meta = open_array(source)
    start, cpu = time.perf_counter(), time.process_time()
    probs = predict(net, as_channels_first(arr, meta["axes"], 3), tile=tile, device="cpu")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, np.argmax(probs, axis=0).astype(np.uint8)


def summarize(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)),
            "max": float(max(values)), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="edge of the cubic volume")
    parser.add_argument("--quick", action="store_true", help="smoke run: 96^3, 8 blocks")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=128, help="input chunk edge")
    parser.add_argument("--tile", type=int, default=196, help="network input tile edge")
    parser.add_argument("--block", type=int, default=None,
                        help="block edge (default: one tile stride)")
    parser.add_argument("--dir", default="/tmp/useg-scale", help="scratch folder (deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--no-resume", action="store_true", help="skip the kill/resume part")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    if args.quick:
        args.size, args.tile, args.chunk = 96, 100, 32
    counts = [int(w) for w in args.workers.split(",")]
    import dask
    import distributed
    import torch
    import zarr

    from useg.chunked import open_array
    from useg.nets import UNetConfig, halo

    if args.block is None:
        args.block = args.tile - 2 * halo(UNetConfig(ndim=3, width=2, depth=2))[0]
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    entry: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "note": "wall times on a machine shared with other jobs (see load average); CPU "
                "seconds are the steadier measure of the work done",
        "machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
            "load_average_at_start": list(os.getloadavg()),
        },
        "config": {"size": args.size, "chunk": args.chunk, "tile": args.tile,
                   "block": args.block, "network": "3D U-Net width 2 depth 2 valid, 2 classes",
                   "torch_threads_per_worker": 1, "output": "uint8 labels (zarr v3)"},
    }
    try:
        model = save_tiny_model(scratch / "tiny.safetensors")
        source = f"{scratch}/input.zarr/raw"
        print(f"writing {args.size}^3 uint8 volume ...", flush=True)
        entry["generate"] = write_volume(source, args.size, args.chunk)
        nbytes = args.size**3
        runs: dict[int, list[dict]] = {}
        outputs: dict[int, str] = {}
        for w in counts:
            for r in range(args.repeats):
                out = f"{scratch}/out-{w}.zarr/labels"
                print(f"predicting with {w} worker(s), repeat {r + 1} ...", flush=True)
                res = run_dask(args, model, source, out, w)
                res["voxels_per_s"] = res["voxels"] / res["seconds"]
                res["input_MB_per_s"] = nbytes / res["seconds"] / 1e6
                runs.setdefault(w, []).append(res)
                outputs[w] = out
        entry["runs"] = {str(w): rs for w, rs in runs.items()}
        entry["summary"] = {
            str(w): {"seconds": summarize([r["seconds"] for r in rs]),
                     "worker_cpu_seconds": summarize([r["worker_cpu_seconds"] for r in rs]),
                     "voxels_per_s": summarize([r["voxels_per_s"] for r in rs]),
                     "peak_rss_MB_per_worker": max(m["peak_rss_MB_psutil"]
                                                   for r in rs for m in r["worker_memory"])}
            for w, rs in runs.items()
        }
        first = counts[0]
        for w in counts[1:]:
            ratios = [a["seconds"] / b["seconds"] for a in runs[first] for b in runs[w]]
            entry["summary"][f"speedup_{w}_vs_{first}_workers"] = summarize(ratios)
        labels = {w: open_array(o)[0][:] for w, o in outputs.items()}
        entry["checks"] = {"labels_equal_across_worker_counts": all(
            np.array_equal(labels[first], labels[w]) for w in counts)}
        if args.size <= 512:
            print("single-process predict (peer) ...", flush=True)
            seconds, cpu, peer = baseline(model, source, args.tile)
            entry["single_process_predict"] = {"seconds": seconds, "cpu_seconds": cpu,
                                               "voxels_per_s": nbytes / seconds}
            entry["checks"]["labels_equal_single_process"] = bool(
                np.array_equal(peer, labels[first]))
            entry["summary"][f"dask_{first}_worker_vs_single_process_time"] = (
                entry["summary"][str(first)]["seconds"]["median"] / seconds)
            entry["summary"][f"dask_{first}_worker_vs_single_process_cpu"] = float(np.median(
                [r["worker_cpu_seconds"] for r in runs[first]])) / cpu
        if not args.no_resume:
            w = max(counts)
            out = f"{scratch}/resume.zarr/labels"
            total = runs[w][0]["blocks"]
            print(f"resume: kill a {w}-worker run half-way, then restart ...", flush=True)
            killed = kill_half_way(args, model, source, out, w, total)
            first_block = []
            t0 = time.perf_counter()
            res = run_dask(args, model, source, out, w, overwrite=False,
                           on_block=lambda _: first_block.append(time.perf_counter() - t0)
                           if not first_block else None)
            full = float(np.median([r["seconds"] for r in runs[w]]))
            expected = full * res["computed"] / total
            entry["resume"] = {
                **killed, "blocks_total": total, "blocks_skipped": res["skipped"],
                "blocks_recomputed": res["computed"], "resume_seconds": res["seconds"],
                "cluster_start_and_warm_up_s": res["cluster_start_and_warm_up_s"],
                "first_block_after_s": first_block[0] if first_block else None,
                "expected_seconds_from_full_run": expected,
                "resume_vs_expected": res["seconds"] / expected if expected else None,
            }
            entry["checks"]["resumed_labels_equal"] = bool(
                np.array_equal(open_array(out)[0][:], labels[w]))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"volume {args.size}^3 uint8 ({args.size**3 / 1e9:.2f} GB), tile {args.tile}, "
          f"block {args.block}, written at {entry['generate']['MB_per_s']:.0f} MB/s")
    print(f"{'workers':>8} {'seconds (med)':>14} {'Mvox/s':>8} {'input MB/s':>11} "
          f"{'worker CPU s':>13} {'peak RSS/worker MB':>19}")
    for w in counts:
        s = entry["summary"][str(w)]
        med = s["seconds"]["median"]
        print(f"{w:>8} {med:>14.1f} {nbytes / med / 1e6:>8.2f} {nbytes / med / 1e6:>11.2f} "
              f"{s['worker_cpu_seconds']['median']:>13.1f} "
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
        print(f"resume: killed with {r['blocks_done_at_kill']}/{r['blocks_total']} blocks done; "
              f"restart recomputed {r['blocks_recomputed']} in {r['resume_seconds']:.1f} s "
              f"(expected {r['expected_seconds_from_full_run']:.1f} s from the full run; "
              f"plus cluster start and warm-up {r['cluster_start_and_warm_up_s']:.1f} s)")
    print("checks:", entry["checks"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    allres["quick" if args.quick else f"size{args.size}"] = entry
    RESULTS.write_text(json.dumps(allres, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""Prediction of images larger than one machine, block by block with dask, resumable.

The blocks, and why their result equals :func:`useg.inference.predict.predict` exactly, are in
:mod:`useg.inference.blocks`; this module runs them on a dask scheduler and keeps the run's
record.

Resuming
--------
The run's settings (model checksum, input, tile, block, normalisation...) are kept in
``<output array>/.useg-run/run.json``; a later run with the same settings skips the blocks
marked done and recomputes the rest, and an output written with other settings is refused
unless overwritten.

Workers receive the model file's path and load it themselves; a model object given in Python is
first saved next to the output, which any cluster worker that can write the output can also
read. Outputs are zarr arrays on a file system that all workers share.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, InputError
from useg.inference.blocks import finished_blocks, marker_name, plan_blocks, predict_block
from useg.inference.tiling import plan_tiles
from useg.io import normalize as norm
from useg.io.chunked import as_channels_first, create_array, is_array_spec, open_array, parse_spec
from useg.io.files import read_json, result_paths, write_json
from useg.io.images import read_image
from useg.labels import class_dtype

__all__ = ["local_cluster", "plan_blocks", "predict_dask", "predict_to_store"]

RUN_FORMAT = "useg-dask-predict"
RUN_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _zarr_dir(spec: str) -> Path:
    sp = parse_spec(spec)
    if sp.kind != "zarr":
        raise ConfigError(
            f"{spec}: block-parallel prediction writes zarr arrays (e.g. out.zarr/probs)"
        )
    return sp.container / sp.inner if sp.inner else sp.container


def _read_run(run_dir: Path) -> dict[str, Any] | None:
    """The record of the run that wrote the outputs, or None when there is none (or it is
    unreadable: the outputs are then treated as written by an unknown run)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except InputError:
        return None


# Settings in the order a refusal names them: causes before consequences (a new tile changes
# the stride and hence the block).
_SETTING_ORDER = ("format", "version", "model_sha256", "input", "tile", "halo", "margin", "step",
                  "tta", "precision", "batch_size", "block", "outputs")


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    keys = set(a) | set(b)
    for key in [*(k for k in _SETTING_ORDER if k in keys), *sorted(keys - set(_SETTING_ORDER))]:
        if a.get(key) != b.get(key):
            return key
    return None


def _as_json(obj: Any) -> Any:
    """Tuples to lists, NumPy scalars to numbers: the form a record has after a JSON round trip."""
    if isinstance(obj, dict):
        return {str(k): _as_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_as_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _resolve_scheduler(scheduler: Any, workers: int | None) -> tuple[str, Any, bool]:
    """(kind, client or local scheduler name, whether we own the client)."""
    if scheduler is None:
        try:
            from distributed import default_client

            return "distributed", default_client(), False
        except (ImportError, ValueError):
            return "local", "threads" if (workers or 1) == 1 else "processes", False
    if isinstance(scheduler, str):
        if scheduler in ("threads", "processes", "synchronous", "sync", "single-threaded"):
            return "local", scheduler, False
        if "://" not in scheduler:
            raise ConfigError(
                f"scheduler must be threads, processes, synchronous or an address like "
                f"tcp://host:8786, got {scheduler!r}"
            )
        from distributed import Client

        try:
            return "distributed", Client(scheduler, timeout="60s"), True
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
    from distributed import Client

    if isinstance(scheduler, Client):
        return "distributed", scheduler, False
    if hasattr(scheduler, "scheduler_address"):  # a cluster object such as LocalCluster
        return "distributed", Client(scheduler), True
    raise ConfigError(f"unsupported scheduler {scheduler!r}")


def _run_local(job, todo, name, workers, torch_threads, image, on_result) -> None:
    import dask
    from dask.callbacks import Callback

    class Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            if isinstance(result, dict) and "block" in result:
                on_result(result)

    if name in ("processes",) and torch_threads is None:
        n = workers or os.cpu_count() or 1
        job = {**job, "torch_threads": max(1, (os.cpu_count() or 1) // n)}
    tasks = [
        dask.delayed(predict_block, pure=False)(
            job, idx, image, dask_key_name=f"useg-block-{'-'.join(map(str, idx))}"
        )
        for idx in todo
    ]
    kwargs = {}
    if name == "threads":
        # Each block already runs torch's own thread pool: one block at a time unless asked.
        kwargs["num_workers"] = workers or 1
    elif name == "processes" and workers:
        kwargs["num_workers"] = workers
    with Progress():
        dask.compute(*tasks, scheduler=name, **kwargs)


def _run_distributed(client, job, todo, image, on_result) -> None:
    from distributed import as_completed

    if image is not None:
        image = client.scatter(image, broadcast=True)
    token = hashlib.sha1(job["done_dir"].encode()).hexdigest()[:8]
    keys = [f"useg-block-{token}-{'-'.join(map(str, idx))}-{time.time_ns()}" for idx in todo]
    futures = client.map(predict_block, [job] * len(todo), todo, image=image, key=keys,
                         pure=False)
    try:
        for fut in as_completed(futures):
            on_result(fut.result())
    except BaseException:
        client.cancel(futures)
        raise


def predict_dask(
    model: Any,
    image: Any,
    output: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | None = None,
    block: Sequence[int] | int | None = None,
    tile: Sequence[int] | int | None = None,
    device: str = "cpu",
    scheduler: Any = None,
    workers: int | None = None,
    tta: bool = False,
    precision: str = "auto",
    batch_size: int = 1,
    stats: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    torch_threads: int | None = None,
    zarr_format: int = 3,
    on_block: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Predict a large image block by block with dask, into zarr, resuming unfinished runs.

    The result equals ``useg.inference.predict.predict(model, image, tile=tile, tta=tta, ...)``
    exactly (see :mod:`useg.inference.blocks`), written block by block, so the image can be far
    larger than memory and the work spread over many machines.

    Parameters
    ----------
    model : str, path or UNet
        A model file (sent to workers as a path: they load it themselves), or a network, which
        is first saved beside the output.
    image : str, path or array-like
        An array spec (``volume.zarr/raw``, ``image.ome.zarr``, ``file.h5:/raw``; see
        :mod:`useg.io.chunked`), or an array-like ``(C, *spatial)`` (or ``spatial`` for
        one-channel models); in-memory arrays are sent to every worker.
    output : str or path, optional
        Zarr array spec for the ``(classes, *spatial)`` float32 probabilities.
    labels : str or path, optional
        Zarr array spec for the most likely class per pixel (uint8, or uint16 beyond 255
        classes). At least one of ``output`` and ``labels`` is needed.
    block : int or tuple, optional
        Block size in pixels, rounded up to whole tile strides (default about 256 per axis in
        3D, 2048 in 2D); also the output chunk shape.
    tile : int or tuple, optional
        Input tile as for :func:`useg.inference.predict.predict`; chosen for a CPU memory budget
        when omitted (give it explicitly for GPUs).
    device : str
        Device on each worker (``auto``, ``cpu``, ``cuda``: a worker's own visible GPU).
    scheduler : None, str, distributed.Client or cluster
        ``"threads"``, ``"processes"``, ``"synchronous"``, a scheduler address such as
        ``"tcp://host:8786"``, a ``Client`` or a cluster object. None uses the current
        ``distributed`` client if there is one, else threads (or processes when ``workers > 1``).
    workers : int, optional
        Workers of the local schedulers: threads (default 1: each block already uses torch's
        intra-op threads) or processes (default: one per core).
    tta, precision, batch_size
        As for :func:`useg.inference.predict.predict`. Precision ``auto`` is resolved once, on
        this machine for ``device`` (fp32 when that device is not here), so that every block runs
        in the one precision the run records.
    stats : dict, optional
        Normalisation offsets and scales; computed from the whole image when omitted (one
        strided pass over it), or taken from the interrupted run being resumed.
    overwrite : bool
        Replace outputs written with other settings (they are refused otherwise).
    progress : bool
        Show a progress bar (voxels per second, ETA).
    torch_threads : int, optional
        ``torch.set_num_threads`` on each worker (default: cores / workers for local
        processes, untouched otherwise).
    zarr_format : {2, 3}
        Format of new output stores.
    on_block : callable, optional
        Called on the driver with each finished block's record.

    Returns
    -------
    dict
        ``blocks`` (total), ``computed`` (indices of the blocks run now), ``skipped`` (already
        done), ``seconds``, ``voxels`` (computed now), ``block``, ``tile``, ``outputs``.

    Examples
    --------
    >>> import tempfile
    >>> from useg.nets.unet import UNet
    >>> net = UNet("ronneberger2015", width=2, depth=2)
    >>> img = np.random.default_rng(0).random((1, 150, 120), dtype=np.float32)
    >>> out = os.path.join(tempfile.mkdtemp(), "out.zarr")
    >>> r = predict_dask(net, img, out + "/probs", block=64, tile=60, progress=False)
    >>> r["block"], r["blocks"], len(r["computed"])
    ((80, 80), 4, 4)
    >>> from useg.inference.predict import predict
    >>> bool(np.array_equal(open_array(out + "/probs")[0][:], predict(net, img, tile=60)))
    True
    """
    from useg.nets.checkpoint import load_model, resolve_model, save_model
    from useg.nets.unet import UNet

    started = time.perf_counter()
    if output is None and labels is None:
        raise ConfigError("give output (probabilities) or labels, or both")
    precision = _run_precision(precision, device)
    # Absolute specs: workers run in other folders, and a resumed run may be started elsewhere.
    outputs = {"probabilities": _absolute(output), "labels": _absolute(labels)}
    run_dir = _zarr_dir(outputs["probabilities"] or outputs["labels"]) / ".useg-run"
    for spec in outputs.values():
        if spec is not None:
            _zarr_dir(spec)

    # The model: a file the workers load by path.
    tmp_model = None
    if isinstance(model, UNet):
        net = model.cpu()
        folder = run_dir.parent.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".useg-model-", suffix=".safetensors", dir=folder)
        os.close(fd)
        tmp_model = Path(tmp)
        meta = {k: v for k, v in (getattr(model, "meta", None) or {}).items()
                if k not in ("format", "format_version", "config")}
        save_model(net, tmp_model, meta)
        model_path = tmp_model
    else:
        model_path = resolve_model(model).resolve()
        net = load_model(model_path)
    try:
        return _run(
            net, model_path, tmp_model, image, outputs, run_dir, block=block, tile=tile,
            device=device, scheduler=scheduler, workers=workers, tta=tta, precision=precision,
            batch_size=batch_size, stats=stats, overwrite=overwrite, progress=progress,
            torch_threads=torch_threads, zarr_format=zarr_format, on_block=on_block,
            started=started,
        )
    finally:
        if tmp_model is not None:
            tmp_model.unlink(missing_ok=True)


def _run_precision(precision: str, device: str) -> str:
    """The one precision of a run: ``auto`` resolved here, the others checked."""
    from useg.device import check_precision, resolve_device, resolve_precision

    if str(device).lower() == "cpu":
        return resolve_precision(precision, "cpu")  # warns here, not in a worker's log
    if check_precision(precision) != "auto":
        return precision
    try:
        here = resolve_device(device)
    except ConfigError:
        # The workers' GPUs are not visible from here; fp32 is never emulated.
        return "fp32"
    return resolve_precision("auto", here)


def _absolute(spec: str | os.PathLike | None) -> str | None:
    if spec is None:
        return None
    sp = parse_spec(spec)
    container = sp.container.absolute()
    if not sp.inner:
        return str(container)
    return f"{container}:/{sp.inner}" if sp.kind == "hdf5" else f"{container}/{sp.inner}"


def _run(net, model_path, tmp_model, image, outputs, run_dir, *, block, tile, device, scheduler,
         workers, tta, precision, batch_size, stats, overwrite, progress, torch_threads,
         zarr_format, on_block, started):
    import torch

    from useg.inference.predict import check_image
    from useg.inference.tile_choice import tile_geometry

    cfg = net.config
    # The input, as (C, *spatial) without reading it.
    if isinstance(image, (str, os.PathLike)):
        input_spec = _absolute(image)
        array, meta = open_array(input_spec)
        axes = meta["axes"]
        spacing = meta["spacing"]
        data = None
        view = as_channels_first(array, axes, cfg.ndim)
        described = {"spec": input_spec, "shape": list(array.shape), "dtype": str(array.dtype)}
    else:
        input_spec, axes, spacing, data = None, None, None, image
        view = as_channels_first(image, None, cfg.ndim)
        described = {"spec": None, "shape": list(image.shape), "dtype": str(image.dtype)}
    try:
        check_image(net, view)
    except InputError as exc:
        raise InputError(f"{input_spec or 'image'}: {exc}") from None
    if spacing is not None and len(spacing) != cfg.ndim:
        spacing = None
    spatial = tuple(view.shape[1:])
    tile, h, margin, step = tile_geometry(net, spatial, tile, torch.device("cpu"), tta)
    tiles = plan_tiles(spatial, tile, h, margin, step)
    blocks = plan_blocks(tiles, block)
    classes = cfg.classes
    label_dtype = class_dtype(classes)

    model_sha = _sha256(model_path)
    record = _as_json({
        "format": RUN_FORMAT, "version": RUN_VERSION, "model_sha256": model_sha,
        "input": described, "tile": tile, "halo": h, "margin": margin, "step": step,
        "block": blocks.block, "tta": bool(tta), "precision": precision,
        "batch_size": int(batch_size), "outputs": outputs,
    })
    previous = None if overwrite else _read_run(run_dir)
    resumable = previous is not None and _first_difference(
        {k: v for k, v in previous.items() if k != "stats"}, record) is None
    if resumable and stats is not None and _as_json(stats) != previous.get("stats"):
        resumable = False
    if resumable:
        for spec in outputs.values():
            if spec is not None:
                try:
                    open_array(spec)
                except InputError:
                    resumable = False
    if resumable:
        stats = previous["stats"]
    else:
        exists = []
        for spec in outputs.values():
            if spec is None:
                continue
            try:
                open_array(spec)
                exists.append(spec)
            except InputError:
                pass
        if exists and not overwrite:
            why = "no record of the run that wrote it"
            if previous is not None:
                key = _first_difference(
                    {k: v for k, v in previous.items() if k != "stats"}, record) or "stats"
                why = f"written with a different {key}"
            raise ConfigError(
                f"{exists[0]}: already exists, {why}; pass overwrite (--overwrite) to replace "
                "it, or choose another output"
            )
        if stats is None:
            stats = norm.image_stats(view, (getattr(net, "meta", None) or {}).get("normalization"))
        spatial_axes = "ZYX"[3 - cfg.ndim:]
        if outputs["probabilities"]:
            create_array(outputs["probabilities"], (classes, *spatial), np.float32,
                         (classes, *blocks.block), spacing, axes="C" + spatial_axes,
                         fill_value=float("nan"), zarr_format=zarr_format, overwrite=True)
        if outputs["labels"]:
            create_array(outputs["labels"], spatial, label_dtype, blocks.block, spacing,
                         axes=spatial_axes, fill_value=0, zarr_format=zarr_format,
                         overwrite=True)
        (run_dir / "done").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "run.json", {**record, "stats": _as_json(stats)})
    model_file = str(model_path)
    if tmp_model is not None:
        kept = run_dir / "model.safetensors"
        os.replace(tmp_model, kept)
        model_file = str(kept)

    done_dir = run_dir / "done"
    finished = finished_blocks(done_dir)
    everything = list(blocks.indices())
    todo = [idx for idx in everything if marker_name(idx) not in finished]
    region_voxels = {idx: math.prod(r.stop - r.start for r in blocks.region(idx))
                     for idx in everything}
    job = {
        "model": model_file, "input": input_spec, "axes": axes, "blocks": blocks,
        "tile": tile, "device": str(device), "precision": precision, "tta": bool(tta),
        "batch_size": int(batch_size), "stats": stats, "done_dir": str(done_dir),
        "probabilities": outputs["probabilities"], "labels": outputs["labels"],
        "torch_threads": torch_threads,
    }
    computed: list[tuple[int, ...]] = []
    total = sum(region_voxels.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - sum(region_voxels[i] for i in todo),
                   unit="vox", unit_scale=True, desc="predict", smoothing=0.1)

    def on_result(result: dict[str, Any]) -> None:
        idx = tuple(result["block"])
        if not result.get("skipped"):
            computed.append(idx)
        if bar is not None:
            bar.update(region_voxels[idx])
            bar.set_postfix_str(f"{len(everything) - len(todo) + len(computed)}/"
                                f"{len(everything)} blocks", refresh=False)
        if on_block is not None:
            on_block(result)

    try:
        if todo:
            kind, sched, own = _resolve_scheduler(scheduler, workers)
            try:
                if kind == "local":
                    _run_local(job, todo, sched, workers, torch_threads, data, on_result)
                else:
                    _run_distributed(sched, job, todo, data, on_result)
            finally:
                if own:
                    sched.close()
    finally:
        if bar is not None:
            bar.close()
    return {
        "blocks": len(everything),
        "computed": sorted(computed),
        "skipped": len(everything) - len(todo),
        "seconds": time.perf_counter() - started,
        "voxels": sum(region_voxels[i] for i in computed),
        "block": blocks.block,
        "block_counts": blocks.counts,
        "tile": tuple(tile),
        "outputs": outputs,
    }


# ----------------------------------------------------------------------------------------------
# useg predict --dask: a local cluster, and one input into one zarr store


def local_cluster(workers: int) -> Any:
    """A ``distributed.LocalCluster`` of ``workers`` single-threaded worker processes, with
    glibc's allocator left as it is.

    dask's nanny exports ``MALLOC_TRIM_THRESHOLD_=65536`` to its workers (and into this
    process's environment); it also freezes glibc's mmap threshold, so every large array is
    mapped and unmapped afresh: measured, each block then costs about twice the CPU time
    (bench/scale.py).
    """
    import dask
    from distributed import LocalCluster

    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0")


def predict_to_store(
    source: str | os.PathLike,
    out: str | os.PathLike,
    model: Any,
    *,
    write_probabilities: bool = True,
    scheduler: Any = None,
    workers: int | None = None,
    torch_threads: int | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Predict one image or volume into the zarr store ``out`` (``useg predict --dask``).

    ``source`` is a chunked array spec (``vol.zarr/raw``, ``image.ome.zarr``, ``file.h5:/raw``)
    or an image file, which is read whole. The store receives ``out/probs`` (unless
    ``write_probabilities`` is False) and ``out/labels`` (:func:`useg.io.files.result_paths`).
    Without a ``scheduler``, more than one worker starts a :func:`local_cluster` of that many
    processes (and ``torch_threads`` defaults to cores / workers), closed at the end. Other
    arguments go to :func:`predict_dask`, whose summary is returned.
    """
    source = str(source)
    image: Any = source
    if not is_array_spec(source):
        image, _ = read_image(source)  # an ordinary image file is read whole
    out = str(out)
    results = result_paths(out, None, probabilities=write_probabilities)
    if parse_spec(out).kind != "zarr":
        raise InputError(f"{out}: with --dask, --out is a zarr store (e.g. result.zarr)")
    cluster = None
    if scheduler is None and workers and workers > 1:
        cluster = scheduler = local_cluster(workers)
        if torch_threads is None:
            torch_threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        return predict_dask(
            model, image, results.get("probabilities"), labels=results["labels"],
            scheduler=scheduler, workers=workers, torch_threads=torch_threads, **kwargs,
        )
    finally:
        if cluster is not None:
            cluster.close()

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import (
    ConfigError,
    InputError,
    OutputError,
    UsegError,
    check_choice,
    one_line,
    require,
)
from useg.inference.blocks import (
    BlockPlan,
    finished_blocks,
    marker_name,
    plan_blocks,
    predict_block,
)
from useg.inference.tiling import check_batch_size, plan_tiles
from useg.io import normalize as norm
from useg.io.chunked import as_channels_first, create_array, is_array_spec, open_array, parse_spec
from useg.io.files import (
    check_output_folder,
    make_folder,
    read_json,
    remove_stale_temporaries,
    result_paths,
    write_error,
    write_json,
)
from useg.io.images import UNIT, read_image
from useg.io.ome import fill_levels, require_writer
from useg.labels import class_dtype
from useg.nets.checkpoint import operating_threshold

__all__ = ["local_cluster", "plan_blocks", "predict_dask", "predict_to_store"]

RUN_FORMAT = "useg-dask-predict"
RUN_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_sha256(array: Any) -> str:
    """The checksum of an in-memory image's values (in 64 MiB pieces of a contiguous array, or
    a copy of one plane at a time): what tells a resumed run that it is given the same image,
    when no file names it."""
    h = hashlib.sha256()
    a = np.asarray(array)
    if a.flags.c_contiguous:
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.size, 1 << 26):  # no copy, 64 MiB at a time
            h.update(flat[start:start + (1 << 26)])
    else:
        for index in np.ndindex(a.shape[:-2]):  # a copy of one plane at a time
            h.update(np.ascontiguousarray(a[index]).tobytes())
    return h.hexdigest()


def _stored_state(spec: str) -> str | None:
    """The checksum of the names, sizes and modification times of the files that hold the
    array ``spec`` (its zarr folder, or its HDF5 file): what tells a resumed run that the
    input was rewritten since, without reading it. None when no local file holds it."""
    sp = parse_spec(spec)
    root = sp.container if sp.kind == "hdf5" else _zarr_dir(spec)
    if not root.exists():
        return None
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
                 .encode())
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


_LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "sync", "single-threaded")


def _check_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler :func:`_resolve_scheduler` cannot use, without connecting to it:
    checked before anything is created, so that a bad one leaves nothing behind."""
    if scheduler is None or (isinstance(scheduler, str) and scheduler in _LOCAL_SCHEDULERS):
        return
    if isinstance(scheduler, str):
        if "://" not in scheduler:
            raise ConfigError(
                f"scheduler (--scheduler) must be threads, processes, synchronous or an "
                f"address like tcp://host:8786, got {scheduler!r}"
            )
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ConfigError(f"the dask scheduler at {scheduler} needs the distributed "
                              "package: pip install useg[scale]") from None
        return
    try:
        from distributed import Client
    except ImportError:
        Client = None  # noqa: N806
    if not (Client is not None and isinstance(scheduler, Client)
            or hasattr(scheduler, "scheduler_address")):  # a cluster object such as LocalCluster
        raise ConfigError(f"unsupported scheduler {scheduler!r}")


def _resolve_scheduler(scheduler: Any, workers: int | None) -> tuple[str, Any, bool]:
    """(kind, client or local scheduler name, whether we own the client)."""
    _check_scheduler(scheduler)
    if workers is not None and scheduler is not None and scheduler not in ("threads",
                                                                            "processes"):
        # The synchronous scheduler runs one block at a time; a cluster has its own workers.
        raise ConfigError(f"--workers {workers}: the {scheduler!r} scheduler does not take a "
                          "number of workers (only threads and processes do); leave it out")
    if scheduler is None:
        try:
            from distributed import default_client

            return "distributed", default_client(), False
        except (ImportError, ValueError):
            return "local", "threads" if (workers or 1) == 1 else "processes", False
    if isinstance(scheduler, str):
        if scheduler in _LOCAL_SCHEDULERS:
            return "local", scheduler, False
        from distributed import Client

        try:
            return "distributed", Client(scheduler, timeout="60s"), True
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
    from distributed import Client

    if isinstance(scheduler, Client):
        return "distributed", scheduler, False
    return "distributed", Client(scheduler), True  # a cluster object such as LocalCluster


def _run_local(job, todo, name, workers, torch_threads, image, on_result) -> None:
    dask = require("dask", "scale", "block-parallel prediction (--dask)")
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
    memory_gib: float | None = None,
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
    spacing: Sequence[float] | None = None,
    unit: str | None = UNIT,
    name: str = "image",
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
        Zarr array spec for the ``(classes, *spatial)`` float32 probabilities. An OME-Zarr
        image (``result.ome.zarr``) gets a pyramid (:mod:`useg.io.ome`), filled once every
        block is done.
    labels : str or path, optional
        Zarr array spec for the most likely class per pixel (uint8, or uint16 beyond 255
        classes); in an OME-Zarr store, a label image such as ``result.ome.zarr/labels/classes``
        (with a pyramid of modes). At least one of ``output`` and ``labels`` is needed.
    block : int or tuple, optional
        Block size in pixels, rounded up to whole tile strides (default about 256 per axis in
        3D, 2048 in 2D); also the output chunk shape.
    tile : int or tuple, optional
        Input tile as for :func:`useg.inference.predict.predict`; chosen for a CPU memory budget
        when omitted (give it explicitly for GPUs).
    memory_gib : float, optional
        That budget, in GiB, for each worker's forward pass, as for
        :func:`useg.inference.predict.predict` (instead of ``tile``).
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
    spacing, unit
        Voxel size and its unit of an in-memory image, written to the outputs (an array spec
        brings its own; None: unknown, OME-Zarr outputs then name no unit).
    name : str
        What messages call an in-memory image (e.g. the file it was read from).

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
    >>> folder = tempfile.TemporaryDirectory()
    >>> out = os.path.join(folder.name, "out.zarr")
    >>> r = predict_dask(net, img, out + "/probs", block=64, tile=60, precision="fp32",
    ...                  progress=False)
    >>> r["block"], r["blocks"], len(r["computed"])
    ((80, 80), 4, 4)
    >>> from useg.inference.predict import predict
    >>> whole = predict(net, img, tile=60, precision="fp32")
    >>> # The same numbers; bit for bit when the torch threads match (they set the sums' order).
    >>> float(np.abs(open_array(out + "/probs")[0][:] - whole).max()) < 1e-6
    True
    >>> folder.cleanup()
    """
    started = time.perf_counter()
    if output is None and labels is None:
        raise ConfigError("give output (probabilities) or labels, or both")
    # The settings are checked before anything is created: a bad one leaves nothing behind.
    _check_scheduler(scheduler)
    if workers is not None and (not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ConfigError(f"workers (--workers) must be a positive integer, got {workers!r}")
    check_choice("zarr_format", zarr_format, (2, 3))
    check_batch_size(batch_size)
    if memory_gib is not None:
        import torch

        from useg.inference.tile_choice import memory_budget

        memory_budget(memory_gib, tile, torch.device("cpu"))  # each worker's tile choice
    precision = _run_precision(precision, device)
    # Absolute specs: workers run in other folders, and a resumed run may be started elsewhere.
    outputs = {"probabilities": _absolute(output), "labels": _absolute(labels)}
    run_dir = _zarr_dir(outputs["probabilities"] or outputs["labels"]) / ".useg-run"
    for spec in outputs.values():
        if spec is not None:
            _zarr_dir(spec)
    settings = _Settings(
        outputs, run_dir, block=block, tile=tile, memory_gib=memory_gib, device=device,
        scheduler=scheduler,
        workers=workers, tta=tta, precision=precision, batch_size=batch_size, stats=stats,
        overwrite=overwrite, progress=progress, torch_threads=torch_threads,
        zarr_format=zarr_format, on_block=on_block, spacing=spacing, unit=unit, name=name,
    )
    net, model_path, tmp_model = _model_for_workers(model, run_dir.parent.parent)
    try:
        return _run(net, model_path, tmp_model, image, settings, started)
    finally:
        if tmp_model is not None:
            tmp_model.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Settings:
    """The settings of one :func:`predict_dask` call (see its parameters), checked."""

    outputs: dict[str, str | None]  # absolute specs of "probabilities" and "labels"
    run_dir: Path  # the run's record: <output array>/.useg-run
    block: Sequence[int] | int | None
    tile: Sequence[int] | int | None
    memory_gib: float | None
    device: str
    scheduler: Any
    workers: int | None
    tta: bool
    precision: str  # resolved: the one precision of every block
    batch_size: int
    stats: dict[str, Any] | None
    overwrite: bool
    progress: bool
    torch_threads: int | None
    zarr_format: int
    on_block: Callable[[dict[str, Any]], None] | None
    spacing: Sequence[float] | None  # of an in-memory image
    unit: str | None
    name: str  # of an in-memory image, in messages


def _model_ndim(model: Any) -> int:
    """The spatial dimensionality of a network, or of a model file from its header."""
    from useg.nets.checkpoint import model_info, resolve_model
    from useg.nets.unet import UNet

    if isinstance(model, UNet):
        return model.config.ndim
    return int(model_info(resolve_model(model))["config"]["ndim"])


def _model_for_workers(model: Any, folder: Path) -> tuple[Any, Path, Path | None]:
    """The network, the model file the workers load, and that file again when it is a
    temporary one: a network given in Python is saved in ``folder``, where any worker that can
    write the output can also read it."""
    from useg.nets.checkpoint import load_model, resolve_model, save_model
    from useg.nets.unet import UNet

    if not isinstance(model, UNet):
        model_path = resolve_model(model).resolve()
        return load_model(model_path), model_path, None
    net = model.cpu()
    make_folder(folder)
    fd, tmp = tempfile.mkstemp(prefix=".useg-model-", suffix=".safetensors", dir=folder)
    os.close(fd)
    meta = {k: v for k, v in (getattr(model, "meta", None) or {}).items()
            if k not in ("format", "format_version", "config")}
    save_model(net, Path(tmp), meta)
    return net, Path(tmp), Path(tmp)


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


# ----------------------------------------------------------------------------------------------
# One run: plan, resume or start, compute the blocks left


def _run(net, model_path: Path, tmp_model: Path | None, image: Any, s: _Settings,
         started: float) -> dict[str, Any]:
    """Plan the blocks, resume the recorded run or start a new one, compute the blocks not
    done yet; returns :func:`predict_dask`'s summary."""
    source = _open_input(image, net, s)
    geometry = _plan(net, source, s)
    record = _run_record(model_path, source, geometry, s)
    # The scheduler is reached before the outputs are created: one that cannot be reached
    # leaves no run behind.
    scheduler = _resolve_scheduler(s.scheduler, s.workers)
    try:
        stats = _prepare_outputs(net, source, geometry, record, s)
        model_file = _kept_model(model_path, tmp_model, s.run_dir)
        job = {
            "model": model_file, "input": source.spec, "axes": source.axes,
            "blocks": geometry.blocks, "tile": geometry.tile, "device": str(s.device),
            "precision": s.precision, "tta": bool(s.tta), "batch_size": int(s.batch_size),
            "stats": stats, "done_dir": str(s.run_dir / "done"),
            "probabilities": s.outputs["probabilities"], "labels": s.outputs["labels"],
            "torch_threads": s.torch_threads,
            "threshold": operating_threshold(getattr(net, "meta", {})),
        }
        remove_stale_temporaries([s.run_dir])  # of a run killed earlier (kill -9)
        try:
            summary = _compute_blocks(job, source.data, geometry, s, started, scheduler)
            _fill_pyramids(s, bool(summary["computed"]))
        except (UsegError, OSError, KeyboardInterrupt) as exc:
            raise _resumable_failure(exc, s, geometry.blocks, source.spec) from exc
    finally:
        _, client, own = scheduler
        if own:
            client.close()
    summary["seconds"] = time.perf_counter() - started
    return summary


def _fill_pyramids(s: _Settings, computed_now: bool) -> None:
    """Fill the lower levels of OME-Zarr outputs from their level 0, once every block is done:
    again when blocks were computed now or when the run that computed them stopped before its
    levels were marked filled."""
    marker = s.run_dir / "levels.json"
    if not computed_now and marker.is_file():
        return
    marker.unlink(missing_ok=True)
    filled = {}
    for kind, method in (("probabilities", "mean"), ("labels", "mode")):
        if s.outputs[kind] is not None:
            filled[kind] = fill_levels(s.outputs[kind], method)
    write_json(marker, {"levels_filled": filled})


def _resumable_failure(exc: BaseException, s: _Settings, blocks: BlockPlan,
                       spec: str | None) -> BaseException:
    """``exc``, of a run stopped after its outputs and record were written, as one line that
    says how much is done and that the same command resumes the run; a fault of the input
    (``spec``, None for an in-memory array) names it instead, since a rerun would meet it again."""
    if isinstance(exc, InputError):
        return InputError(f"{spec or s.name}: {exc}")
    try:
        done = len(finished_blocks(s.run_dir / "done"))
    except OSError:
        done = 0
    total = math.prod(blocks.counts)
    hint = (f"{done} of {total} blocks are done in {s.run_dir.parent}; rerun the same command "
            "to resume")
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt(hint)
    if isinstance(exc, OSError):
        text = (str(write_error(exc.filename or s.run_dir.parent, exc)) if exc.errno
                else one_line(exc))
        return OutputError(f"{text}; {hint}")
    return type(exc)(f"{exc}; {hint}")


@dataclass(frozen=True)
class _Input:
    """The input image, opened as ``(C, *spatial)`` without reading it."""

    spec: str | None  # absolute array spec; None for an in-memory array
    axes: str | None
    spacing: tuple[float, ...] | None
    unit: str | None  # of the spacing; None when unknown
    data: Any  # the in-memory array sent to the workers; None for a spec
    view: Any  # channels first
    described: dict[str, Any]  # as the run's record names it
    origin: tuple[float, ...] | None = None  # of an OME-Zarr input: where its voxel 0 lies

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.view.shape[1:])


def _open_input(image: Any, net, s: _Settings) -> _Input:
    """``image`` (a spec or an array-like, whose voxel size ``s`` gives) opened for ``net``;
    raises :class:`~useg.errors.InputError` naming it when the network cannot predict it."""
    from useg.inference.predict import check_image

    ndim = net.config.ndim
    if isinstance(image, (str, os.PathLike)):
        spec = _absolute(image)
        array, meta = open_array(spec)
        axes, spacing, unit, data = meta["axes"], meta["spacing"], meta.get("unit"), None
        origin = meta.get("origin")
        try:
            view = as_channels_first(array, axes, ndim)
        except (InputError, ConfigError) as exc:  # the axes the file states
            raise InputError(f"{spec}: {exc} for this {ndim}D model") from None
        # The files' state too: a run resumed on an input rewritten since it began would
        # join blocks of two images.
        described = {"spec": spec, "shape": list(array.shape), "dtype": str(array.dtype),
                     "stored": _stored_state(spec)}
    else:
        spec, axes, data, origin = None, None, image, None
        spacing = None if s.spacing is None else tuple(float(v) for v in s.spacing)
        unit = s.unit if spacing is not None else None
        try:
            view = as_channels_first(image, None, ndim)
        except InputError as exc:
            raise InputError(f"{s.name}: {exc} for this {ndim}D model") from None
        # No file names it: its values do, or another image of this shape would resume the
        # run (and be handed the first one's result).
        described = {"spec": None, "shape": list(image.shape), "dtype": str(image.dtype),
                     "sha256": _content_sha256(image)}
    try:
        check_image(net, view)
    except InputError as exc:
        raise InputError(f"{spec or s.name}: {exc}") from None
    if spacing is not None and len(spacing) != ndim:
        spacing = unit = origin = None
    return _Input(spec, axes, spacing, unit, data, view, described, origin)


@dataclass(frozen=True)
class _Geometry:
    """The overlap tiles of the whole image (as ``predict`` would use them) and its blocks."""

    tile: Any
    halo: Any
    margin: Any
    step: Any
    blocks: BlockPlan


def _plan(net, source: _Input, s: _Settings) -> _Geometry:
    import torch

    from useg.inference.tile_choice import tile_geometry

    tile, h, margin, step = tile_geometry(net, source.spatial, s.tile, torch.device("cpu"), s.tta,
                                          memory_gib=s.memory_gib, batch_size=s.batch_size)
    tiles = plan_tiles(source.spatial, tile, h, margin, step)
    return _Geometry(tile, h, margin, step, plan_blocks(tiles, s.block))


def _run_record(
    model_path: Path, source: _Input, g: _Geometry, s: _Settings
) -> dict[str, Any]:
    """The run's settings as ``run.json`` keeps them (without the normalisation)."""
    return _as_json({
        "format": RUN_FORMAT, "version": RUN_VERSION, "model_sha256": _sha256(model_path),
        "input": source.described, "tile": g.tile, "halo": g.halo, "margin": g.margin,
        "step": g.step, "block": g.blocks.block, "tta": bool(s.tta), "precision": s.precision,
        "batch_size": int(s.batch_size), "outputs": s.outputs,
    })


def _prepare_outputs(
    net, source: _Input, g: _Geometry, record: dict[str, Any], s: _Settings
) -> dict[str, Any]:
    """The normalisation of the run: the recorded one when the run can be resumed; otherwise
    that of ``s.stats`` or of the whole image, after creating the outputs (refusing ones that
    another run wrote, unless overwriting) and writing the run's record."""
    previous = None if s.overwrite else _read_run(s.run_dir)
    if _resumable(previous, record, s):
        return previous["stats"]
    _refuse_existing(previous, record, s)
    stats = s.stats
    if stats is None:
        try:
            stats = norm.image_stats(
                source.view, (getattr(net, "meta", None) or {}).get("normalization")
            )
        except UsegError:
            raise
        except Exception as exc:  # noqa: BLE001 - the edge: a corrupt chunk, a codec error
            raise InputError(f"{source.spec or s.name}: cannot read it "
                             f"({one_line(exc)})") from None
        if not np.isfinite([*stats["offset"], *stats["scale"]]).all():
            # Refused before any output or record exists: a record of NaN statistics would
            # turn every block into NaN probabilities.
            raise InputError(f"{source.spec or s.name}: holds NaN or infinite values")
    _create_outputs(net.config, source, g.blocks, s)
    (s.run_dir / "levels.json").unlink(missing_ok=True)
    make_folder(s.run_dir / "done")
    write_json(s.run_dir / "run.json", {**record, "stats": _as_json(stats)})
    return stats


def _settings_of(previous: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in previous.items() if k != "stats"}


def _resumable(previous: dict[str, Any] | None, record: dict[str, Any], s: _Settings) -> bool:
    """Whether the outputs are those of a run with these settings (and normalisation, when
    given), all still readable."""
    if previous is None or _first_difference(_settings_of(previous), record) is not None:
        return False
    if s.stats is not None and _as_json(s.stats) != previous.get("stats"):
        return False
    return all(_readable(spec) for spec in s.outputs.values() if spec is not None)


def _readable(spec: str) -> bool:
    try:
        open_array(spec)
    except InputError:
        return False
    return True


def _refuse_existing(
    previous: dict[str, Any] | None, record: dict[str, Any], s: _Settings
) -> None:
    """Raise :class:`~useg.errors.ConfigError` for an existing output, unless overwriting,
    naming the setting it was written with that differs."""
    exists = [spec for spec in s.outputs.values() if spec is not None and _readable(spec)]
    if exists and not s.overwrite:
        why = "no record of the run that wrote it"
        if previous is not None:
            key = _first_difference(_settings_of(previous), record) or "stats"
            why = f"written with a different {key}"
        rest = "or choose another output" if previous is None else (
            "choose another output, or rerun the command that wrote it to resume that run")
        raise ConfigError(
            f"{exists[0]}: already exists, {why}; pass overwrite (--overwrite) to replace it, "
            f"{rest}"
        )


def _create_outputs(cfg, source: _Input, blocks: BlockPlan, s: _Settings) -> None:
    """New output arrays (replacing old ones), chunked by the block."""
    spatial_axes = "ZYX"[3 - cfg.ndim:]
    classes, spatial = cfg.classes, source.spatial
    if s.outputs["probabilities"]:
        create_array(s.outputs["probabilities"], (classes, *spatial), np.float32,
                     (classes, *blocks.block), source.spacing, axes="C" + spatial_axes,
                     fill_value=float("nan"), zarr_format=s.zarr_format, unit=source.unit,
                     pyramid=True, overwrite=True, origin=source.origin)
    if s.outputs["labels"]:
        create_array(s.outputs["labels"], spatial, class_dtype(classes), blocks.block,
                     source.spacing, axes=spatial_axes, fill_value=0,
                     zarr_format=s.zarr_format, unit=source.unit, pyramid=True, overwrite=True,
                     origin=source.origin)


def _kept_model(model_path: Path, tmp_model: Path | None, run_dir: Path) -> str:
    """The model file the workers load; a temporary one is kept in the run's folder."""
    if tmp_model is None:
        return str(model_path)
    kept = run_dir / "model.safetensors"
    os.replace(tmp_model, kept)
    return str(kept)


def _compute_blocks(
    job: dict[str, Any], data: Any, g: _Geometry, s: _Settings, started: float,
    scheduler: tuple[str, Any, bool],
) -> dict[str, Any]:
    """Compute the blocks without a marker; returns :func:`predict_dask`'s summary."""
    finished = finished_blocks(s.run_dir / "done")
    everything = list(g.blocks.indices())
    todo = [idx for idx in everything if marker_name(idx) not in finished]
    tally = _Tally(g.blocks, everything, todo, s.progress, s.on_block)
    try:
        if todo:
            _schedule(job, todo, data, s, scheduler, tally.on_result)
    finally:
        tally.close()
    return {
        "blocks": len(everything),
        "computed": sorted(tally.computed),
        "skipped": len(everything) - len(todo),
        "seconds": time.perf_counter() - started,
        "voxels": sum(tally.region_voxels[i] for i in tally.computed),
        "block": g.blocks.block,
        "block_counts": g.blocks.counts,
        "tile": tuple(g.tile),
        "outputs": s.outputs,
    }


class _Tally:
    """The blocks computed so far: a progress bar in voxels, and ``on_block`` for each."""

    def __init__(self, blocks: BlockPlan, everything: list[tuple[int, ...]],
                 todo: list[tuple[int, ...]], progress: bool,
                 on_block: Callable[[dict[str, Any]], None] | None) -> None:
        self.blocks_total, self.blocks_before = len(everything), len(everything) - len(todo)
        self.region_voxels = {idx: math.prod(r.stop - r.start for r in blocks.region(idx))
                              for idx in everything}
        self.computed: list[tuple[int, ...]] = []
        self.on_block = on_block
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            total = sum(self.region_voxels.values())
            self.bar = tqdm(total=total,
                            initial=total - sum(self.region_voxels[i] for i in todo),
                            unit="vox", unit_scale=True, desc="predict", smoothing=0.1)

    def on_result(self, result: dict[str, Any]) -> None:
        idx = tuple(result["block"])
        if not result.get("skipped"):
            self.computed.append(idx)
        if self.bar is not None:
            self.bar.update(self.region_voxels[idx])
            self.bar.set_postfix_str(f"{self.blocks_before + len(self.computed)}/"
                                     f"{self.blocks_total} blocks", refresh=False)
        if self.on_block is not None:
            self.on_block(result)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _schedule(job: dict[str, Any], todo: list[tuple[int, ...]], data: Any, s: _Settings,
              scheduler: tuple[str, Any, bool],
              on_result: Callable[[dict[str, Any]], None]) -> None:
    """Run the blocks ``todo`` on the scheduler of :func:`_resolve_scheduler`."""
    kind, sched, _ = scheduler
    if kind == "local":
        _run_local(job, todo, sched, s.workers, s.torch_threads, data, on_result)
    else:
        _run_distributed(sched, job, todo, data, on_result)


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

    ``source`` is a chunked array spec (``vol.zarr/raw``, ``image.ome.zarr``, ``file.h5:/raw``,
    ``image.ome.zarr/1`` for a level of a pyramid) or an image file, which is read whole. The
    store receives ``out/probs`` (unless ``write_probabilities`` is False) and ``out/labels``
    (:func:`useg.io.files.result_paths`); an OME-Zarr store ``*.ome.zarr`` is an NGFF image of
    the probabilities with a pyramid, and the classes a label image ``out/labels/classes``.
    Without a ``scheduler``, more than one worker starts a :func:`local_cluster` of that many
    processes (and ``torch_threads`` defaults to cores / workers), closed at the end. Other
    arguments go to :func:`predict_dask`, whose summary is returned.
    """
    out = str(out)
    results = result_paths(out, None, probabilities=write_probabilities)
    if parse_spec(out).kind != "zarr":
        raise InputError(f"{out}: with --dask, --out is a zarr store (e.g. result.zarr)")
    if out.lower().rstrip("/").endswith(".ome.zarr"):
        if "probabilities" not in results:
            raise InputError(f"{out}: an OME-Zarr result is the image of the probabilities with "
                             "the labels under it; drop --no-probs or write a plain store "
                             "(result.zarr)")
        require_writer(out)  # before anything is read or predicted
    check_output_folder(parse_spec(out).container)
    source = str(source)
    image: Any = source
    if not is_array_spec(source):
        from useg.inference.predict import check_spatial_axes

        image, info = read_image(source)  # an ordinary image file is read whole
        try:
            check_spatial_axes(_model_ndim(model), image.shape[1:])
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None
        kwargs.setdefault("spacing", info.get("spacing"))
        kwargs.setdefault("unit", info.get("unit"))
        kwargs["name"] = source
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

"""The training loop: samples in, a run folder out (:mod:`useg.training.run_folder`).

Reproducibility: the tile of step ``k`` and the dropout mask of step ``k`` depend only on
(seed, k), so a resumed run follows the same trajectory as an uninterrupted one; with the total
number of steps unchanged, a resumed run is the same as one never interrupted.

Several processes (:mod:`useg.training.distributed`): the loss of each process is scaled so that
the averaged gradients equal those of one process with an N times larger batch (the weighted
cross entropy is normalised by the weight of the whole global batch), and only rank 0
validates, writes checkpoints and logs. Batch norm uses per-process statistics on CPU and
SyncBatchNorm on CUDA; dropout masks differ per rank.

Time: the first steps of a run (after one that warms up) are timed, and the run says how long
its steps will take. With a time budget (``TrainConfig.time_budget``) it then also times one
validation and one checkpoint and sets ``iterations`` to the steps that fit in the budget
(:data:`BUDGET_SHARE` of the time left, so that a slower stretch still ends in time), before
the next step: the learning-rate schedule runs over the decided total from there and reaches its
end at the run's last step (the timed steps ran on the schedule of the total asked for, which
differs from it by ``k/iterations`` of a poly or cosine schedule after ``k`` steps: under 1%
for a few steps out of some hundreds). The decision and its reason are recorded in
``config.json`` (``budget_decision``), and a resumed run keeps it. Should the steps then go
much slower than measured (another program taking the cores), the run stops when its last
validation and checkpoint would no longer fit, before the schedule's end, and records that too.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg.device import (
    autocast,
    cpu_info,
    device_memory,
    freed_memory_fits,
    freed_memory_handed_back,
    freed_memory_kept,
)
from useg.errors import ConfigError, InputError
from useg.io.files import make_folder, remove_stale_temporaries
from useg.nets.checkpoint import save_model
from useg.nets.config import UNetConfig
from useg.nets.forward import memory_format
from useg.nets.geometry import output_shape, peak_bytes, training_step_bytes, valid_input_shape
from useg.nets.unet import UNet
from useg.training.config import SIGMA_UNIT, TrainConfig, lr_factor
from useg.training.distributed import Dist, all_reduce_sum, init_distributed, shared_precision
from useg.training.options import format_duration
from useg.training.recipes import augment_words
from useg.training.run_folder import (
    CONFIG,
    CURVES,
    LOG,
    STATE,
    check_resumable,
    load_state,
    read_log,
    resume_config,
    write_checkpoint,
    write_config,
)
from useg.training.samples import NO_BORDER_WEIGHT_MODES, Sample, check_classes_present
from useg.training.stream import TileStream
from useg.training.validation import evaluate_samples

__all__ = ["BUDGET_SHARE", "NO_VALIDATION", "train"]

# The share of the time left that a time budget plans steps for.
BUDGET_SHARE = 0.9
# Timing the first steps: one warms up (allocations, the loader's first batch) and is not
# counted; then at least _TIMED_STEPS steps and _TIMED_SECONDS (or a tenth of the run), or
# fewer steps once they took _TIMED_SECONDS_MAX (one process; several count steps only, so
# that they agree).
_WARMUP_STEPS = 1
_TIMED_STEPS = 3
_TIMED_SECONDS = 1.0
_TIMED_SECONDS_MAX = 20.0
NO_VALIDATION = ("no validation images: the model kept is the last one, and no checkpoint, "
                 "threshold or post-processing setting was chosen on data")


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, 7, rank]).generate_state(1)[0])


def train(
    cfg: TrainConfig,
    samples: list[Sample],
    out_dir: str | os.PathLike,
    *,
    val_samples: list[Sample] | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    say: Callable[[str], None] | None = None,
    started: float | None = None,
) -> Path:
    """Train a U-Net on samples and write the run folder; returns the path of ``best`` (or
    ``last`` when there is no validation set).

    ``say`` receives the run's one-line notes (e.g. ``print``): the recipe and why it was chosen,
    the lack of a validation set, the time the steps will take, the time budget's decision.
    ``started`` is the :func:`time.perf_counter` value the time budget counts from (default:
    now).

    A new run that fails (or is interrupted) before it has written a model file leaves
    nothing behind: the run files it wrote (``config.json``) are removed, and so are the folders
    it created, when empty; a folder that existed before, and files it held, stay.

    With ``resume=True`` the run continues from ``out_dir/state.safetensors``, with the
    configuration saved in ``out_dir/config.json``. ``cfg`` may differ from it only in
    :data:`~useg.training.config.RESUMABLE` settings (anything else raises
    :class:`~useg.errors.ConfigError`): a new
    ``iterations`` extends the run (or ends it earlier, but not before the step reached), and
    the learning-rate schedule is recomputed over the new total; the saved configuration is
    updated.
    """
    if samples:
        check_classes_present(samples)  # before anything is written
    out = Path(out_dir)
    before = None if resume else _FolderBefore.of(out)
    try:
        return _train(cfg, samples, out, val_samples, resume, progress, callback, say, started)
    except BaseException:
        if before is not None:
            before.remove_unfinished_run(out)
        raise


def _train(
    cfg: TrainConfig, samples: list[Sample], out: Path, val_samples: list[Sample] | None,
    resume: bool, progress: bool, callback: Callable[[int, dict[str, Any]], None] | None,
    say: Callable[[str], None] | None, started: float | None,
) -> Path:
    """:func:`train`, less the removal of a new run that failed before its first model."""
    started = time.perf_counter() if started is None else started
    cfg, resumed_from = _open_run_folder(cfg, out, resume)
    run = _start_run(cfg, out, samples, resume, resumed_from, val_samples)
    tell = say if run.dist.main else None
    if tell is not None:
        if cfg.recipe and not resume:
            tell(_recipe_line(cfg))
        decision = cfg.budget_decision
        if resume and decision and cfg.iterations != decision.get("asked_iterations"):
            # The iterations first asked for continue with the budget's number: say so, for a
            # user who gave them again expecting all of them.
            tell(f"resuming to step {cfg.iterations}, the steps the time budget chose of the "
                 f"{decision['asked_iterations']} asked for (--iterations N with another N "
                 "trains to N)")
        if not val_samples:
            tell(NO_VALIDATION)
    stream, loader = _tile_loader(run, samples)
    bar = _progress_bar(run) if progress and run.dist.main else None
    run.model.train()
    batches = iter(loader)
    timing: _Timing | None = _Timing(run.step)
    try:
        with _freed_memory_for_steps(run, tell):
            while run.step < cfg.iterations:
                run.train_step(batches, stream)
                per_step = timing.tick(run) if timing is not None else None
                checked = timing is None  # the budget was decided before this step
                if per_step is not None:
                    assert timing is not None
                    _plan(run, per_step, timing.first, started, val_samples, tell, bar)
                    timing = None
                # Validation steps are logged too (their row holds the metrics), whether or
                # not they fall on a log step: the same steps in every process.
                logged = run.due(cfg.log_every) or run.due(cfg.val_every)
                saved = run.due(cfg.checkpoint_every)
                paused_from = time.perf_counter()
                if logged:
                    run.log(val_samples, callback)
                if saved:
                    run.checkpoint()
                run.paused += time.perf_counter() - paused_from
                # After the step's own log and checkpoint, so that the time they took is counted;
                # a stop makes this step the last one, which is then logged and saved too.
                if checked and _out_of_time(run, started):
                    _stop_now(run, tell, bar)
                    if not logged:
                        run.log(val_samples, callback)
                    if not saved:
                        run.checkpoint()
                if bar is not None:
                    _show_progress(bar, run)
    finally:
        if bar is not None:
            bar.close()
        # The loader's worker processes stop now: an exception's traceback keeps the frames
        # that hold the iterator (a notebook keeps the last one), so dropping ours is not
        # enough.
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del batches
        _leave_process_group(run.dist)
    if not (out / "best.safetensors").exists():
        return out / "last.safetensors"
    return out / "best.safetensors"


@contextlib.contextmanager
def _freed_memory_for_steps(run: _Run, tell: Callable[[str], None] | None) -> Iterator[None]:
    """Keep freed memory for the steps where it fits, and say so.

    Every step frees and allocates the same activations: kept by glibc, they are not faulted
    in and zeroed again by the kernel each step. It fits where twice the step's peak does,
    counted for every process of the job, which may share the machine.
    """
    step_bytes = (run.cfg.batch_size * run.dist.world
                  * training_step_bytes(run.model.config, run.tile, itemsize=4))
    with freed_memory_kept(freed_memory_fits(step_bytes, run.device)) as kept:
        if kept and tell is not None:
            tell(f"freed memory kept for the steps, not handed back to the system: up to "
                 f"about {2 * step_bytes / 2**30:.1f} GiB, estimated "
                 "(USEG_KEEP_FREED_MEMORY=0 hands it back)")
        yield


# ----------------------------------------------------------------------------------------------
# The run: its state, one step, log rows and checkpoints


@dataclass
class _Run:
    """A training run in progress: what it trains with, and how far it has got.

    Every process steps and settles its losses (a sum across processes); only the main one
    validates, logs and writes checkpoints.
    """

    cfg: TrainConfig
    out: Path
    dist: Dist
    device: torch.device
    tile: tuple[int, ...]
    out_tile: tuple[int, ...]
    fmt: torch.memory_format
    model: UNet
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    scaler: torch.amp.GradScaler | None
    meta: dict[str, Any]  # the header of every model file the run writes
    step: int = 0
    best: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # losses since the last log row
    # Losses stay on the device until a log row or checkpoint needs them: reading one back is a
    # host sync, which on a GPU would stop the loop from queueing the next step meanwhile.
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    last_value: float = math.nan
    data_wait: float = 0.0  # seconds spent waiting for batches
    compute: float = 0.0  # seconds spent in steps
    # (time, step) of the last out-of-time check: how fast the steps go now.
    last_check: tuple[float, int] | None = None
    # Seconds of logging, validation and checkpoints since the last check: not the steps' pace.
    paused: float = 0.0

    def due(self, every: int) -> bool:
        """Whether the step reached is a multiple of ``every`` or the last one."""
        return self.step % every == 0 or self.step == self.cfg.iterations

    # ------------------------------------------------------------------------------------------
    # One step

    def train_step(self, batches: Iterator[Any], stream: TileStream) -> None:
        """One optimizer step on the next batch of ``batches``; its loss joins ``pending``."""
        t0 = time.perf_counter()
        packed = torch.as_tensor(next(batches))
        t1 = time.perf_counter()
        x, y, w = self._on_device(packed, stream)
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, self.step)
        # Dropout of step k depends on (seed, k, rank) only.
        torch.manual_seed(_step_seed(self.cfg.seed, self.step, self.dist.rank))
        with autocast(self.device, self.cfg.precision):
            logits = self.net(x)
        loss = self._loss(logits, y, w)
        self._descend(loss)
        self.pending.append((self.step, loss.detach()))
        self.step += 1
        self.data_wait += t1 - t0
        self.compute += time.perf_counter() - t1

    def _on_device(
        self, packed: torch.Tensor, stream: TileStream
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda" and not packed.is_pinned():
            packed = packed.pin_memory()  # so that the copy below does not wait
        # One transfer for the whole batch, then views of images, targets and weights.
        x, y, w = stream.unpack(packed.to(self.device, non_blocking=True), self.cfg.batch_size)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=self.fmt)
        return x, y, w

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits.float(), y, w)
        if self.dist.world > 1:
            # DDP averages gradients over processes; scale each process's loss so that the
            # average equals the loss normalised by the weight of the whole global batch.
            local = w.sum() if self.cfg.dice_weight == 0 else torch.ones((), device=self.device)
            total = all_reduce_sum(local.detach(), self.dist)
            loss = loss * local * self.dist.world / total.clamp_min(1e-12)
        return loss

    def _descend(self, loss: torch.Tensor) -> None:
        """Backward pass, gradient clipping and optimizer step (through the fp16 scaler)."""
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()

    # ------------------------------------------------------------------------------------------
    # Log rows, validation and checkpoints

    def settle(self) -> None:
        """Read the pending losses back (averaged over processes) into ``window``; raise
        :class:`~useg.errors.ConfigError` at the first one that is not finite."""
        for k, loss_k in self.pending:
            value = float(all_reduce_sum(loss_k, self.dist)) / self.dist.world
            if not math.isfinite(value):
                start = (self.cfg.init or {}).get("model")
                if start is not None and k <= 1:
                    # Not finite from the first step: the starting model, not the learning rate.
                    raise ConfigError(f"the --init model {start} gives a loss of {value} at "
                                      "the first step: its output is not finite on these "
                                      "images")
                raise ConfigError(
                    f"training diverged at step {k} (loss {value}); "
                    "lower --lr or use --grad-clip"
                )
            self.window.append(value)
            self.last_value = value
        self.pending.clear()

    def log(
        self,
        val_samples: list[Sample] | None,
        callback: Callable[[int, dict[str, Any]], None] | None,
    ) -> None:
        """Add a log row (mean loss since the last one, learning rate, share of time spent
        waiting for data), with validation metrics at validation steps."""
        self.settle()
        row = {
            "step": self.step,
            "loss": float(np.mean(self.window)),
            "lr": self.opt.param_groups[0]["lr"],
            "data_wait": self.data_wait / max(self.data_wait + self.compute, 1e-9),
        }
        self.window.clear()
        if val_samples and self.dist.main and self.due(self.cfg.val_every):
            self._validate(row, val_samples)
        self.rows.append(row)
        if callback:
            callback(self.step, row)

    def evaluate(self, val_samples: list[Sample]) -> dict[str, float]:
        """The validation metrics of the network as it is, with freed memory handed back
        meanwhile (validation tiles differ from the step's and would only add to what is kept);
        the network is left in eval mode."""
        with freed_memory_handed_back():
            return evaluate_samples(self.model, val_samples, self.device,
                                    precision=self.cfg.precision)

    def _validate(self, row: dict[str, Any], val_samples: list[Sample]) -> None:
        """Add the validation metrics to ``row``; save ``best`` when the score is the best yet."""
        row.update(self.evaluate(val_samples))
        score = row["val_iou"]
        if self.best is None or score > self.best:
            self.best = score
            meta = {**self.meta, "step": self.step, "val": row}
            save_model(self.model, self.out / "best.safetensors", meta)
        self.model.train()

    def checkpoint(self) -> None:
        """Write a checkpoint of the step reached (main process only)."""
        self.settle()  # never write a state whose losses were not checked
        if not self.dist.main:
            return
        info = {"step": self.step, "best": self.best, "window": list(self.window)}
        write_checkpoint(self.out, self.model, self.opt, info, self.rows, self.meta)


# ----------------------------------------------------------------------------------------------
# Setting up a run


# The files a run writes in its folder, and those of them that hold a model.
_MODEL_FILES = (STATE, "best.safetensors", "last.safetensors")
_RUN_FILES = (CONFIG, LOG, CURVES, *_MODEL_FILES)


@dataclass(frozen=True)
class _FolderBefore:
    """A run folder before a new run: the entries it held, and the topmost of its folders
    that did not exist (None when it existed)."""

    names: frozenset[str]
    new_top: Path | None

    @classmethod
    def of(cls, out: Path) -> _FolderBefore:
        try:
            names = frozenset(os.listdir(out)) if out.is_dir() else frozenset()
        except OSError:
            names = frozenset()
        missing = list(itertools.takewhile(lambda p: not p.exists(), (out, *out.parents)))
        return cls(names, missing[-1] if missing else None)

    def remove_unfinished_run(self, out: Path) -> None:
        """Remove what a new run that failed before writing any model file created in ``out``:
        its run files and its new folders (when empty). A run that wrote a model keeps it;
        under torchrun, the first process removes."""
        if os.environ.get("RANK", "0") != "0" or any(
                name not in self.names and (out / name).exists() for name in _MODEL_FILES):
            return
        for name in _RUN_FILES:
            if name not in self.names:
                with contextlib.suppress(OSError):
                    (out / name).unlink(missing_ok=True)
        if self.new_top is None:
            return
        for folder in (out, *out.parents):
            try:
                folder.rmdir()  # only when empty: never a file of anyone else
            except OSError:
                return
            if folder == self.new_top:
                return


def _open_run_folder(
    cfg: TrainConfig, out: Path, resume: bool
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The configuration to train with and, when resuming, the saved one; creates ``out``.

    Raises :class:`~useg.errors.InputError` when ``out`` holds a run and ``resume`` is False.
    """
    resumed_from = None
    if resume:
        check_resumable(out)
        cfg, resumed_from = resume_config(cfg, out)
    elif (out / STATE).exists():
        raise InputError(f"{out}: a run already exists here; use --resume or another --out")
    make_folder(out)
    remove_stale_temporaries([out])  # of a run killed earlier (kill -9)
    return cfg, resumed_from


def _start_run(
    cfg: TrainConfig,
    out: Path,
    samples: list[Sample],
    resume: bool,
    resumed_from: dict[str, Any] | None,
    val_samples: list[Sample] | None = None,
) -> _Run:
    """Join the job, settle precision and tile, save the configuration, build the network and
    optimizer, and load the trainer state when resuming."""
    from useg.training.losses import SegmentationLoss

    net_cfg = UNetConfig.from_dict(cfg.net)
    cfg.net = net_cfg.to_dict()  # complete, as a resumed run reads it back
    dist_info, device = init_distributed(cfg.device)
    cfg.precision = shared_precision(cfg.precision, device, dist_info)
    tile = valid_input_shape(net_cfg, cfg.tile, mode="nearest")
    out_tile = output_shape(net_cfg, tile)
    cfg.tile = list(tile)
    _check_step_memory(net_cfg, tile, cfg.batch_size, device)
    if dist_info.main and (not resume or cfg.to_dict() != resumed_from):
        # A resumed run records what it changed, so that the next --resume continues it.
        write_config(out, cfg)
    # A resumed run's weights come from its own state, not from the model it started from.
    start = None if resume or cfg.init is None else cfg.init["file"]
    model, net, fmt = _build_network(net_cfg, cfg.seed, device, dist_info, start)
    opt = _optimizer(cfg, model.parameters())
    run = _Run(
        cfg, out, dist_info, device, tile, out_tile, fmt, model, net, opt,
        loss_fn=SegmentationLoss(dice_weight=cfg.dice_weight),
        scaler=_grad_scaler(cfg.precision, device),
        meta=_model_meta(cfg, samples, val_samples),
    )
    if resume:
        _load_progress(run)
    return run


def _check_step_memory(net_cfg: UNetConfig, tile: Sequence[int], batch_size: int,
                       device: torch.device) -> None:
    """Refuse a batch of tiles whose training step cannot fit in the memory of ``device``,
    before anything is allocated: the step keeps every activation for the backward pass, so
    it needs at least ``batch_size`` times the peak of one tile's forward pass."""
    need = batch_size * peak_bytes(net_cfg, tile, itemsize=4)
    have = device_memory(device)
    if need > have:
        raise ConfigError(
            f"--batch-size {batch_size} with tiles of {tuple(tile)} needs more than "
            f"{need / 2**30:.1f} GiB for one training step, more than the "
            f"{have / 2**30:.1f} GiB of {device}; choose a smaller --batch-size or --tile")


def _build_network(
    net_cfg: UNetConfig, seed: int, device: torch.device, dist_info: Dist,
    start: str | None = None,
) -> tuple[UNet, torch.nn.Module, torch.memory_format]:
    """The model (initialised from ``seed``, or with the weights of the model file ``start``),
    the module that trains it (the model, or its DistributedDataParallel wrapper) and the
    memory format of its inputs."""
    torch.manual_seed(seed)
    model = UNet(net_cfg)
    if start is not None:
        from useg.nets.checkpoint import load_model

        source = load_model(start)
        if source.config != net_cfg:
            raise ConfigError(f"{start}: its network is not the run's (the file changed since "
                              "the run was configured)")
        model.load_state_dict(source.state_dict())
    model = model.to(device)
    fmt = memory_format(net_cfg.ndim)
    if device.type == "cpu":
        model = model.to(memory_format=fmt)
    net = model
    if dist_info.world > 1:
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, net, fmt


def _grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none.
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


#: What the sizes of a model file's header are measured in (its ``units``).
UNITS = {
    "spacing": "the training data's calibration (or --spacing), in its own unit; only the "
               "ratios between axes are used",
    "tile": "pixels (voxels in 3D)",
    "sigma": SIGMA_UNIT,
    "boundary_width": "pixels (voxels in 3D)",
    "instances": "min_size in pixels (voxels in 3D), seed_distance in pixels of the finest axis",
}


def _model_meta(
    cfg: TrainConfig, samples: list[Sample], val_samples: list[Sample] | None = None
) -> dict[str, Any]:
    """The header of the run's model files: spacing, normalisation, labels, what was chosen on
    validation data (``validation``: None, with ``validation_note``, when there was none) and
    provenance."""
    spacing = cfg.spacing if cfg.spacing is not None else samples[0].spacing if samples else None
    validation: dict[str, Any] = {"validation": None, "validation_note": NO_VALIDATION}
    if val_samples:
        validation = {"validation": {
            "images": len(val_samples), "every": cfg.val_every,
            "kept": "best.safetensors: the checkpoint of the highest validation foreground IoU "
                    "(val_iou)"}}
    return {
        "spacing": [float(v) for v in spacing] if spacing is not None else None,
        "units": UNITS,
        "normalization": cfg.normalization,
        "labels": cfg.labels or {"mode": cfg.label_mode},
        **validation,
        "provenance": {"trainer": "useg", "config": cfg.to_dict()},
    }


def _load_progress(run: _Run) -> None:
    """Load the trainer state of ``run.out`` into the run: weights, optimizer, step, best score,
    unlogged losses and log rows."""
    info = load_state(run.out / STATE, run.model, run.opt)
    run.step, run.best = int(info["step"]), info.get("best")
    run.window = [float(v) for v in info.get("window", [])]
    # A killed run may have logged past its last checkpoint: drop those rows.
    run.rows = [r for r in read_log(run.out / LOG) if int(r["step"]) <= run.step]


def _tile_loader(
    run: _Run, samples: list[Sample]
) -> tuple[TileStream, torch.utils.data.DataLoader]:
    """This process's share of the training tiles from the step reached, and their loader."""
    cfg = run.cfg
    stream = TileStream(
        samples, run.tile, run.out_tile, augment=cfg.augment, seed=cfg.seed,
        start=run.step * cfg.batch_size,
    )
    stream.shard(run.dist.rank, run.dist.world, cfg.batch_size)
    workers = max(0, int(cfg.workers))
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=cfg.batch_size,
        collate_fn=stream.collate,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        pin_memory=run.device.type == "cuda",
    )
    return stream, loader


def _worker_init(_: int) -> None:
    # Workers prepare tiles; one thread each leaves the cores to the training step.
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Time: the estimate and the time budget


@dataclass
class _Timing:
    """Times the first steps of a run from step ``first`` (see :data:`_TIMED_STEPS`)."""

    first: int
    start: float = 0.0
    paused: float = 0.0  # run.paused when timing started

    def tick(self, run: _Run) -> float | None:
        """Call after each step: the measured seconds per step once enough steps were timed
        (averaged over the processes), else None. The time of the logs, validations and
        checkpoints between them (``run.paused``) is not a step's: the plan adds it apart."""
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        now = time.perf_counter()
        done = run.step - self.first
        if done <= _WARMUP_STEPS:
            self.start, self.paused = now, run.paused
            return None
        timed = done - _WARMUP_STEPS
        seconds = now - self.start - (run.paused - self.paused)
        if run.dist.world > 1:
            if timed < _TIMED_STEPS:
                return None
            return _mean_over_processes(seconds / timed, run)
        long_enough = seconds >= _TIMED_SECONDS or 10 * timed >= run.cfg.iterations - self.first
        if (timed < _TIMED_STEPS or not long_enough) and seconds < _TIMED_SECONDS_MAX:
            return None
        return seconds / timed


def _mean_over_processes(value: float, run: _Run) -> float:
    if run.dist.world == 1:
        return value
    total = all_reduce_sum(torch.tensor([value], dtype=torch.float64, device=run.device),
                           run.dist)
    return float(total[0]) / run.dist.world


def _plan(
    run: _Run, per_step: float, first: int, started: float, val_samples: list[Sample] | None,
    tell: Callable[[str], None] | None, bar: Any,
) -> None:
    """Say how long the run's steps will take; with a time budget not decided yet, decide it
    (the run's ``iterations``) and say so."""
    cfg = run.cfg
    if tell is not None:
        tell(_estimate_line(cfg, per_step, first, _where(run.device, cfg.precision),
                            bool(val_samples)))
    if cfg.time_budget is None or cfg.budget_decision is not None:
        return
    _decide_budget(run, per_step, started, val_samples)
    if bar is not None:
        bar.total = cfg.iterations
        bar.refresh()
    if tell is not None:
        tell(cfg.budget_decision["reason"])


def _where(device: torch.device, precision: str) -> str:
    # The precision too: "auto" trains in bf16 on some CPUs and in fp32 on others, at very
    # different paces.
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)}, {precision})"
    threads = torch.get_num_threads()
    return f"CPU ({cpu_info()[0]}, {threads} thread{'s' if threads > 1 else ''}, {precision})"


def _estimate_line(
    cfg: TrainConfig, per_step: float, first: int, where: str, validation: bool
) -> str:
    """``"2000 steps at 0.62 s/step: about 21 min on this CPU (..., fp32)"``."""
    left = cfg.iterations - first
    steps = f"{left} steps" if first == 0 else f"{left} steps left of {cfg.iterations}"
    line = (f"{steps} at {per_step:.3g} s/step: about {format_duration(left * per_step)} on "
            f"this {where}")
    if validation and cfg.val_every < cfg.iterations:
        line += f", plus a validation every {cfg.val_every} steps"
    return line


def _record_decision_in_best(run: _Run) -> None:
    """A ``best`` model saved before the time budget's decision (a validation while the steps
    were timed) records the decided run too."""
    from useg.nets.checkpoint import update_header

    best = run.out / "best.safetensors"
    if best.exists():
        update_header(best, {"provenance": run.meta["provenance"]})


def _decide_budget(
    run: _Run, per_step: float, started: float, val_samples: list[Sample] | None
) -> None:
    """Time one validation and one checkpoint, set ``iterations`` to what fits in the time
    budget from now, and record the decision (``budget_decision``, saved in ``config.json``)."""
    cfg = run.cfg
    validation = 0.0
    if val_samples:
        t0 = time.perf_counter()
        if run.dist.main:
            run.evaluate(val_samples)
            run.model.train()
        validation = _mean_over_processes(time.perf_counter() - t0, run) * run.dist.world
    t0 = time.perf_counter()
    run.checkpoint()  # a real one: a run killed from now on resumes with the decision
    checkpoint = _mean_over_processes(time.perf_counter() - t0, run)
    elapsed = _mean_over_processes(time.perf_counter() - started, run)
    asked, step = cfg.iterations, run.step
    left = BUDGET_SHARE * (cfg.time_budget - elapsed)
    every_val = cfg.val_every if val_samples else 0

    def cost(end: int) -> float:
        # steps, and the validations and checkpoints of steps step+1..end (the last one has both)
        def count(every: int) -> int:
            return end // every - step // every + (end % every != 0) if every and end > step else 0

        return ((end - step) * per_step + count(every_val) * validation
                + count(cfg.checkpoint_every) * checkpoint)

    low, high = step, asked  # the last step count that fits lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if cost(mid) <= left else (low, mid - 1)
    measured = f"{per_step:.3g} s/step"
    if val_samples:
        measured += f", a validation {validation:.1f} s"
    measured += f", a checkpoint {checkpoint:.1f} s, {elapsed:.0f} s spent so far"
    budget = format_duration(cfg.time_budget)
    if low == step < asked:
        reason = (f"time budget {budget}: spent already ({measured}); the run ends now, after "
                  f"step {step} of the {asked} asked for, before its learning-rate schedule "
                  "ends")
    elif low < asked:
        reason = (f"time budget {budget}: {low} of the {asked} steps fit ({measured}); the run "
                  f"ends after step {low}, where its learning-rate schedule now ends")
    else:
        reason = (f"time budget {budget}: all {asked} steps fit ({measured}; about "
                  f"{format_duration(elapsed + cost(asked))} in all)")
    cfg.budget_decision = {
        "time_budget_seconds": cfg.time_budget, "asked_iterations": asked, "iterations": low,
        "decided_at_step": step, "seconds_per_step": per_step, "validation_seconds": validation,
        "checkpoint_seconds": checkpoint, "elapsed_seconds": elapsed,
        "planned_share": BUDGET_SHARE, "reason": reason,
    }
    cfg.iterations = low
    run.meta["provenance"]["config"] = cfg.to_dict()
    if run.dist.main:
        write_config(run.out, cfg)
        _record_decision_in_best(run)


def _out_of_time(run: _Run, started: float) -> bool:
    """Whether a run with a decided time budget must stop now to end within it (its last
    validation and checkpoint included): the steps went slower than measured."""
    cfg, decision = run.cfg, run.cfg.budget_decision
    if cfg.time_budget is None or not decision or run.step >= cfg.iterations:
        return False
    if run.dist.world > 1 and not run.due(cfg.log_every):
        return False  # several processes agree at log steps only
    final = decision.get("validation_seconds", 0.0) + decision.get("checkpoint_seconds", 0.0)
    now = time.perf_counter()
    # The steps up to the next check at the pace of those since the last one (what slows
    # them counted: callbacks, another program on the cores), so the run stops before the
    # step that would end past the budget, not after it.
    ahead = 0.0
    if run.last_check is not None and run.step > run.last_check[1]:
        # The steps alone: a validation or checkpoint since the last check is not what the
        # next step will take (the final ones are counted apart, in ``final``).
        pace = (now - run.last_check[0] - run.paused) / (run.step - run.last_check[1])
        ahead = pace * (cfg.log_every if run.dist.world > 1 else 1)
    run.last_check = (now, run.step)
    run.paused = 0.0
    late = now - started + ahead + final > cfg.time_budget
    if run.dist.world > 1:
        flag = torch.tensor([float(late)], dtype=torch.float64, device=run.device)
        late = float(all_reduce_sum(flag, run.dist)[0]) > 0
    return late


def _stop_now(run: _Run, tell: Callable[[str], None] | None, bar: Any) -> None:
    """End the run at the step reached (:func:`_out_of_time`), and record why."""
    cfg = run.cfg
    note = (f"time budget {format_duration(cfg.time_budget)}: the steps went slower than "
            f"measured; the run stops after step {run.step} of the {cfg.iterations} decided, "
            "before its learning-rate schedule ends")
    cfg.budget_decision = {**cfg.budget_decision, "iterations": run.step, "stopped": note}
    cfg.iterations = run.step
    run.meta["provenance"]["config"] = cfg.to_dict()
    if run.dist.main:
        write_config(run.out, cfg)
        _record_decision_in_best(run)
    if bar is not None:
        bar.total = cfg.iterations
        bar.refresh()
    if tell is not None:
        tell(note)


def _recipe_line(cfg: TrainConfig) -> str:
    """``"recipe cpu-fast (auto: ...): width 16, depth 3, tile 252x252, adam lr 0.001, ..."``."""
    recipe, net = cfg.recipe or {}, cfg.net
    given = recipe.get("given") or []
    norm = f", {net['norm']} norm" if net.get("norm", "none") != "none" else ""
    line = (f"recipe {recipe.get('name')} ({recipe.get('why')}): width {net.get('width')}, "
            f"depth {net.get('depth')}{norm}, tile {'x'.join(map(str, cfg.tile))}, "
            f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule} schedule, {cfg.iterations} steps")
    if cfg.dice_weight:
        line += f", Dice term {cfg.dice_weight:g}"
    if cfg.w0 != TrainConfig.w0 and cfg.label_mode not in NO_BORDER_WEIGHT_MODES:
        line += f", border weight w0 {cfg.w0:g}"
    if not cfg.class_balance:  # weighs the classes in every label mode
        line += ", no class balance"
    line += augment_words(cfg.augment)
    if given:
        line += f"; given over it: {', '.join(given)}"
    if cfg.init:
        line += f"; network and starting weights from {cfg.init.get('model')} (fine-tuning)"
    return line


# ----------------------------------------------------------------------------------------------
# Progress and teardown


def _progress_bar(run: _Run) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=run.cfg.iterations, initial=run.step, unit="it", desc="train", dynamic_ncols=True
    )


def _show_progress(bar: Any, run: _Run) -> None:
    bar.update(1)
    if not run.pending:  # the last loss is shown only once read back: no extra host sync
        bar.set_postfix(loss=f"{run.last_value:.4f}", refresh=False)


def _leave_process_group(dist_info: Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

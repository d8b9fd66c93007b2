"""The training loop: paper defaults, schedules, precision, validation, checkpoints and resume.

A run folder holds ``config.json`` (everything needed to repeat the run), ``log.csv`` (one row
per logged step), ``curves.png``, ``last.safetensors`` and ``best.safetensors`` (model files
that ``useg predict`` reads) and ``state.safetensors`` (weights, optimizer state and step, with a
JSON header: no pickle). Every file is written to a temporary name and renamed, so a run killed
at any moment (even by SIGKILL) resumes from its last complete checkpoint.

Paper defaults: one large tile per step, SGD with momentum 0.99, dropout at the end of the
contracting path, weighted cross-entropy. Learning rate: the paper does not give one; with the
loss averaged over the weighted pixels and momentum 0.99 (an effective step 100x the learning
rate) SGD defaults to 0.01, a starting point that was not calibrated: the ISBI 2012 and
sparse-3D benches and the demo train with Adam (lr 1e-3), and SGD was not tried on ISBI 2012
(docs/isbi2012.md). Adam/AdamW default to 1e-3 (``bench/isbi2012.py`` states what each bench
used).

Extending a run: resuming with a larger ``iterations`` (``useg train --resume --iterations N``)
trains on from the step reached, and the learning-rate schedule is recomputed over the new total
(poly and cosine then restart from the value the new total gives that step, a warm restart).
With the total unchanged, a resumed run is the same as one never interrupted.

Reproducibility: the tile of step ``k`` and the dropout mask of step ``k`` depend only on
(seed, k), so a resumed run follows the same trajectory as an uninterrupted one.

Several processes (``torchrun --nproc_per_node N -m useg train ...``; gloo on CPU, NCCL on CUDA):
each process takes its share of every step's tiles (:meth:`useg.data.TileStream.shard`), the
loss of each process is scaled so that the averaged gradients equal those of one process with
an N times larger batch (the weighted cross entropy is normalised by the weight of the whole
global batch), and only rank 0 validates, writes checkpoints and logs. Batch norm uses
per-process statistics on CPU and SyncBatchNorm on CUDA; dropout masks differ per rank.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from useg import normalize as norm
from useg.checkpoint import save_model
from useg.data import IGNORE, Sample, TileStream
from useg.device import autocast, check_precision, resolve_device, resolve_precision
from useg.errors import ConfigError, InputError
from useg.nets import UNet, UNetConfig, output_shape, valid_input_shape

__all__ = ["TrainConfig", "evaluate_samples", "train"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SIGMA_UNIT = "pixels (finest axis)"
SCHEDULES = ("constant", "poly", "cosine")
# Settings a resumed run may change: how it is executed and how long it runs, not what a step
# computes. (With a batch of several tiles, which loader worker prepares a tile does not decide
# its step either: see useg.data.TileStream.)
RESUMABLE = ("iterations", "workers", "device")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as the run's ``config.json``)."""

    net: dict[str, Any] = field(default_factory=lambda: {"ndim": 2})
    tile: Sequence[int] | int = 572
    iterations: int = 2000
    batch_size: int = 1
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.01 for SGD, 1e-3 for Adam/AdamW
    momentum: float = 0.99
    weight_decay: float = 0.0
    schedule: str = "poly"
    warmup: int = 0
    # "auto": see useg.device.resolve_precision; train() records the precision it resolved to.
    precision: str = "auto"
    grad_clip: float | None = None
    dice_weight: float = 0.0
    augment: dict[str, Any] | None = field(default_factory=dict)
    label_mode: str = "binary"
    unlabeled: int | None = None
    boundary_width: int = 1
    spacing: Sequence[float] | None = None  # voxel size overriding the files' (model header)
    w0: float = 10.0
    sigma: float = 5.0  # in pixels of the finest axis (see useg.data.make_sample)
    class_balance: bool = True
    normalization: dict[str, Any] = field(default_factory=lambda: dict(norm.DEFAULT))
    val_every: int = 200
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    labels: dict[str, Any] = field(default_factory=dict)  # class names etc., for the model file

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch size must be at least 1")
        check_precision(self.precision)
        if self.lr is None:
            self.lr = 0.01 if self.optimizer == "sgd" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            d[key] = value
            if key == "sigma":
                # Files carry calibrations in other units: say which one sigma is in.
                d["sigma_unit"] = SIGMA_UNIT
        d["tile"] = list(self.tile) if not isinstance(self.tile, int) else self.tile
        if self.spacing is not None:
            d["spacing"] = [float(v) for v in self.spacing]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unit = d.get("sigma_unit", SIGMA_UNIT)
        if unit != SIGMA_UNIT:
            raise ConfigError(f"sigma is given in {unit!r}; this useg reads it in {SIGMA_UNIT}")
        return cls(**{k: v for k, v in d.items() if k in known})


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = step / cfg.iterations
    if cfg.schedule == "poly":
        return (1 - t) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def _resume_config(cfg: TrainConfig, out: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration a run resumed in ``out`` continues with, and the saved one (as a
    dict): the saved run's, with the :data:`RESUMABLE` settings of ``cfg``.

    Raises :class:`ConfigError` naming the first other setting in which ``cfg`` differs, and
    for an ``iterations`` below the step the run has reached.
    """
    path = out / "config.json"
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: unreadable run configuration ({exc})") from None

    def comparable(c: TrainConfig) -> dict[str, Any]:
        # As JSON (integer keys become strings), with the network complete and the tile
        # rounded as train() uses it.
        d = c.to_dict()
        net = UNetConfig.from_dict(d["net"])
        d["net"] = net.to_dict()
        d["tile"] = list(valid_input_shape(net, d["tile"], mode="nearest"))
        return json.loads(json.dumps(d))

    given, saved_dict = comparable(cfg), saved.to_dict()
    for key, value in comparable(saved).items():
        if key == "precision" and given.get(key) == "auto":
            continue  # the run continues in the precision it resolved to
        if key not in RESUMABLE and given.get(key) != value:
            raise ConfigError(
                f"{path}: the run was trained with {key} = {json.dumps(value)}, not "
                f"{json.dumps(given.get(key))}; a resumed run may change only "
                f"{', '.join(RESUMABLE)}"
            )
    step = int(_state_info(out / "state.safetensors")["step"])
    if cfg.iterations < step:
        raise ConfigError(
            f"{out}: the run has trained {step} steps already; iterations {cfg.iterations} "
            "would end before them (give at least that many)"
        )
    return TrainConfig.from_dict({**saved_dict, **{k: given[k] for k in RESUMABLE}}), saved_dict


def _optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------------------
# Trainer state: one safetensors file (tensors) with a JSON header (everything else).


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        plain["state"][str(pid)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value.detach().to("cpu").contiguous()
                plain["state"][str(pid)][name] = {"tensor": f"optim.{pid}.{name}"}
            else:
                plain["state"][str(pid)][name] = value
    return tensors, plain


def _unflatten_optimizer(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for pid, entries in plain["state"].items():
        state[int(pid)] = {
            name: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
            for name, v in entries.items()
        }
    return {"state": state, "param_groups": plain["param_groups"]}


def _save_state(path: Path, model: UNet, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    tensors = {
        f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
    }
    opt_tensors, opt_plain = _flatten_optimizer(opt.state_dict())
    tensors.update(opt_tensors)
    header = {"info": info, "optimizer": opt_plain}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"useg_state": json.dumps(header)})
    os.replace(tmp, path)


def _state_info(path: Path) -> dict[str, Any]:
    """The step, best score and pending losses of a trainer state, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["useg_state"])["info"]
    except Exception as exc:  # any corruption is reported as one line
        raise InputError(f"{path}: cannot resume, trainer state unreadable ({exc})") from None


def _load_state(path: Path, model: UNet, opt: torch.optim.Optimizer) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["useg_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # any corruption is reported as one line
        raise InputError(f"{path}: cannot resume, trainer state unreadable ({exc})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt.load_state_dict(_unflatten_optimizer(header["optimizer"], tensors))
    return header["info"]


# ----------------------------------------------------------------------------------------------
# Validation


def evaluate_samples(
    model: UNet,
    samples: Sequence[Sample],
    device: torch.device,
    tile: Sequence[int] | None,
    precision: str = "auto",
) -> dict[str, float]:
    """Mean foreground IoU, pixel error and (when objects are meaningful) adapted Rand error of
    whole-image predictions (overlap tiles) on labelled pixels of ``samples``.

    The predictions are those ``useg predict`` makes of the samples' files: a sample's image is
    normalised already (:func:`useg.data.make_sample`, with the statistics ``predict`` would
    compute from the file), so it is not normalised again. A network whose output depends on
    the tile predicts in one pass over the whole image, as ``useg predict`` does.
    """
    from useg.predict import predict, tile_dependence

    was_training = model.training
    model.eval()
    if tile_dependence(model) is not None:
        tile = None
    ious, errors, rands = [], [], []
    try:
        for s in samples:
            unchanged = {"offset": [0.0] * s.image.shape[0], "scale": [1.0] * s.image.shape[0]}
            probs = predict(model, s.image, tile=tile, device=device, precision=precision,
                            stats=unchanged)
            pred = np.argmax(probs, axis=0)
            mask = s.target != IGNORE
            fg_p, fg_t = (pred == 1) & mask, (s.target == 1) & mask
            union = np.logical_or(fg_p, fg_t).sum()
            ious.append(float(np.logical_and(fg_p, fg_t).sum() / union) if union else 1.0)
            errors.append(float((pred[mask] != s.target[mask]).mean()))
            rand = _adapted_rand(probs, s.target, mask)
            if rand is not None:
                rands.append(rand)
    finally:
        model.train(was_training)
    result = {"val_iou": float(np.mean(ious)), "val_pixel_error": float(np.mean(errors))}
    if rands:
        result["val_adapted_rand"] = float(np.mean(rands))
    return result


def _adapted_rand(probs: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    """ISBI adapted Rand error of the foreground segments (2-class models on dense 2D labels)."""
    if probs.shape[0] != 2 or target.ndim != 2 or not mask.all():
        return None
    try:
        from useg.metrics import adapted_rand_error
        from useg.postprocess import threshold_components
    except ImportError:
        return None
    from scipy import ndimage as ndi

    # Every pixel gets a segment (membranes grow into their neighbours), as the ISBI scoring.
    seg = threshold_components(probs[1], 0.5, fill=True)
    gt = ndi.label(target == 1)[0]
    return float(adapted_rand_error(seg, gt)[0])


# ----------------------------------------------------------------------------------------------
# Logs and plots


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def _num(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics against the step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows if "loss" in r]
    ax[0].plot(steps, [r["loss"] for r in rows if "loss" in r], lw=1, label="train loss")
    ax[0].set_xlabel("step")
    ax[0].set_yscale("log")
    ax[0].legend()
    for key in ("val_iou", "val_pixel_error", "val_adapted_rand"):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax[1].plot(*zip(*pts, strict=True), marker="o", ms=3, label=key)
    ax[1].set_xlabel("step")
    if ax[1].lines:
        ax[1].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# The loop


def _step_seed(seed: int, step: int, rank: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, 7, rank]).generate_state(1)[0])


@dataclass
class _Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def _all_reduce_sum(value: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        if dist.get_backend() == "gloo":
            _wait_until_released(value)
    return value


def _wait_until_released(value: torch.Tensor, timeout: float = 10.0) -> None:
    # gloo's worker thread lets go of a finished collective's tensors a moment after the call has
    # returned, and needs the GIL to do so. If the interpreter is already shutting down by then, it
    # kills that thread inside a C++ destructor and the process aborts ("terminate called without
    # an active exception"; a few runs in a hundred on a loaded machine). Handing the GIL over
    # until the worker has let go leaves nothing pending at exit.
    use_count = getattr(value, "_use_count", None)
    if use_count is None:
        return
    deadline = time.monotonic() + timeout
    while use_count() > 1 and time.monotonic() < deadline:
        time.sleep(0)


def _run_precision(precision: str, device: torch.device, d: _Dist) -> str:
    """``precision`` resolved (:func:`useg.device.resolve_precision`) by the main process, so
    that every process of a job trains in the same one."""
    if d.world == 1:
        return resolve_precision(precision, device)
    import torch.distributed as dist

    choice = [resolve_precision(precision, device) if d.main else None]
    dist.broadcast_object_list(choice, src=0)
    return str(choice[0])


def train(
    cfg: TrainConfig,
    samples: list[Sample],
    out_dir: str | os.PathLike,
    *,
    val_samples: list[Sample] | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> Path:
    """Train a U-Net on samples and write the run folder; returns the path of ``best`` (or
    ``last`` when there is no validation set).

    With ``resume=True`` the run continues from ``out_dir/state.safetensors``, with the
    configuration saved in ``out_dir/config.json``. ``cfg`` may differ from it only in
    :data:`RESUMABLE` settings (anything else raises :class:`ConfigError`): a new
    ``iterations`` extends the run (or ends it earlier, but not before the step reached), and
    the learning-rate schedule is recomputed over the new total; the saved configuration is
    updated.
    """
    from useg.losses import SegmentationLoss

    out = Path(out_dir)
    state_path = out / "state.safetensors"
    resumed_from = None
    if resume:
        if not state_path.exists():
            raise InputError(f"{out}: nothing to resume (no state.safetensors)")
        cfg, resumed_from = _resume_config(cfg, out)
    elif state_path.exists():
        raise InputError(f"{out}: a run already exists here; use --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)

    net_cfg = UNetConfig.from_dict(cfg.net)
    dist_info, device = _init_distributed(cfg.device)
    cfg.precision = _run_precision(cfg.precision, device, dist_info)
    tile = valid_input_shape(net_cfg, cfg.tile, mode="nearest")
    out_tile = output_shape(net_cfg, tile)
    cfg.tile = list(tile)
    if dist_info.main and (not resume or cfg.to_dict() != resumed_from):
        # A resumed run records what it changed, so that the next --resume continues it.
        tmp = out / ".config.json.tmp"
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        os.replace(tmp, out / "config.json")

    torch.manual_seed(cfg.seed)
    model = UNet(net_cfg).to(device)
    memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(net_cfg.ndim)
    if memory_format is not None and device.type == "cpu":
        model = model.to(memory_format=memory_format)
    net = model
    if dist_info.world > 1:
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = _optimizer(cfg, model.parameters())
    loss_fn = SegmentationLoss(dice_weight=cfg.dice_weight)
    step, best, rows = 0, None, []
    window: list[float] = []  # losses since the last log row
    if resume:
        info = _load_state(state_path, model, opt)
        step, best = int(info["step"]), info.get("best")
        window = [float(v) for v in info.get("window", [])]
        # A killed run may have logged past its last checkpoint: drop those rows.
        rows = [r for r in _read_log(out / "log.csv") if int(r["step"]) <= step]

    scaler = (
        torch.amp.GradScaler("cuda")
        if (cfg.precision == "fp16" and device.type == "cuda")
        else None
    )
    spacing = cfg.spacing if cfg.spacing is not None else samples[0].spacing if samples else None
    meta = {
        "spacing": [float(v) for v in spacing] if spacing is not None else None,
        "normalization": cfg.normalization,
        "labels": cfg.labels or {"mode": cfg.label_mode},
        "provenance": {"trainer": "useg", "config": cfg.to_dict()},
    }

    stream = TileStream(
        samples, tile, out_tile, augment=cfg.augment, seed=cfg.seed, start=step * cfg.batch_size
    )
    stream.shard(dist_info.rank, dist_info.world, cfg.batch_size)
    workers = max(0, int(cfg.workers))
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=cfg.batch_size,
        collate_fn=stream.collate,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        pin_memory=device.type == "cuda",
    )

    bar = None
    if progress and dist_info.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, initial=step, unit="it", desc="train", dynamic_ncols=True)

    def checkpoint(current_step: int) -> None:
        if not dist_info.main:
            return
        save_model(model, out / "last.safetensors", {**meta, "step": current_step})
        _save_state(
            state_path, model, opt, {"step": current_step, "best": best, "window": list(window)}
        )
        _write_log(out / "log.csv", rows)
        plot_curves(rows, out / "curves.png")

    # Losses stay on the device until a log row or checkpoint needs them: reading one back is a
    # host sync, which on a GPU would stop the loop from queueing the next step meanwhile.
    pending: list[tuple[int, torch.Tensor]] = []
    last_value = [math.nan]

    def settle() -> None:
        for k, loss_k in pending:
            value = float(_all_reduce_sum(loss_k, dist_info)) / dist_info.world
            if not math.isfinite(value):
                raise ConfigError(
                    f"training diverged at step {k} (loss {value}); "
                    "lower --lr or use --grad-clip"
                )
            window.append(value)
            last_value[0] = value
        pending.clear()

    model.train()
    data_wait = compute = 0.0
    it = iter(loader)
    try:
        while step < cfg.iterations:
            t0 = time.perf_counter()
            packed = torch.as_tensor(next(it))
            t1 = time.perf_counter()
            if device.type == "cuda" and not packed.is_pinned():
                packed = packed.pin_memory()  # so that the copy below does not wait
            # One transfer for the whole batch, then views of images, targets and weights.
            x, y, w = stream.unpack(packed.to(device, non_blocking=True), cfg.batch_size)
            if memory_format is not None and device.type == "cpu":
                x = x.contiguous(memory_format=memory_format)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(cfg, step)
            # Dropout of step k depends on (seed, k, rank) only.
            torch.manual_seed(_step_seed(cfg.seed, step, dist_info.rank))
            with autocast(device, cfg.precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y, w)
            if dist_info.world > 1:
                # DDP averages gradients over processes; scale each process's loss so that the
                # average equals the loss normalised by the weight of the whole global batch.
                local = w.sum() if cfg.dice_weight == 0 else torch.ones((), device=device)
                total = _all_reduce_sum(local.detach(), dist_info)
                loss = loss * local * dist_info.world / total.clamp_min(1e-12)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            pending.append((step, loss.detach()))
            step += 1
            t2 = time.perf_counter()
            data_wait += t1 - t0
            compute += t2 - t1
            if step % cfg.log_every == 0 or step == cfg.iterations:
                settle()
                row = {
                    "step": step,
                    "loss": float(np.mean(window)),
                    "lr": opt.param_groups[0]["lr"],
                    "data_wait": data_wait / max(data_wait + compute, 1e-9),
                }
                window.clear()
                if (
                    val_samples
                    and dist_info.main
                    and (step % cfg.val_every == 0 or step == cfg.iterations)
                ):
                    row.update(evaluate_samples(model, val_samples, device, tile, cfg.precision))
                    score = row["val_iou"]
                    if best is None or score > best:
                        best = score
                        save_model(
                            model, out / "best.safetensors", {**meta, "step": step, "val": row}
                        )
                    model.train()
                rows.append(row)
                if callback:
                    callback(step, row)
            if step % cfg.checkpoint_every == 0 or step == cfg.iterations:
                settle()  # never write a state whose losses were not checked
                checkpoint(step)
            if bar is not None:
                bar.update(1)
                if not pending:
                    bar.set_postfix(loss=f"{last_value[0]:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        del it
        if dist_info.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if not (out / "best.safetensors").exists():
        return out / "last.safetensors"
    return out / "best.safetensors"


def _worker_init(_: int) -> None:
    # Workers prepare tiles; one thread each leaves the cores to the training step.
    torch.set_num_threads(1)

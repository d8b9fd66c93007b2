"""The training loop: samples in, a run folder out (:mod:`useg.training.run_folder`).

Reproducibility: the tile of step ``k`` and the dropout mask of step ``k`` depend only on
(seed, k), so a resumed run follows the same trajectory as an uninterrupted one; with the total
number of steps unchanged, a resumed run is the same as one never interrupted.

Several processes (:mod:`useg.training.distributed`): the loss of each process is scaled so that
the averaged gradients equal those of one process with an N times larger batch (the weighted
cross entropy is normalised by the weight of the whole global batch), and only rank 0
validates, writes checkpoints and logs. Batch norm uses per-process statistics on CPU and
SyncBatchNorm on CUDA; dropout masks differ per rank.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg.device import autocast
from useg.errors import ConfigError, InputError
from useg.nets.checkpoint import save_model
from useg.nets.config import UNetConfig
from useg.nets.forward import memory_format
from useg.nets.geometry import output_shape, valid_input_shape
from useg.nets.unet import UNet
from useg.training.config import TrainConfig, lr_factor
from useg.training.distributed import all_reduce_sum, init_distributed, shared_precision
from useg.training.run_folder import (
    LOG,
    STATE,
    check_resumable,
    load_state,
    read_log,
    resume_config,
    write_checkpoint,
    write_config,
)
from useg.training.samples import Sample
from useg.training.stream import TileStream
from useg.training.validation import evaluate_samples

__all__ = ["train"]


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
) -> Path:
    """Train a U-Net on samples and write the run folder; returns the path of ``best`` (or
    ``last`` when there is no validation set).

    With ``resume=True`` the run continues from ``out_dir/state.safetensors``, with the
    configuration saved in ``out_dir/config.json``. ``cfg`` may differ from it only in
    :data:`~useg.training.config.RESUMABLE` settings (anything else raises
    :class:`~useg.errors.ConfigError`): a new
    ``iterations`` extends the run (or ends it earlier, but not before the step reached), and
    the learning-rate schedule is recomputed over the new total; the saved configuration is
    updated.
    """
    from useg.training.losses import SegmentationLoss

    out = Path(out_dir)
    state_path = out / STATE
    resumed_from = None
    if resume:
        check_resumable(out)
        cfg, resumed_from = resume_config(cfg, out)
    elif state_path.exists():
        raise InputError(f"{out}: a run already exists here; use --resume or another --out")
    out.mkdir(parents=True, exist_ok=True)

    net_cfg = UNetConfig.from_dict(cfg.net)
    dist_info, device = init_distributed(cfg.device)
    cfg.precision = shared_precision(cfg.precision, device, dist_info)
    tile = valid_input_shape(net_cfg, cfg.tile, mode="nearest")
    out_tile = output_shape(net_cfg, tile)
    cfg.tile = list(tile)
    if dist_info.main and (not resume or cfg.to_dict() != resumed_from):
        # A resumed run records what it changed, so that the next --resume continues it.
        write_config(out, cfg)

    torch.manual_seed(cfg.seed)
    model = UNet(net_cfg).to(device)
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
    opt = _optimizer(cfg, model.parameters())
    loss_fn = SegmentationLoss(dice_weight=cfg.dice_weight)
    step, best, rows = 0, None, []
    window: list[float] = []  # losses since the last log row
    if resume:
        info = load_state(state_path, model, opt)
        step, best = int(info["step"]), info.get("best")
        window = [float(v) for v in info.get("window", [])]
        # A killed run may have logged past its last checkpoint: drop those rows.
        rows = [r for r in read_log(out / LOG) if int(r["step"]) <= step]

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
        info = {"step": current_step, "best": best, "window": list(window)}
        write_checkpoint(out, model, opt, info, rows, meta)

    # Losses stay on the device until a log row or checkpoint needs them: reading one back is a
    # host sync, which on a GPU would stop the loop from queueing the next step meanwhile.
    pending: list[tuple[int, torch.Tensor]] = []
    last_value = [math.nan]

    def settle() -> None:
        for k, loss_k in pending:
            value = float(all_reduce_sum(loss_k, dist_info)) / dist_info.world
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
            if device.type == "cpu":
                x = x.contiguous(memory_format=fmt)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, step)
            # Dropout of step k depends on (seed, k, rank) only.
            torch.manual_seed(_step_seed(cfg.seed, step, dist_info.rank))
            with autocast(device, cfg.precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y, w)
            if dist_info.world > 1:
                # DDP averages gradients over processes; scale each process's loss so that the
                # average equals the loss normalised by the weight of the whole global batch.
                local = w.sum() if cfg.dice_weight == 0 else torch.ones((), device=device)
                total = all_reduce_sum(local.detach(), dist_info)
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

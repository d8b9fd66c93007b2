"""The run folder: everything a training run writes, and the one reader of its configuration.

A run folder holds ``config.json`` (everything needed to repeat the run: :func:`read_config` is
the one function that reads it), ``log.csv`` (one row per logged step), ``curves.png``,
``last.safetensors`` and ``best.safetensors`` (model files that ``useg predict`` reads) and
``state.safetensors`` (weights, optimizer state and step, with a JSON header: no pickle). Every
file is written atomically (:func:`useg.io.files.atomic_write`), so a run killed at any moment
(even by SIGKILL) resumes from its last complete checkpoint.

A resumed run continues with the saved configuration; :func:`resume_config` says what a
resumed run may change (:data:`useg.training.config.RESUMABLE`) and refuses anything else.
"""

from __future__ import annotations

import csv
import json
import os
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from useg.errors import ConfigError, InputError, one_line
from useg.io.files import atomic_write, read_json, write_json
from useg.nets.checkpoint import save_model
from useg.nets.config import UNetConfig
from useg.nets.geometry import valid_input_shape
from useg.nets.unet import UNet
from useg.training.config import RESUMABLE, TrainConfig

__all__ = [
    "check_resumable",
    "curves_png",
    "load_state",
    "plot_curves",
    "read_config",
    "read_log",
    "resume_config",
    "save_state",
    "saved_config",
    "state_info",
    "write_checkpoint",
    "write_config",
    "write_log",
]

CONFIG = "config.json"
STATE = "state.safetensors"
LOG = "log.csv"
CURVES = "curves.png"


# ----------------------------------------------------------------------------------------------
# The configuration


def read_config(out: str | os.PathLike) -> dict[str, Any]:
    """The saved configuration of the run in ``out`` (its ``config.json``), as a dict.

    Raises :class:`~useg.errors.InputError` when there is none or it is not a complete run
    configuration (a network section that builds a network, settings in their ranges), so that
    a damaged or hand-edited file is one line naming it, not a failure in the middle of a run.
    """
    path = Path(out) / CONFIG
    if not path.is_file():
        raise InputError(f"{out}: nothing to resume (no {CONFIG})")
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise InputError(f"{path}: not a run configuration (a JSON object)")
    net = saved.get("net")
    missing = [k for k in _NET_KEYS if not isinstance(net, dict) or k not in net]
    if missing:
        raise InputError(f"{path}: not a complete run configuration (its network section 'net' "
                         f"lacks {', '.join(missing)})")
    try:
        UNetConfig.from_dict(net)
        TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as exc:  # ValueError: UsegError included
        raise InputError(f"{path}: unreadable run configuration ({one_line(exc)})") from None
    return saved


# The network settings that a run's configuration must state (the others have defaults).
_NET_KEYS = ("ndim", "in_channels", "classes")


def saved_config(out: str | os.PathLike) -> TrainConfig:
    """The saved configuration of the run in ``out``, as a :class:`TrainConfig`."""
    saved = read_config(out)
    try:
        return TrainConfig.from_dict(saved)
    except TypeError as exc:
        raise InputError(f"{Path(out) / CONFIG}: unreadable run configuration ({exc})") from None


def write_config(out: str | os.PathLike, cfg: TrainConfig) -> Path:
    """Save ``cfg`` as the configuration of the run in ``out``."""
    return write_json(Path(out) / CONFIG, cfg.to_dict())


def check_resumable(out: str | os.PathLike) -> None:
    """Raise :class:`~useg.errors.InputError` unless ``out`` holds a trainer state to resume."""
    if not (Path(out) / STATE).exists():
        raise InputError(f"{out}: nothing to resume (no {STATE})")


def resume_config(
    cfg: TrainConfig, out: str | os.PathLike
) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration a run resumed in ``out`` continues with, and the saved one (as a
    dict): the saved run's, with the :data:`RESUMABLE` settings of ``cfg``.

    Raises :class:`ConfigError` naming the first other setting in which ``cfg`` differs, and
    for an ``iterations`` below the step the run has reached.

    A time budget's decision (``budget_decision``) stays: ``cfg.iterations`` equal to the
    iterations it was asked for continues with the iterations it decided, unless ``cfg`` has
    another ``time_budget``, which is then decided again for the rest of the run (of the
    iterations first asked for, unless ``cfg`` changes them).
    """
    out = Path(out)
    path = out / CONFIG
    saved = saved_config(out)

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
        if key in ("budget_decision", "command"):
            continue  # what the run decided, and the command that started it: not settings
        if key not in RESUMABLE and given.get(key) != value:
            raise ConfigError(
                f"{path}: the run was trained with {key} = {json.dumps(value)}, not "
                f"{json.dumps(given.get(key))}; a resumed run may change only "
                f"{', '.join(RESUMABLE)}"
            )
    merged = {**saved_dict, **{k: given[k] for k in RESUMABLE}}
    decision = saved_dict.get("budget_decision")
    if decision and given["time_budget"] != saved_dict.get("time_budget"):
        merged["budget_decision"] = None  # a new budget, for the rest of the run...
        if given["iterations"] == saved_dict["iterations"]:
            merged["iterations"] = decision["asked_iterations"]  # ...of the steps asked for
    elif decision and given["iterations"] == decision.get("asked_iterations"):
        merged["iterations"] = saved_dict["iterations"]  # the steps the budget decided
    step = int(state_info(out / STATE)["step"])
    if merged["iterations"] < step:
        raise ConfigError(
            f"{out}: the run has trained {step} steps already; iterations "
            f"{merged['iterations']} would end before them (give at least that many)"
        )
    return TrainConfig.from_dict(merged), saved_dict


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


def save_state(path: Path, model: UNet, opt: torch.optim.Optimizer, info: dict[str, Any]) -> None:
    """Write the trainer state: weights and optimizer tensors, and ``info`` (step, best score,
    pending losses) with the optimizer's other values as its JSON header."""
    tensors = {
        f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
    }
    opt_tensors, opt_plain = _flatten_optimizer(opt.state_dict())
    tensors.update(opt_tensors)
    header = {"info": info, "optimizer": opt_plain}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"useg_state": json.dumps(header)})


def state_info(path: Path) -> dict[str, Any]:
    """The step, best score and pending losses of a trainer state, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["useg_state"])["info"]
    except Exception as exc:  # any corruption is reported as one line
        raise InputError(f"{path}: cannot resume, trainer state unreadable ({exc})") from None


def load_state(path: Path, model: UNet, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a trainer state into ``model`` and ``opt``; returns its ``info``."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["useg_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # any corruption is reported as one line
        raise InputError(f"{path}: cannot resume, trainer state unreadable ({exc})") from None
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opt.load_state_dict(_unflatten_optimizer(header["optimizer"], tensors))
        return header["info"]
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        # The state of another network than the run's configuration describes (config.json
        # edited, or files of two runs mixed): never resume from part of it.
        raise InputError(f"{path}: cannot resume, the trainer state does not fit the run's "
                         f"network in {path.parent / 'config.json'} "
                         f"({one_line(exc)[:200]})") from None


# ----------------------------------------------------------------------------------------------
# Logs and plots


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the log rows as CSV (the union of their keys as columns)."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a log written by :func:`write_log` (numbers as numbers); none when missing."""
    if not path.exists():
        return []
    try:
        with open(path, newline="") as f:
            rows = [{k: _num(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: unreadable training log ({one_line(exc)})") from None
    # Every row of a log that write_log wrote has its step: anything else was edited or is not
    # a log, and the report and --resume would misread it.
    if any(not isinstance(r.get("step"), int) for r in rows):
        raise InputError(f"{path}: not a training log of useg (a row without its step)")
    return rows


def _num(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def curves_png(rows: list[dict[str, Any]], dpi: int = 90) -> bytes | None:
    """Training loss and validation metrics against the step, as the bytes of a PNG (None
    without matplotlib): ``curves.png`` and the run report (:mod:`useg.report`) draw the
    same figure."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional
        return None
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
    buffer = BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics against the step (:func:`curves_png`), as a PNG
    file."""
    png = curves_png(rows)
    if png is None:
        return
    with atomic_write(path) as tmp:
        tmp.write_bytes(png)


def write_checkpoint(
    out: Path, model: UNet, opt: torch.optim.Optimizer, info: dict[str, Any],
    rows: list[dict[str, Any]], meta: dict[str, Any],
) -> None:
    """Write a checkpoint of the run in ``out``: the log and the curves, ``last.safetensors``
    (a model file with ``meta``), then the trainer state (``info``: step, best score, pending
    losses). The state is written last: a run killed before it resumes from the previous
    state, whose log rows it finds (a resumed run drops the rows past its state's step), so no
    row is lost."""
    write_log(out / LOG, rows)
    plot_curves(rows, out / CURVES)
    save_model(model, out / "last.safetensors", {**meta, "step": info["step"]})
    save_state(out / STATE, model, opt, info)

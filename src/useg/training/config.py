"""What defines a training run (:class:`TrainConfig`, saved as the run's ``config.json``) and its
learning-rate schedule.

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

A time budget (``time_budget``, seconds) is decided once, after the first steps are timed
(:func:`useg.training.loop.train`): ``iterations`` becomes what fits, the schedule runs over that
total from then on, and ``budget_decision`` records the decision and its reason; a resumed run
keeps it. The settings a recipe sets (:mod:`useg.training.recipes`) default to the papers'
(:data:`~useg.training.recipes.PAPER`); ``recipe`` records the recipe a run was built from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from useg.device import check_precision
from useg.errors import ConfigError, check_choice
from useg.io import normalize as norm
from useg.training.options import TrainOptions, check_ranges
from useg.training.recipes import PAPER

__all__ = ["OPTIMIZERS", "RESUMABLE", "SCHEDULES", "SIGMA_UNIT", "TrainConfig", "lr_factor"]

OPTIMIZERS = ("sgd", "adam", "adamw")
SIGMA_UNIT = "pixels (finest axis)"
SCHEDULES = ("constant", "poly", "cosine")
# Settings a resumed run may change: how it is executed and how long it runs, not what a step
# computes. (With a batch of several tiles, which loader worker prepares a tile does not decide
# its step either: see useg.training.stream.TileStream.)
RESUMABLE = ("iterations", "workers", "device", "time_budget")


# The settings that useg train and densify expose take their defaults from the command line's
# (TrainOptions, which needs no torch): one default per setting. Those a recipe sets are None
# there ("the recipe's") and the papers' here.
_CLI = TrainOptions()


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as the run's ``config.json``)."""

    net: dict[str, Any] = field(default_factory=lambda: {"ndim": 2})
    tile: Sequence[int] | int = 572
    iterations: int = PAPER["iterations"]
    batch_size: int = _CLI.batch_size
    optimizer: str = PAPER["optimizer"]
    lr: float | None = _CLI.lr  # None: 0.01 for SGD, 1e-3 for Adam/AdamW
    momentum: float = PAPER["momentum"]
    weight_decay: float = _CLI.weight_decay
    schedule: str = PAPER["schedule"]
    warmup: int = 0
    # "auto": see useg.device.resolve_precision; train() records the precision it resolved to.
    precision: str = _CLI.precision
    grad_clip: float | None = _CLI.grad_clip
    dice_weight: float = 0.0
    augment: dict[str, Any] | None = field(default_factory=dict)
    label_mode: str = "binary"
    unlabeled: int | None = _CLI.unlabeled
    boundary_width: int = _CLI.boundary_width
    # The voxel size overriding the files' (recorded in the model header).
    spacing: Sequence[float] | None = _CLI.spacing
    w0: float = 10.0  # the paper's border weight amplitude
    sigma: float = _CLI.sigma  # pixels of the finest axis (useg.training.samples.make_sample)
    class_balance: bool = True
    normalization: dict[str, Any] = field(default_factory=lambda: dict(norm.DEFAULT))
    val_every: int = _CLI.val_every
    checkpoint_every: int = _CLI.checkpoint_every
    log_every: int = _CLI.log_every
    seed: int = _CLI.seed
    # Loader processes making the training tiles; 0: the training process makes them.
    workers: int = 1
    device: str = _CLI.device
    labels: dict[str, Any] = field(default_factory=dict)  # class names etc., for the model file
    # The recipe the configuration was built from: name, why it was chosen, the settings given
    # explicitly over it (useg.training.from_folders.make_config); None: none.
    recipe: dict[str, Any] | None = None
    # Seconds the run may take (from the start of useg train, or of train()): after timing the
    # first steps, iterations becomes what fits (useg.training.loop.train).
    time_budget: float | None = _CLI.time_budget
    # What the time budget decided, and why (asked and decided iterations, measured seconds).
    budget_decision: dict[str, Any] | None = None
    # The command line that started the run (``useg train ...``, as its words), so that its
    # report can say how to repeat it; None: not started from the command line, or by a useg
    # that did not record it. A resumed run keeps it.
    command: list[str] | None = None
    # The model the run started from (fine-tuning, ``useg train --init``): ``model`` as given,
    # ``file`` the model file it named; the network is that model's. None: He initialisation.
    init: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        # The ranges useg train checks on its command line, so that Python users get the same
        # one-line error (the Dice weight is named dice_weight here).
        values = {k: v for k, v in vars(self).items() if k != "dice_weight"}
        check_ranges({**values, "dice": self.dice_weight}, names={"dice": "dice_weight"})
        check_precision(self.precision)
        if self.recipe is not None and not (
                isinstance(self.recipe, dict) and isinstance(self.recipe.get("name"), str)):
            raise ConfigError(f"recipe must be a record with a name, got {self.recipe!r}")
        if self.budget_decision is not None and not isinstance(self.budget_decision, dict):
            raise ConfigError(f"budget_decision must be a record, got {self.budget_decision!r}")
        if self.command is not None and not (
                isinstance(self.command, list) and all(isinstance(w, str) for w in self.command)):
            raise ConfigError(f"command must be a list of words, got {self.command!r}")
        if self.init is not None and not (
                isinstance(self.init, dict) and isinstance(self.init.get("file"), str)):
            raise ConfigError(f"init must be a record with the model's file, got {self.init!r}")
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

    def sample_options(
        self, slices: Mapping[int, Sequence[int]] | None = None
    ) -> dict[str, Any]:
        """The options of :func:`useg.training.samples.make_sample` (and ``load_pairs``) that
        this run's samples are built with; ``slices`` are the annotated slices, if sparse."""
        return dict(
            mode=self.label_mode, unlabeled=self.unlabeled, slices=slices, w0=self.w0,
            sigma=self.sigma, class_balance=self.class_balance,
            boundary_width=self.boundary_width,
            classes=self.net.get("classes"),  # the label values of mode "classes" are checked
            # The normalisation the model file records, so that predicting a file sees what
            # training saw.
            normalization=self.normalization,
        )


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` relative to ``cfg.lr``: warm-up, then the schedule."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = step / cfg.iterations
    if cfg.schedule == "poly":
        return (1 - t) ** 0.9
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    return 1.0

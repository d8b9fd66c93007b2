"""``useg train``: train a U-Net on annotated images or sparsely annotated volumes."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from useg.cli import add_precision_argument, float_range, int_at_least, out_path
from useg.errors import ConfigError
from useg.training.options import RANGES, TrainOptions, parse_duration
from useg.training.recipes import RECIPE_CHOICES, RECIPES, augment_words, recipe_settings

_DEFAULTS = TrainOptions()


def parse_spacing(text: str) -> tuple[float, ...]:
    """``"50,4,4"`` -> (50.0, 4.0, 4.0): voxel size per spatial axis ((Z,) Y, X)."""
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"spacing must be numbers like 50,4,4, got {text!r}") from None
    if not values or not all(v > 0 and v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"spacing must be positive numbers, got {text!r}")
    return values


def duration(text: str) -> float:
    """``"20m"`` -> 1200.0 seconds (argparse type of ``--time-budget``)."""
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _recipes_help() -> str:
    lines = []
    for name, recipe in RECIPES.items():
        dims = sorted(recipe["by_ndim"]) or (2,)
        parts = []
        for ndim in dims:
            s = recipe_settings(name, ndim)
            net = (f"width {s['width']}, depth {s['depth']}, tile {s['tile'][0]}"
                   if "width" in s else "the preset's network and tile")
            extra = f", Dice term {s['dice_weight']:g}" if s.get("dice_weight") else ""
            extra += augment_words(s.get("augment", {}))
            parts.append(f"{ndim}D: {net}, {s['optimizer']}, {s['iterations']} steps{extra}")
        lines.append(f"{name}: {recipe['about']} ({'; '.join(parts)})")
    return "; ".join(lines)


def _typed(name: str) -> Any:
    """The argparse type of the numeric training setting ``name``: its range in
    :data:`useg.training.options.RANGES`, which TrainOptions and TrainConfig check too."""
    integer, low, high, low_open, high_open = RANGES[name]
    if integer:
        return int_at_least(int(low)) if low > float("-inf") else int
    return float_range(low, high, low_open=low_open, high_open=high_open)


def add_common_training_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``useg train`` and ``useg densify``."""
    g = p.add_argument_group("recipe")
    g.add_argument("--recipe", default=_DEFAULTS.recipe, choices=RECIPE_CHOICES,
                   help="network, tile, optimizer and steps in one name; options given "
                   "explicitly override its single settings. auto (default): cpu-fast on the "
                   "CPU, gpu-paper on a CUDA GPU. " + _recipes_help())
    g.add_argument("--time-budget", type=duration, metavar="DURATION",
                   default=_DEFAULTS.time_budget,
                   help="e.g. 90s, 20m, 1.5h: after timing the first steps, the run trains only "
                   "the steps that fit (its learning-rate schedule then ends at the last of "
                   "them); recorded in config.json. With --resume, a new budget for the rest")
    g.add_argument("--init", metavar="MODEL", default=_DEFAULTS.init,
                   help="fine-tune: start from this model's weights (a .safetensors file, a run "
                   "folder or a packaged model name such as em-membrane); the network and its "
                   "normalisation are the model's, and its label mode unless --label-mode is "
                   "given (with the same number of classes); the recipe's other settings "
                   "apply. Network options are refused with it")
    g = p.add_argument_group("network")
    g.add_argument("--preset", default=_DEFAULTS.preset, choices=["ronneberger2015", "cicek2016"],
                   help="network preset (default: ronneberger2015 for 2D data, cicek2016 for 3D)")
    g.add_argument("--width", type=_typed("width"),
                   help="channels of the first level (default: the recipe's, else the preset's)")
    g.add_argument("--depth", type=_typed("depth"), help="number of poolings (as --width)")
    g.add_argument("--padding", choices=["valid", "same"],
                   help="convolution padding (as --width)")
    g.add_argument("--norm", choices=["none", "batch", "instance"],
                   help="normalisation (as --width)")
    g.add_argument("--dropout", type=_typed("dropout"),
                   help="dropout at the end of the contracting path")
    g.add_argument("--pool", help="per-level pooling, e.g. 1x2x2,2x2x2,2x2x2 (default: from "
                   "the voxel spacing, see useg.nets.geometry.anisotropic_pools)")
    stats = g.add_mutually_exclusive_group()
    stats.add_argument("--batch-stats", dest="batch_stats", action="store_const", const=True,
                       default=None, help="batch norm uses the statistics of the current batch, "
                       "also when predicting: the output then depends on the tile, so the model "
                       "predicts only in one pass over the whole image")
    stats.add_argument("--running-stats", dest="batch_stats", action="store_const", const=False,
                       help="batch norm uses the running averages of training when predicting "
                       "(default; seamless overlap tiles)")
    g = p.add_argument_group("training")
    g.add_argument("--tile", type=_typed("tile"), nargs="+",
                   help="input tile size in pixels (voxels in 3D; one value, or one per axis), "
                   "rounded to a valid one (default: the recipe's, else the paper's)")
    g.add_argument("--iterations", type=_typed("iterations"), default=_DEFAULTS.iterations,
                   help="training steps (default: the recipe's); with --resume, a new total "
                   "extends a finished or interrupted run (the learning-rate schedule is then "
                   "recomputed over the new total from the step reached)")
    g.add_argument("--batch-size", type=_typed("batch_size"), default=_DEFAULTS.batch_size)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=_DEFAULTS.optimizer,
                   help="default: the recipe's")
    g.add_argument("--lr", type=_typed("lr"), default=_DEFAULTS.lr,
                   help="learning rate (default: the recipe's for its optimizer, else 0.01 for "
                   "SGD, 1e-3 for Adam)")
    g.add_argument("--momentum", type=_typed("momentum"), default=_DEFAULTS.momentum,
                   help="SGD momentum (default 0.99)")
    g.add_argument("--weight-decay", type=_typed("weight_decay"),
                   default=_DEFAULTS.weight_decay)
    g.add_argument("--schedule", choices=["constant", "poly", "cosine"],
                   default=_DEFAULTS.schedule, help="default: the recipe's (poly)")
    add_precision_argument(g)
    g.add_argument("--grad-clip", type=_typed("grad_clip"), default=_DEFAULTS.grad_clip)
    g.add_argument("--dice", type=_typed("dice"), default=_DEFAULTS.dice,
                   help="weight of a soft Dice term beside the weighted cross entropy "
                   "(default: the recipe's, else 0)")
    g.add_argument("--no-augment", action="store_true",
                   help="no augmentation at all (default: the recipe's, else all of it)")
    g.add_argument("--no-elastic", action="store_true",
                   help="augmentation without its elastic deformation: rotations, flips, "
                        "scaling and gray values (also for a recipe without augmentation)")
    g.add_argument("--w0", type=_typed("w0"), default=_DEFAULTS.w0,
                   help="border weight amplitude (0: off; default: the recipe's, else 10, "
                   "the paper's)")
    g.add_argument("--sigma", type=_typed("sigma"), default=_DEFAULTS.sigma,
                   help="border weight width, in pixels of the finest axis whatever the files' "
                   "calibration (coarser axes count their spacing relative to it)")
    g.add_argument("--no-class-balance", action="store_true",
                   help="weigh the classes alike: no class-frequency weights (w_c) in the "
                   "weight map (default: the recipe's, else they are on)")
    g.add_argument("--label-mode",
                   choices=["binary", "instances", "three_class", "boundary", "classes"],
                   default=_DEFAULTS.label_mode, help="meaning of label values (default: "
                   "binary in 2D, "
                   "boundary in 3D)")
    g.add_argument("--unlabeled", type=_typed("unlabeled"), default=_DEFAULTS.unlabeled,
                   help="label value of unannotated pixels (weight 0)")
    g.add_argument("--boundary-width", type=_typed("boundary_width"),
                   default=_DEFAULTS.boundary_width,
                   help="thickness of the boundary class in label modes 'boundary' and "
                   "'three_class', in pixels (voxels in 3D, whatever their spacing)")
    g.add_argument("--spacing", type=parse_spacing, metavar="Z,Y,X",
                   help="voxel size in any one unit for all axes, e.g. 50,4,4 (nm): only the "
                   "ratios matter for training (pooling, rotations, the border weights); "
                   "overrides the files' calibration; stored in the model")
    g.add_argument("--slices", nargs="+", metavar="AXIS=I,J",
                   help="only these slices are annotated, e.g. z=10,40 y=64 x=20")
    g.add_argument("--val-every", type=_typed("val_every"), default=_DEFAULTS.val_every)
    g.add_argument("--log-every", type=_typed("log_every"), default=_DEFAULTS.log_every)
    g.add_argument("--checkpoint-every", type=_typed("checkpoint_every"),
                   default=_DEFAULTS.checkpoint_every)
    g.add_argument("--workers", type=_typed("workers"), default=_DEFAULTS.workers,
                   help="processes making the training tiles beside the training step; 0: "
                   "the training process makes them (default: the recipe's, else 1)")
    g.add_argument("--seed", type=_typed("seed"), default=_DEFAULTS.seed)
    g.add_argument("--device", default=_DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a U-Net",
        description="Train a U-Net on images and label images matched by file name (PNG or "
        "TIFF; 2D images or 3D stacks). Writes a run folder with config.json, log.csv, "
        "curves.png, last.safetensors, best.safetensors and report.html (useg report); "
        "--resume continues it.",
    )
    record_given_options(p)
    p.add_argument("--images", type=Path, help="folder (or file) of training images")
    p.add_argument("--labels", type=Path, help="folder (or file) of label images")
    p.add_argument("--val-images", type=Path, help="validation images")
    p.add_argument("--val-labels", type=Path, help="validation labels")
    p.add_argument("--out", type=out_path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    add_common_training_args(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# --resume: the options a command line gave (useg.training.from_folders checks them against the
# saved run)

RESUME_HELP = (
    "continue the run in --out with its saved configuration (its recipe and any time budget's "
    "decision included); --iterations may extend it, --time-budget gives the rest of it a new "
    "budget, --workers, --device and --quiet may change, any other option that differs from "
    "the saved run is refused"
)


def _recording(base: type[argparse.Action]) -> type[argparse.Action]:
    class Recording(base):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            super().__call__(parser, namespace, values, option_string)
            if option_string is not None:  # positionals are called even when absent
                given = getattr(namespace, "given_options", ())
                namespace.given_options = (*given, (self.dest, option_string))

    return Recording


def record_given_options(p: argparse.ArgumentParser) -> None:
    """Make ``p`` list the options its command line gave in ``args.given_options`` as
    ``(dest, flag)`` pairs, in order: argparse's defaults do not tell "given" from "default".

    Call it before adding arguments (it wraps the action classes the parser looks up).
    """
    for name in (None, "store", "store_const", "store_true", "store_false", "append", "count"):
        # argparse has no public lookup of its action classes; _registry_get is that lookup.
        p.register("action", name, _recording(p._registry_get("action", name)))
    p.set_defaults(given_options=())


def training_options(args: argparse.Namespace) -> TrainOptions:
    """The training options of parsed arguments (of ``useg train`` or ``useg densify``)."""
    return TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)})


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()  # a time budget counts from here, torch's import included
    from useg.workflows.tune_instances import train_and_tune

    best, instances = train_and_tune(
        args.out, images=args.images, labels=args.labels, val_images=args.val_images,
        val_labels=args.val_labels, options=training_options(args), resume=args.resume,
        given=args.given_options, progress=not args.quiet, say=print, started=started,
        command=["useg", *args.argv] if hasattr(args, "argv") else None,
    )
    print(f"model: {best}")
    if instances is not None:
        settings = ", ".join(f"{k} {v}" for k, v in instances["params"].items())
        print(f"instances: {settings} ({instances['chosen_on']}); stored in the model for "
              "useg predict --instances")
    return 0

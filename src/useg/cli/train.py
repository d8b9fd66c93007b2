"""``useg train``: train a U-Net on annotated images or sparsely annotated volumes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from useg.cli import add_precision_argument
from useg.errors import ConfigError, InputError


def parse_slices(items: list[str] | None, ndim: int) -> dict[int, list[int]] | None:
    """``["z=10,40", "y=64"]`` -> {axis: [indices]} for the spatial axes of an ndim volume."""
    if not items:
        return None
    names = "ZYX"[3 - ndim:]
    result: dict[int, list[int]] = {}
    for item in items:
        name, _, values = item.partition("=")
        name = name.strip().upper()
        if name not in names or not values:
            raise ConfigError(f"--slices expects AXIS=i,j with AXIS in {names}, got {item!r}")
        try:
            result.setdefault(names.index(name), []).extend(int(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"--slices: indices must be integers, got {item!r}") from None
    return result


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


def add_common_training_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``useg train`` and ``useg densify``."""
    g = p.add_argument_group("network")
    g.add_argument("--preset", default=None, choices=["ronneberger2015", "cicek2016"],
                   help="network preset (default: ronneberger2015 for 2D data, cicek2016 for 3D)")
    g.add_argument("--width", type=int, help="channels of the first level (preset's by default)")
    g.add_argument("--depth", type=int, help="number of poolings")
    g.add_argument("--padding", choices=["valid", "same"], help="convolution padding")
    g.add_argument("--norm", choices=["none", "batch", "instance"], help="normalisation")
    g.add_argument("--dropout", type=float, help="dropout at the end of the contracting path")
    g.add_argument("--pool", help="per-level pooling, e.g. 1x2x2,2x2x2,2x2x2 (default: from "
                   "the voxel spacing, see useg.nets.anisotropic_pools)")
    stats = g.add_mutually_exclusive_group()
    stats.add_argument("--batch-stats", dest="batch_stats", action="store_const", const=True,
                       default=None, help="batch norm uses the statistics of the current batch, "
                       "also when predicting: the output then depends on the tile, so the model "
                       "predicts only in one pass over the whole image")
    stats.add_argument("--running-stats", dest="batch_stats", action="store_const", const=False,
                       help="batch norm uses the running averages of training when predicting "
                       "(default; seamless overlap tiles)")
    g = p.add_argument_group("training")
    g.add_argument("--tile", type=int, nargs="+", help="input tile size (rounded to a valid one)")
    g.add_argument("--iterations", type=int, default=2000,
                   help="training steps (default 2000); with --resume, a new total extends a "
                   "finished or interrupted run (the learning-rate schedule is then recomputed "
                   "over the new total from the step reached)")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    g.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 0.01 for SGD with momentum 0.99, 1e-3 for Adam)")
    g.add_argument("--momentum", type=float, default=0.99)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--schedule", choices=["constant", "poly", "cosine"], default="poly")
    add_precision_argument(g)
    g.add_argument("--grad-clip", type=float, default=None)
    g.add_argument("--dice", type=float, default=0.0, help="weight of a soft Dice term")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    g.add_argument("--no-elastic", action="store_true", help="no elastic deformation")
    g.add_argument("--w0", type=float, default=10.0, help="border weight amplitude (0: off)")
    g.add_argument("--sigma", type=float, default=5.0,
                   help="border weight width, in pixels of the finest axis whatever the files' "
                   "calibration (coarser axes count their spacing relative to it)")
    g.add_argument("--no-class-balance", action="store_true")
    g.add_argument("--label-mode", choices=["binary", "instances", "boundary", "classes"],
                   default=None, help="meaning of label values (default: binary in 2D, "
                   "boundary in 3D)")
    g.add_argument("--unlabeled", type=int, default=None,
                   help="label value of unannotated pixels (weight 0)")
    g.add_argument("--boundary-width", type=int, default=1,
                   help="thickness of the boundary class in label mode 'boundary'")
    g.add_argument("--spacing", type=parse_spacing, metavar="Z,Y,X",
                   help="voxel size, e.g. 50,4,4 (overrides the files'; stored in the model)")
    g.add_argument("--slices", nargs="+", metavar="AXIS=I,J",
                   help="only these slices are annotated, e.g. z=10,40 y=64 x=20")
    g.add_argument("--val-every", type=int, default=200)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--checkpoint-every", type=int, default=100)
    g.add_argument("--workers", type=int, default=1, help="data worker processes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a U-Net",
        description="Train a U-Net on images and label images matched by file name (PNG or "
        "TIFF; 2D images or 3D stacks). Writes a run folder with config.json, log.csv, "
        "curves.png, last.safetensors and best.safetensors; --resume continues it.",
    )
    record_given_options(p)
    p.add_argument("--images", type=Path, help="folder (or file) of training images")
    p.add_argument("--labels", type=Path, help="folder (or file) of label images")
    p.add_argument("--val-images", type=Path, help="validation images")
    p.add_argument("--val-labels", type=Path, help="validation labels")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    add_common_training_args(p)
    p.set_defaults(func=run)


def _pool(text: str | None, ndim: int) -> list[list[int]] | None:
    if not text:
        return None
    try:
        levels = [[int(v) for v in level.lower().split("x")] for level in text.split(",")]
    except ValueError:
        raise ConfigError(f"--pool expects e.g. 1x2x2,2x2x2, got {text!r}") from None
    if any(len(level) != ndim for level in levels):
        raise ConfigError(f"--pool: each level needs {ndim} factors, got {text!r}")
    return levels


def _data_ndim(path: Path) -> int:
    """Spatial dimensions of the first image under ``path`` (2 for images, 3 for stacks)."""
    from useg import io

    files = io.list_images(path)
    if not files:
        raise InputError(f"{path}: no PNG or TIFF images found")
    image, _ = io.read_image(files[0])
    return image.ndim - 1


def build_config(
    args: argparse.Namespace, ndim: int, in_channels: int,
    spacing: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Network and training configuration (as TrainConfig keyword arguments) from options.

    ``spacing`` is the voxel size the data files state; ``--spacing`` overrides it. Without
    ``--pool``, anisotropic spacing chooses the pooling per level
    (:func:`useg.nets.anisotropic_pools`).
    """
    from useg.nets import PRESETS, anisotropic_pools

    name = args.preset or ("cicek2016" if ndim == 3 else "ronneberger2015")
    net = dict(PRESETS[name])
    if net["ndim"] != ndim:
        raise ConfigError(f"preset {name} is {net['ndim']}D but the data are {ndim}D")
    label_mode = args.label_mode or ("boundary" if ndim == 3 else "binary")
    net.update(in_channels=in_channels, classes=2 if label_mode != "classes" else net["classes"])
    for key in ("width", "depth", "padding", "norm", "dropout", "batch_stats"):
        if getattr(args, key, None) is not None:
            net[key] = getattr(args, key)
    override = getattr(args, "spacing", None)
    # A 2D network on the slices of stacks takes the stacks' three values.
    if override is not None and len(override) not in ((3,) if ndim == 3 else (ndim, ndim + 1)):
        raise ConfigError(f"--spacing needs {ndim} values for {ndim}D data, got {len(override)}")
    spacing = override if override is not None else spacing
    pool = _pool(args.pool, ndim)
    if pool is None and spacing is not None:
        levels = anisotropic_pools(spacing[-ndim:], net["depth"])
        if any(f != 2 for level in levels for f in level):
            pool = [list(level) for level in levels]
    if pool is not None:
        net["pool"] = pool
        net["depth"] = len(pool)
    from useg.nets import UNetConfig, min_input_shape

    cfg = UNetConfig(**net)
    tile = args.tile
    if tile is None:
        tile = [572] * 2 if ndim == 2 else [116, 132, 132]
    elif len(tile) == 1:
        tile = tile * ndim
    elif len(tile) != ndim:
        raise ConfigError(f"--tile needs 1 or {ndim} sizes")
    tile = [max(t, m) for t, m in zip(tile, min_input_shape(cfg), strict=True)]
    augment = None if args.no_augment else {"elastic": not args.no_elastic}
    return dict(
        net=cfg.to_dict(), tile=tile, iterations=args.iterations, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, precision=args.precision,
        grad_clip=args.grad_clip, dice_weight=args.dice, augment=augment,
        label_mode=label_mode, unlabeled=args.unlabeled, boundary_width=args.boundary_width,
        spacing=list(override) if override is not None else None, w0=args.w0, sigma=args.sigma,
        class_balance=not args.no_class_balance, val_every=args.val_every,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, seed=args.seed,
        workers=args.workers,
        device=args.device,
    )


def sample_options(cfg: dict[str, Any], slices: dict[int, list[int]] | None) -> dict[str, Any]:
    return dict(
        mode=cfg["label_mode"], unlabeled=cfg["unlabeled"], slices=slices, w0=cfg["w0"],
        sigma=cfg["sigma"], class_balance=cfg["class_balance"],
        boundary_width=cfg.get("boundary_width", 1),
        # The normalisation the model file records, so that predicting a file sees what
        # training saw.
        normalization=cfg.get("normalization"),
    )


def saved_run(out: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The saved configuration of the run in ``out``, its recorded data paths, and the file."""
    config_path = out / "config.json"
    if not config_path.exists():
        raise InputError(f"{out}: nothing to resume (no config.json)")
    try:
        saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{config_path}: corrupt run configuration ({exc})") from None
    return saved, saved.get("labels", {}).get("data") or {}, config_path


# ----------------------------------------------------------------------------------------------
# --resume: the options a command line gave, and whether they agree with the saved run

RESUME_HELP = (
    "continue the run in --out with its saved configuration; --iterations may extend it, "
    "--workers, --device and --quiet may change, any other option that differs from the saved "
    "run is refused"
)
# Options a resumed run honours: they change how the run is executed or how long it is, not
# what each step computes (--iterations: see useg.train.train).
_RESUME_FREE = frozenset({"iterations", "workers", "device", "quiet", "resume", "out"})


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


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


# Stands for the saved value of an option that has no counterpart in the saved run.
_NO_COUNTERPART = object()


def _resume_values(dest: str, args: argparse.Namespace, saved: dict[str, Any]) -> tuple:
    """(what the option asks for, what the saved run has) in comparable form."""
    from useg.nets import PRESETS, UNetConfig, valid_input_shape

    value = getattr(args, dest)
    net = saved.get("net") or {}
    ndim = int(net.get("ndim", 2))
    data = (saved.get("labels") or {}).get("data") or {}
    same_key = {"batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                "precision", "grad_clip", "label_mode", "unlabeled", "boundary_width", "w0",
                "sigma", "val_every", "checkpoint_every", "log_every", "seed"}
    if dest == "precision" and value == "auto":
        return saved.get(dest), saved.get(dest)  # the run keeps the precision it resolved to
    if dest in same_key:
        return value, saved.get(dest)
    if dest in ("width", "depth", "padding", "norm", "dropout", "batch_stats"):
        return value, net.get(dest)
    if dest == "dice":
        return value, saved.get("dice_weight")
    if dest == "no_class_balance":
        return "off", "on" if saved.get("class_balance", True) else "off"
    augment = saved.get("augment")
    if dest == "no_augment":
        return "off", "on" if augment is not None else "off"
    if dest == "no_elastic":
        return "off", "on" if augment is not None and augment.get("elastic", True) else "off"
    if dest == "spacing":
        return [float(v) for v in value], saved.get("spacing")
    if dest == "pool":
        return _pool(value, ndim), net.get("pool")
    if dest == "slices":
        return json.loads(json.dumps(parse_slices(value, ndim))), data.get("slices")
    if dest == "tile":
        tile = list(value) * ndim if len(value) == 1 else list(value)
        recorded = saved.get("tile")
        if tile != recorded and len(tile) == ndim:
            # The run saved its tile rounded to a valid one: the value that was given rounds
            # to it too.
            rounded = list(valid_input_shape(UNetConfig.from_dict(net), tile, mode="nearest"))
            tile = recorded if rounded == recorded else tile
        return tile, recorded
    if dest == "preset":
        # Only the options that override a preset's values may differ from the preset's.
        kept = ("in_channels", "classes", "width", "depth", "padding", "norm", "dropout",
                "batch_stats", "pool")
        recorded = next(
            (name for name, values in PRESETS.items()
             if values["ndim"] == ndim and UNetConfig(
                 **{**values, **{k: net[k] for k in kept if k in net}}).to_dict() == net),
            "another network",
        )
        return value, recorded
    if dest in ("images", "labels", "val_images", "val_labels"):
        recorded = data.get(dest)
        same = recorded is not None and value.resolve() == Path(recorded).resolve()
        return (recorded if same else str(value)), recorded
    return value, _NO_COUNTERPART


def check_resume_options(
    args: argparse.Namespace, saved: dict[str, Any], config_path: Path,
    free: frozenset[str] = frozenset(),
) -> None:
    """Refuse, naming the option, an option given with ``--resume`` that differs from the saved
    run (``free``: more options the command handles itself)."""
    for dest, flag in args.given_options:
        if dest in _RESUME_FREE or dest in free:
            continue
        wanted, recorded = _resume_values(dest, args, saved)
        if recorded is _NO_COUNTERPART:
            raise ConfigError(f"{config_path}: {flag} cannot change when resuming; leave it out, "
                              "or start a new run with another --out")
        if wanted != recorded:
            raise ConfigError(
                f"{config_path}: {flag} {_show(wanted)} differs from the saved run's "
                f"{_show(recorded)}; --resume continues the run as saved (leave {flag} out, or "
                "start a new run with another --out)"
            )


def resumed_config(args: argparse.Namespace, saved: dict[str, Any]) -> Any:
    """The saved run's :class:`~useg.train.TrainConfig` with the options a resumed run honours
    (:data:`useg.train.RESUMABLE`) taken from the command line where it gave them."""
    from useg.train import RESUMABLE, TrainConfig

    cfg = TrainConfig.from_dict(saved)
    for dest, _ in args.given_options:
        if dest in RESUMABLE:
            setattr(cfg, dest, getattr(args, dest))
    return cfg


def run(args: argparse.Namespace) -> int:
    from useg.data import load_pairs
    from useg.train import TrainConfig, train

    if args.resume:
        saved, data, config_path = saved_run(args.out)
        if not data:
            raise InputError(f"{config_path}: no data paths recorded; cannot resume")
        check_resume_options(args, saved, config_path)
        cfg = resumed_config(args, saved)
    else:
        if args.images is None or args.labels is None:
            raise ConfigError("--images and --labels are required (or --resume)")
        for p in (args.images, args.labels, args.val_images, args.val_labels):
            if p is not None and not p.exists():
                raise InputError(f"{p}: no such file or folder")
        if (args.val_images is None) != (args.val_labels is None):
            raise ConfigError("--val-images and --val-labels go together")
        from useg import io

        first, first_meta = io.read_image(io.list_images(args.images)[0]) if io.list_images(
            args.images) else (None, {})
        if first is None:
            raise InputError(f"{args.images}: no PNG or TIFF images found")
        ndim = first.ndim - 1
        if ndim == 3 and args.preset == "ronneberger2015":
            ndim = 2  # a 2D network trained on the slices of stacks
        kwargs = build_config(args, ndim, first.shape[0], first_meta.get("spacing"))
        data = {
            "images": str(args.images), "labels": str(args.labels),
            "val_images": str(args.val_images) if args.val_images else None,
            "val_labels": str(args.val_labels) if args.val_labels else None,
            "slices": parse_slices(args.slices, ndim),
        }
        kwargs["labels"] = {"mode": kwargs["label_mode"], "classes": ["background", "foreground"]
                            if kwargs["label_mode"] != "boundary" else ["interior", "boundary"],
                            "data": data}
        cfg = TrainConfig(**kwargs)
    net = cfg.net
    slices = data.get("slices")
    if slices:
        slices = {int(k): v for k, v in slices.items()}
    opts = sample_options(cfg.to_dict(), slices)
    samples = load_pairs(data["images"], data["labels"], ndim=net["ndim"],
                         in_channels=net["in_channels"], spacing=cfg.spacing, **opts)
    val = None
    if data.get("val_images"):
        val = load_pairs(data["val_images"], data["val_labels"], ndim=net["ndim"],
                         in_channels=net["in_channels"], spacing=cfg.spacing,
                         **{**opts, "slices": None})
    best = train(cfg, samples, args.out, val_samples=val, resume=args.resume,
                 progress=not args.quiet)
    print(f"model: {best}")
    return 0

"""``useg densify``: segment a whole volume from a few annotated slices of it (semi-automated)."""

from __future__ import annotations

import argparse
from pathlib import Path

from useg.errors import ConfigError, InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from useg.cli.train import RESUME_HELP, add_common_training_args, record_given_options

    p = sub.add_parser(
        "densify", help="dense segmentation of a volume from a few annotated slices",
        description="Train a 3D U-Net on the annotated voxels of one volume (a label volume "
        "with an --unlabeled value, or dense labels of which only --slices count) and write the "
        "dense segmentation of the same volume: OUT/<name>_labels.tif (most likely class) and "
        "OUT/<name>_probs.tif (class probabilities). OUT is a training run folder as for "
        "'useg train'; --resume continues an interrupted run.",
    )
    record_given_options(p)
    p.add_argument("volume", nargs="?", type=Path, help="image volume (TIFF stack)")
    p.add_argument("--labels", type=Path, help="sparse annotation, same shape as the volume")
    p.add_argument("--out", type=Path, required=True, help="run and output folder")
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("--no-probs", action="store_true", help="write the label volume only")
    add_common_training_args(p)
    p.set_defaults(func=run)


def _classes(labels, unlabeled: int | None, name: Path) -> int:
    """Number of classes of a ``classes`` annotation: its largest annotated value plus one."""
    import numpy as np

    values = labels[labels != unlabeled] if unlabeled is not None else labels
    if values.size == 0:
        raise InputError(f"{name}: no annotated voxel (every voxel is --unlabeled {unlabeled})")
    if int(values.min()) < 0:
        raise InputError(f"{name}: class labels must be >= 0 (use --unlabeled for unannotated "
                         "voxels)")
    return max(2, int(np.max(values)) + 1)


def _same(a: Path | None, b: str) -> bool:
    return a is None or a.resolve() == Path(b).resolve()


def run(args: argparse.Namespace) -> int:
    from useg import io
    from useg.cli.train import (
        build_config,
        check_resume_options,
        parse_slices,
        resumed_config,
        saved_run,
    )
    from useg.densify import densify
    from useg.train import TrainConfig

    if args.resume:
        saved, data, config_path = saved_run(args.out)
        if "volume" not in data:
            raise InputError(f"{config_path}: not a 'useg densify' run; cannot resume")
        if not (_same(args.volume, data["volume"]) and _same(args.labels, data["labels"])):
            raise ConfigError(f"{args.out} densifies {data['volume']} with {data['labels']}; "
                              "--resume continues it (omit VOLUME and --labels)")
        # VOLUME and --labels are checked above; --no-probs only chooses the outputs.
        check_resume_options(args, saved, config_path, free=frozenset({"labels", "no_probs"}))
        volume, labels_path = Path(data["volume"]), Path(data["labels"])
        cfg = resumed_config(args, saved)
    else:
        if args.volume is None or args.labels is None:
            raise ConfigError("VOLUME and --labels are required (or --resume with --out)")
        volume, labels_path = args.volume, args.labels
    for path in (volume, labels_path):
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.is_dir():
            raise InputError(f"{path}: a folder; densify takes one volume file")
    image, meta = io.read_image(volume)
    labels, _ = io.read_labels(labels_path)
    if image.shape[1:] != labels.shape:
        raise InputError(
            f"{labels_path}: annotation of shape {labels.shape} does not match the volume "
            f"{volume.name} of shape {image.shape[1:]}"
        )
    ndim = labels.ndim
    if not args.resume:
        kwargs = build_config(args, ndim, image.shape[0], meta.get("spacing"))
        if kwargs["label_mode"] == "classes":
            kwargs["net"]["classes"] = _classes(labels, kwargs["unlabeled"], labels_path)
        slices = parse_slices(args.slices, ndim)
        mode = kwargs["label_mode"]
        kwargs["labels"] = {
            "mode": mode,
            "classes": ["interior", "boundary"] if mode == "boundary" else
            ["background", "foreground"] if mode != "classes" else
            [f"class {i}" for i in range(kwargs["net"]["classes"])],
            "data": {"volume": str(volume), "labels": str(labels_path), "slices": slices},
        }
        cfg = TrainConfig(**kwargs)
    else:
        slices = data.get("slices")
        slices = {int(k): v for k, v in slices.items()} if slices else None
    spacing = cfg.spacing if cfg.spacing is not None else meta.get("spacing")
    result = densify(
        image, labels, args.out, slices=slices, config=cfg, spacing=spacing,
        resume=args.resume, progress=not args.quiet, image_name=str(volume),
        labels_name=str(labels_path),
    )
    axes = "ZYX"[3 - ndim:]
    # The outputs keep the input file's calibration; --spacing only steers the training.
    written = [io.write_image(args.out / f"{volume.stem}_labels.tif", result.labels,
                              spacing=meta.get("spacing"), axes=axes)]
    if not args.no_probs:
        written.append(io.write_image(args.out / f"{volume.stem}_probs.tif",
                                      result.probabilities, spacing=meta.get("spacing"),
                                      axes="C" + axes))
    print(f"model: {result.model}")
    for path in written:
        print(f"wrote {path}")
    return 0

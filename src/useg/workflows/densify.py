"""Semi-automated segmentation: from a few annotated slices of a volume to all of it.

The 3D U-Net paper's first use case (Cicek et al. 2016): an annotator labels a few orthogonal
slices of a volume, a 3D U-Net is trained on them (unannotated voxels weigh 0 in the loss, the
classes are balanced over the annotated voxels), and the trained network segments the very same
volume densely. :func:`densify` does exactly that with the shared trainer
(:func:`useg.training.loop.train`) and overlap-tile prediction
(:func:`useg.inference.predict.predict`), so the run folder, checkpoints and resume work as for
``useg train``. :func:`densify_file` is the engine of ``useg densify``.

The annotation is either a label volume in which one value means "not annotated"
(``unlabeled``), or a dense label volume of which only some slices count (``slices``, axis ->
indices). The second use case of the paper (train on several sparsely annotated volumes, then
segment new ones) is plain ``useg train`` followed by ``useg predict``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg import io
from useg.errors import ConfigError, InputError
from useg.inference.files import write_results
from useg.inference.predict import predict
from useg.labels import most_likely_class
from useg.nets.checkpoint import load_model
from useg.nets.config import UNetConfig
from useg.nets.geometry import min_input_shape, output_shape, pool_step, valid_input_shape
from useg.training.config import TrainConfig
from useg.training.from_folders import (
    build_config,
    labels_record,
    make_config,
    recorded_slices,
    refuse_options_without_effect,
    resumed_config,
    saved_run,
)
from useg.training.loop import train
from useg.training.options import TrainOptions, parse_slices
from useg.training.run_folder import check_resumable, resume_config, saved_config
from useg.training.samples import Sample, make_sample

__all__ = [
    "DensifyResult",
    "check_slices",
    "densify",
    "densify_file",
    "fit_tile",
    "min_volume_shape",
]


@dataclass
class DensifyResult:
    """What :func:`densify` returns."""

    probabilities: np.ndarray  # (classes, *spatial) float32
    labels: np.ndarray  # (*spatial) most likely class
    model: Path  # the model file that produced them


def check_slices(
    slices: Mapping[int, Sequence[int]] | None, shape: Sequence[int], name: str = "labels"
) -> dict[int, list[int]] | None:
    """Check annotated slice indices (axis -> indices) against a volume shape.

    Raises :class:`~useg.errors.InputError` naming ``name`` for an axis or index out of range.

    Examples
    --------
    >>> check_slices({0: [3]}, (8, 16, 16))
    {0: [3]}
    """
    if not slices:
        return None
    axes = "ZYX"[3 - len(shape):] if len(shape) <= 3 else None
    result: dict[int, list[int]] = {}
    for axis, indices in slices.items():
        axis = int(axis)
        if not 0 <= axis < len(shape):
            raise InputError(f"{name}: annotated slices name axis {axis}, but the volume has "
                             f"{len(shape)} axes")
        label = axes[axis] if axes else str(axis)
        for i in indices:
            if not 0 <= int(i) < shape[axis]:
                raise InputError(
                    f"{name}: annotated slice {i} along {label} is out of range (the volume has "
                    f"{shape[axis]} slices along {label}, indices 0..{shape[axis] - 1})"
                )
        result[axis] = [int(i) for i in indices]
    return result


def min_volume_shape(cfg: UNetConfig) -> tuple[int, ...]:
    """Smallest volume a network can be trained on and predict: one output tile of its
    smallest input, and no less than one voxel at its coarsest level.

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> min_volume_shape(preset("cicek2016", width=4, depth=2, padding="same"))
    (4, 4, 4)
    """
    smallest = output_shape(cfg, min_input_shape(cfg))
    return tuple(max(o, s) for o, s in zip(smallest, pool_step(cfg), strict=True))


def fit_tile(cfg: UNetConfig, tile: Sequence[int] | int, shape: Sequence[int]) -> tuple[int, ...]:
    """The valid input tile nearest ``tile`` whose output does not exceed the volume ``shape``.

    Training tiles larger than the volume only add mirrored context and unlabeled output, so
    thin volumes get thinner tiles (never below the network's smallest valid input).

    Examples
    --------
    >>> from useg.nets.config import preset
    >>> cfg = preset("cicek2016", width=4, depth=2)
    >>> fit_tile(cfg, (116, 132, 132), (24, 48, 48))
    (64, 88, 88)
    """
    tile = list(valid_input_shape(cfg, tile, mode="nearest"))
    floor = min_input_shape(cfg)
    steps = pool_step(cfg)
    for axis in range(cfg.ndim):
        while tile[axis] > floor[axis] and output_shape(cfg, tile)[axis] > shape[axis]:
            smaller = list(tile)
            smaller[axis] -= steps[axis]
            tile[axis] = valid_input_shape(cfg, smaller, mode="down")[axis]
    return tuple(tile)


def densify(
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    slices: Mapping[int, Sequence[int]] | None = None,
    unlabeled: int | None = None,
    config: TrainConfig | None = None,
    spacing: Sequence[float] | None = None,
    resume: bool = False,
    progress: bool = True,
    image_name: str = "volume",
    labels_name: str = "labels",
    say: Callable[[str], None] | None = None,
) -> DensifyResult:
    """Train on the annotated voxels of one volume, then segment all of it (semi-automated).

    Parameters
    ----------
    image : ndarray
        ``(C, *spatial)``, or ``spatial`` for one channel.
    labels : ndarray of int
        ``spatial``: the annotation, interpreted by ``config.label_mode``.
    out_dir : path-like
        Run folder (``config.json``, ``log.csv``, ``last.safetensors``, ``state.safetensors``).
    slices : mapping, optional
        Axis -> indices of the annotated slices of a dense ``labels``; every other voxel counts
        as unannotated.
    unlabeled : int, optional
        Label value of unannotated voxels (overrides ``config.unlabeled``).
    config : TrainConfig, optional
        Network and training; when omitted, the paper's for the volume
        (:func:`useg.training.from_folders.make_config`). Its tile is reduced so that the output
        tile fits in the volume (:func:`fit_tile`).
    spacing : sequence of float, optional
        Voxel size ((Z,) Y, X); overrides ``config.spacing``. Decides the rotation planes of
        the augmentation (all planes only for isotropic voxels) and is stored in the model.
    resume : bool
        Continue the run in ``out_dir`` with its saved configuration; a ``config`` may change
        only :data:`useg.training.config.RESUMABLE` settings (e.g. more ``iterations``) and is
        refused otherwise.
    progress : bool
        Progress bars for training and prediction.
    image_name, labels_name : str
        Names (file paths) used in error messages.
    say : callable, optional
        Receives the training run's one-line notes (:func:`useg.training.loop.train`).

    Returns
    -------
    DensifyResult
        Class probabilities and most likely class of every voxel, and the model file.

    Examples
    --------
    >>> from useg.workflows.synthetic import touching_cells
    >>> import tempfile
    >>> img, cells = touching_cells((16, 32, 32), rng=0)
    >>> cfg = make_config(3, width=2, depth=1, tile=20, iterations=2, augment=None,
    ...                   device="cpu", workers=0)
    >>> res = densify(img, cells, tempfile.mkdtemp(), slices={0: [8]}, config=cfg,
    ...               progress=False)
    >>> res.probabilities.shape, res.labels.shape
    ((2, 16, 32, 32), (16, 32, 32))
    """
    image, labels = _as_volume(image, labels, image_name, labels_name)
    out = Path(out_dir)
    if resume:
        cfg = _resumed_config(out, config)
    else:
        cfg = _new_config(config, image, unlabeled, spacing)
    net = UNetConfig.from_dict(cfg.net)
    _check_network(net, image, image_name)
    if not resume:
        cfg.tile = list(fit_tile(net, cfg.tile, labels.shape))
    sample = _annotated_sample(image, labels, cfg, net, slices, labels_name)
    model_path = train(cfg, [sample], out, resume=resume, progress=progress, say=say)
    model = load_model(model_path)
    # The tile comes from the memory budget, or is the whole volume for a network whose output
    # depends on the tile (batch statistics): predict decides, as for useg predict.
    probs = predict(model, image, device=cfg.device, precision=cfg.precision,
                    progress=progress)
    return DensifyResult(probs, most_likely_class(probs), model_path)


def _as_volume(image: Any, labels: Any, image_name: str,
               labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(C, *spatial)`` image and ``spatial`` annotation of one volume, checked."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == labels.ndim:
        image = image[np.newaxis]
    _check_annotation_shape(image, labels, image_name, labels_name)
    if image.ndim - 1 not in (1, 2, 3):
        raise InputError(f"{image_name}: expected a volume (Z, Y, X), got shape {image.shape}")
    return image, labels


def _check_annotation_shape(image: np.ndarray, labels: np.ndarray, image_name: str,
                            labels_name: str) -> None:
    if image.shape[1:] != labels.shape:
        raise InputError(
            f"{labels_name}: annotation of shape {labels.shape} does not match the volume "
            f"{image_name} of shape {image.shape[1:]}"
        )


def _resumed_config(out: Path, config: TrainConfig | None) -> TrainConfig:
    check_resumable(out)
    if config is None:
        return saved_config(out)
    # The saved run, with what a resumed run may change (more iterations, another device...)
    # taken from config; any other difference is refused.
    cfg, _ = resume_config(config, out)
    return cfg


def _new_config(config: TrainConfig | None, image: np.ndarray, unlabeled: int | None,
                spacing: Sequence[float] | None) -> TrainConfig:
    """A copy of ``config`` (the caller's stays untouched), or the paper's configuration for the
    volume, with ``unlabeled`` and ``spacing`` where given."""
    cfg = config if config is not None else make_config(
        image.ndim - 1, in_channels=image.shape[0], spacing=spacing)
    cfg = TrainConfig.from_dict(cfg.to_dict())
    if unlabeled is not None:
        cfg.unlabeled = int(unlabeled)
    if spacing is not None:
        cfg.spacing = [float(s) for s in spacing]
    return cfg


def _check_network(net: UNetConfig, image: np.ndarray, image_name: str) -> None:
    """Refuse a network of another dimension or channel count, or larger than the volume."""
    spatial = image.shape[1:]
    if net.ndim != len(spatial):
        raise ConfigError(f"the network is {net.ndim}D but {image_name} is {len(spatial)}D")
    if net.in_channels != image.shape[0]:
        raise InputError(f"{image_name}: {image.shape[0]} channel(s), the network expects "
                         f"{net.in_channels}")
    need = min_volume_shape(net)
    if any(s < n for s, n in zip(spatial, need, strict=True)):
        raise InputError(
            f"{image_name}: volume of shape {spatial} is smaller than one tile of the network "
            f"(at least {need}); use a smaller --depth"
        )


def _annotated_sample(image: np.ndarray, labels: np.ndarray, cfg: TrainConfig, net: UNetConfig,
                      slices: Mapping[int, Sequence[int]] | None, labels_name: str) -> Sample:
    """The training sample of the volume: its annotated voxels, checked against the network."""
    spatial = labels.shape
    slices = check_slices(slices, spatial, labels_name)
    if cfg.spacing is not None and len(cfg.spacing) != len(spatial):
        raise ConfigError(f"spacing {tuple(cfg.spacing)} needs {len(spatial)} values")
    if not slices:
        # Densification learns from a sparse annotation: a volume in which every voxel counts
        # as annotated is most likely a mistaken --unlabeled, and its result just its labels.
        if cfg.unlabeled is None:
            raise InputError(f"{labels_name}: every voxel counts as annotated (no --unlabeled, "
                             "no --slices); give the value of the voxels nobody annotated "
                             "(--unlabeled V) or the annotated slices (--slices)")
        if not (labels == cfg.unlabeled).any():
            raise InputError(f"{labels_name}: no voxel holds --unlabeled {cfg.unlabeled}, so "
                             "every voxel would count as annotated; give the value of the "
                             "voxels nobody annotated, or the annotated slices (--slices)")
    sample = make_sample(image, labels, spacing=cfg.spacing, name=labels_name,
                         **cfg.sample_options(slices))
    top = int(sample.target.max())
    if top >= net.classes:
        raise InputError(
            f"{labels_name}: class {top} is annotated but the network has {net.classes} classes "
            f"(0..{net.classes - 1}); mark unannotated voxels with --unlabeled"
        )
    return sample


# ----------------------------------------------------------------------------------------------
# useg densify


def _classes(labels: np.ndarray, unlabeled: int | None, name: Path) -> int:
    """Number of classes of a ``classes`` annotation: its largest annotated value plus one."""
    values = labels[labels != unlabeled] if unlabeled is not None else labels
    if values.size == 0:
        raise InputError(f"{name}: no annotated voxel (every voxel is --unlabeled {unlabeled})")
    if int(values.min()) < 0:
        raise InputError(f"{name}: class labels must be >= 0 (use --unlabeled for unannotated "
                         "voxels)")
    return max(2, int(np.max(values)) + 1)


def _same(a: str | os.PathLike | None, b: str) -> bool:
    return a is None or Path(a).resolve() == Path(b).resolve()


def densify_file(
    volume: str | os.PathLike | None,
    labels: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    options: TrainOptions | None = None,
    resume: bool = False,
    given: Sequence[tuple[str, str]] = (),
    write_probabilities: bool = True,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> tuple[DensifyResult, list[Path]]:
    """Densify a volume file from its annotation file (``useg densify``).

    Trains in the run folder ``out`` (:func:`densify`) and writes the dense segmentation there:
    ``<volume stem>_labels.tif`` and ``<volume stem>_probs.tif`` (unless
    ``write_probabilities`` is False), with the volume file's calibration.

    Parameters
    ----------
    volume, labels : path
        The image volume and its annotation, of the same shape (a label volume with an
        ``unlabeled`` value, or dense labels of which only ``options.slices`` count). Not needed
        to resume: the run recorded them.
    out : path
        Run and output folder.
    options : TrainOptions, optional
        Network and training options, as for ``useg train``
        (:class:`useg.training.options.TrainOptions`).
    resume : bool
        Continue the run in ``out``.
    given : sequence of (str, str)
        The options given explicitly, as (name, flag) pairs: with ``resume``, those that differ
        from the saved run are refused (see :func:`useg.training.from_folders.train_from_folders`).
    write_probabilities : bool
        Write the class probabilities too.
    progress : bool
        Progress bars for training and prediction.
    say : callable, optional
        Receives the training run's one-line notes (:func:`useg.training.loop.train`).
    overwrite : bool
        Replace result files that exist already; otherwise a new run refuses them before it
        trains (a resumed run replaces its own).

    Returns
    -------
    (DensifyResult, list of Path)
        The result of :func:`densify` and the files written.
    """
    out = io.check_output_folder(out)
    options = options if options is not None else TrainOptions()
    if resume:
        cfg = _resumed_file_config(out, volume, labels, options, given)
        volume, labels = cfg.labels["data"]["volume"], cfg.labels["data"]["labels"]
    elif volume is None or labels is None:
        raise ConfigError("VOLUME and --labels are required (or --resume with --out)")
    volume, labels_path = _volume_file(volume), _volume_file(labels)
    targets = io.result_paths(out, volume.name, probabilities=write_probabilities)
    if not (resume or overwrite):
        for path in targets.values():
            if path.exists():
                raise ConfigError(f"{path}: already exists; pass --overwrite to replace it, "
                                  "or choose another --out")
    image, meta = io.read_image(volume)
    annotation, _ = io.read_labels(labels_path)
    _check_annotation_shape(image, annotation, str(volume), str(labels_path))
    if not resume:
        cfg = _new_file_config(options, image, meta, annotation, volume, labels_path)
        refuse_options_without_effect(cfg, given)
    spacing = cfg.spacing if cfg.spacing is not None else meta.get("spacing")
    result = densify(
        image, annotation, out, slices=recorded_slices(cfg.labels["data"]), config=cfg,
        spacing=spacing, resume=resume, progress=progress, say=say, image_name=str(volume),
        labels_name=str(labels_path),
    )
    # The outputs keep the input file's calibration; --spacing only steers the training, and
    # is written only into a file that states none (as ratios: it has no unit).
    out_spacing, unit = meta.get("spacing"), meta.get("unit")
    if out_spacing is None and cfg.spacing is not None:
        out_spacing, unit = cfg.spacing, None
    written = write_results(targets, result.probabilities, out_spacing,
                            labels=result.labels, nifti=meta.get("nifti"), unit=unit)
    return result, [written[kind] for kind in ("labels", "probabilities") if kind in written]


def _resumed_file_config(out: Path, volume: str | os.PathLike | None,
                         labels: str | os.PathLike | None, options: TrainOptions,
                         given: Sequence[tuple[str, str]]) -> TrainConfig:
    """The saved ``useg densify`` run in ``out``, refusing other files or options."""
    saved, data, config_path = saved_run(out)
    if "volume" not in data:
        raise InputError(f"{config_path}: not a 'useg densify' run; cannot resume")
    if not (_same(volume, data["volume"]) and _same(labels, data["labels"])):
        raise ConfigError(f"{out} densifies {data['volume']} with {data['labels']}; "
                          "--resume continues it (omit VOLUME and --labels)")
    # VOLUME and --labels are checked above; --no-probs only chooses the outputs.
    free = {"labels", "no_probs"}
    if "tile" in dict(given) and options.tile is not None:
        # The run saved the tile fitted to the volume (fit_tile): the command that started it
        # gives the tile it asked for, which fits to the same one.
        net = UNetConfig.from_dict(saved["net"])
        shape = io.read_labels(_volume_file(data["labels"]))[0].shape
        asked = list(options.tile) * net.ndim if len(options.tile) == 1 else list(options.tile)
        if len(asked) == net.ndim and list(fit_tile(net, asked, shape)) == saved.get("tile"):
            free.add("tile")
    return resumed_config(saved, given, dataclasses.asdict(options), config_path, free=free)


def _volume_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: a folder; densify takes one volume file")
    return path


def _new_file_config(options: TrainOptions, image: np.ndarray, meta: dict[str, Any],
                     annotation: np.ndarray, volume: Path, labels_path: Path) -> TrainConfig:
    """The configuration of a new ``useg densify`` run, with what it records of its files."""
    ndim = annotation.ndim
    kwargs = build_config(options, ndim, image.shape[0], meta.get("spacing"))
    if kwargs["label_mode"] == "classes":
        classes = _classes(annotation, kwargs["unlabeled"], labels_path)
        init = kwargs.get("init")
        if init is None:
            kwargs["net"]["classes"] = classes
        elif classes > kwargs["net"]["classes"]:
            # The network is the --init model's: it cannot grow to the annotation's classes.
            raise ConfigError(f"{labels_path}: the annotation needs {classes} classes; the "
                              f"--init model {init['file']} has {kwargs['net']['classes']}")
    # Absolute: a run resumed from another working directory must read the same files.
    data = {"volume": str(Path(volume).resolve()), "labels": str(Path(labels_path).resolve()),
            "slices": parse_slices(options.slices, ndim)}
    kwargs["labels"] = labels_record(kwargs["label_mode"], kwargs["net"]["classes"], data)
    return TrainConfig(**kwargs)

"""Semi-automated segmentation: from a few annotated slices of a volume to all of it.

The 3D U-Net paper's first use case (Cicek et al. 2016): an annotator labels a few orthogonal
slices of a volume, a 3D U-Net is trained on them (unannotated voxels weigh 0 in the loss, the
classes are balanced over the annotated voxels), and the trained network segments the very same
volume densely. :func:`densify` does exactly that with the shared trainer
(:func:`useg.train.train`) and overlap-tile prediction (:func:`useg.predict.predict`), so the
run folder, checkpoints and resume work as for ``useg train``.

The annotation is either a label volume in which one value means "not annotated"
(``unlabeled``), or a dense label volume of which only some slices count (``slices``, axis ->
indices). The second use case of the paper (train on several sparsely annotated volumes, then
segment new ones) is plain ``useg train`` followed by ``useg predict``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, InputError
from useg.labels import most_likely_class
from useg.nets import (
    UNetConfig,
    anisotropic_pools,
    min_input_shape,
    output_shape,
    pool_step,
    preset,
    valid_input_shape,
)
from useg.train import TrainConfig

__all__ = [
    "DensifyResult",
    "check_slices",
    "default_config",
    "densify",
    "fit_tile",
    "min_volume_shape",
]


@dataclass
class DensifyResult:
    """What :func:`densify` returns."""

    probabilities: np.ndarray  # (classes, *spatial) float32
    labels: np.ndarray  # (*spatial) most likely class
    model: Path  # the model file that produced them


def default_config(
    ndim: int = 3,
    *,
    in_channels: int = 1,
    spacing: Sequence[float] | None = None,
    label_mode: str | None = None,
    classes: int = 2,
    **options: Any,
) -> TrainConfig:
    """Training configuration for densifying a volume: the paper's network for its dimension.

    ``cicek2016`` for 3D volumes (``ronneberger2015`` for 2D images), label mode ``boundary``
    in 3D (``binary`` in 2D); anisotropic ``spacing`` chooses the pooling per level with
    :func:`useg.nets.anisotropic_pools`. ``options`` are :class:`~useg.train.TrainConfig`
    fields, or network fields (``width``, ``depth``, ``padding``, ``batch_stats``...).

    Examples
    --------
    >>> cfg = default_config(3, spacing=(50, 4, 4), width=8, depth=2, iterations=10)
    >>> cfg.net["pool"], cfg.label_mode
    ([[1, 2, 2], [1, 2, 2]], 'boundary')
    """
    name = "cicek2016" if ndim == 3 else "ronneberger2015"
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    net_options = {k: options.pop(k) for k in list(options) if k not in known}
    net = preset(name, ndim=ndim, in_channels=in_channels, classes=classes, **net_options)
    if net.pool is None and spacing is not None:
        levels = anisotropic_pools(spacing, net.depth)
        if any(f != 2 for level in levels for f in level):
            net = net.replace(pool=levels)
    options.setdefault("tile", [116, 132, 132] if ndim == 3 else [572, 572])
    options.setdefault("label_mode", label_mode or ("boundary" if ndim == 3 else "binary"))
    if spacing is not None:
        options.setdefault("spacing", [float(s) for s in spacing])
    d = net.to_dict()
    d["pool"] = [list(level) for level in d["pool"]] if d["pool"] is not None else None
    return TrainConfig(net=d, **options)


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


def _saved_config(out: Path) -> TrainConfig:
    path = out / "config.json"
    if not (out / "state.safetensors").exists() or not path.exists():
        raise InputError(f"{out}: nothing to resume (no state.safetensors)")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: unreadable run configuration ({exc})") from None


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
        Network and training; :func:`default_config` when omitted. Its tile is reduced so that
        the output tile fits in the volume (:func:`fit_tile`).
    spacing : sequence of float, optional
        Voxel size ((Z,) Y, X); overrides ``config.spacing``. Decides the rotation planes of
        the augmentation (all planes only for isotropic voxels) and is stored in the model.
    resume : bool
        Continue the run in ``out_dir`` with its saved configuration; a ``config`` may change
        only :data:`useg.train.RESUMABLE` settings (e.g. more ``iterations``) and is refused
        otherwise.
    progress : bool
        Progress bars for training and prediction.
    image_name, labels_name : str
        Names (file paths) used in error messages.

    Returns
    -------
    DensifyResult
        Class probabilities and most likely class of every voxel, and the model file.

    Examples
    --------
    >>> from useg.synthetic import touching_cells
    >>> import tempfile
    >>> img, cells = touching_cells((16, 32, 32), rng=0)
    >>> cfg = default_config(3, width=2, depth=1, tile=20, iterations=2, augment=None,
    ...                      device="cpu", workers=0)
    >>> res = densify(img, cells, tempfile.mkdtemp(), slices={0: [8]}, config=cfg,
    ...               progress=False)
    >>> res.probabilities.shape, res.labels.shape
    ((2, 16, 32, 32), (16, 32, 32))
    """
    from useg.checkpoint import load_model
    from useg.data import make_sample
    from useg.predict import predict
    from useg.train import train

    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == labels.ndim:
        image = image[np.newaxis]
    if image.shape[1:] != labels.shape:
        raise InputError(
            f"{labels_name}: annotation of shape {labels.shape} does not match the volume "
            f"{image_name} of shape {image.shape[1:]}"
        )
    if image.ndim - 1 not in (1, 2, 3):
        raise InputError(f"{image_name}: expected a volume (Z, Y, X), got shape {image.shape}")
    out = Path(out_dir)
    if resume:
        cfg = _saved_config(out)
        if config is not None:
            # The saved run, with what a resumed run may change (more iterations, another
            # device...) taken from config; any other difference is refused.
            from useg.train import _resume_config

            cfg, _ = _resume_config(config, out)
    else:
        cfg = config if config is not None else default_config(
            image.ndim - 1, in_channels=image.shape[0], spacing=spacing)
        cfg = TrainConfig.from_dict(cfg.to_dict())  # a copy: the caller's stays untouched
        if unlabeled is not None:
            cfg.unlabeled = int(unlabeled)
        if spacing is not None:
            cfg.spacing = [float(s) for s in spacing]
    net = UNetConfig.from_dict(cfg.net)
    spatial = labels.shape
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
    if not resume:
        cfg.tile = list(fit_tile(net, cfg.tile, spatial))
    slices = check_slices(slices, spatial, labels_name)
    sample_spacing = cfg.spacing
    if sample_spacing is not None and len(sample_spacing) != len(spatial):
        raise ConfigError(f"spacing {tuple(sample_spacing)} needs {len(spatial)} values")
    sample = make_sample(
        image, labels, mode=cfg.label_mode, unlabeled=cfg.unlabeled, slices=slices,
        w0=cfg.w0, sigma=cfg.sigma, class_balance=cfg.class_balance,
        boundary_width=cfg.boundary_width, spacing=sample_spacing,
        normalization=cfg.normalization, name=labels_name,
    )
    top = int(sample.target.max())
    if top >= net.classes:
        raise InputError(
            f"{labels_name}: class {top} is annotated but the network has {net.classes} classes "
            f"(0..{net.classes - 1}); mark unannotated voxels with --unlabeled"
        )
    model_path = train(cfg, [sample], out, resume=resume, progress=progress)
    model = load_model(model_path)
    # The tile comes from the memory budget, or is the whole volume for a network whose output
    # depends on the tile (batch statistics): predict decides, as for useg predict.
    probs = predict(model, image, device=cfg.device, precision=cfg.precision,
                    progress=progress)
    dtype = np.uint8 if net.classes <= 255 else np.uint16
    return DensifyResult(probs, most_likely_class(probs, dtype), model_path)

"""Training samples: label semantics, targets, sparse annotations and the paper's weight map.

Flow: files -> :func:`load_pairs` -> :class:`Sample` (normalised image, class target with
:data:`~useg.labels.IGNORE` for unlabeled pixels, precomputed weight map), from which
:class:`useg.training.stream.TileStream` draws the training tiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from useg.errors import ConfigError, InputError
from useg.io import normalize as norm
from useg.labels import IGNORE

__all__ = [
    "LABEL_MODES",
    "MODE_CLASSES",
    "Sample",
    "boundary_target",
    "check_classes_present",
    "check_label_values",
    "load_pairs",
    "make_sample",
    "relative_spacing",
    "sparsify",
    "targets_from_labels",
]

LABEL_MODES = ("binary", "instances", "three_class", "boundary", "classes")
#: The label modes without objects to separate: no border term in their weight map (w0, sigma).
NO_BORDER_WEIGHT_MODES = ("boundary", "classes")

#: Number of classes of the label modes that fix it (``classes`` takes it from the labels).
MODE_CLASSES = {"binary": 2, "instances": 2, "three_class": 3, "boundary": 2}


def boundary_target(instances: np.ndarray, width: int = 1, ignore: int | None = None) -> np.ndarray:
    """1 where a pixel's instance id differs from a neighbour's (within ``width`` pixels), else 0.

    Parameters
    ----------
    instances : ndarray of int
        Instance ids, ``(Z,) Y, X``.
    width : int
        Boundary thickness: a pixel is boundary if an id change lies within ``width`` pixels
        (city-block distance) of it... on both sides of the change.
    ignore : int, optional
        Id of unlabeled voxels (e.g. 0 in FlyEM bodies): they become ``IGNORE``, and a change
        of id to or from them does not make a boundary.

    Examples
    --------
    >>> inst = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    >>> boundary_target(inst).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0]]
    """
    instances = np.asarray(instances)
    edge = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        a = [slice(None)] * instances.ndim
        b = [slice(None)] * instances.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        diff = instances[tuple(a)] != instances[tuple(b)]
        if ignore is not None:
            diff &= (instances[tuple(a)] != ignore) & (instances[tuple(b)] != ignore)
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    if width > 1:
        edge = ndi.binary_dilation(edge, iterations=width - 1)
    target = edge.astype(np.int64)
    if ignore is not None:
        target[instances == ignore] = IGNORE
    return target


def targets_from_labels(
    labels: np.ndarray,
    mode: str = "binary",
    *,
    unlabeled: int | None = None,
    boundary_width: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class targets (``IGNORE`` for unlabeled pixels) and the instances for the border weights.

    Modes
    -----
    ``binary``
        Foreground is ``labels > 0`` (ISBI 2012: 255 cell interior, 0 membrane); objects for the
        weight map are the foreground's connected components. Classes: 0 background, 1 foreground.
    ``instances``
        Each id is one object (0 background); one-pixel borders between touching objects become
        background, as in the paper's cell-tracking experiments. Classes as ``binary``.
    ``three_class``
        Each id is one object (0 background). Classes: 0 background, 1 interior, 2 boundary:
        the object pixels within ``boundary_width`` pixels (city-block) of a pixel of another
        id, background or another object (``unlabeled`` pixels do not count). The instances
        returned for the border weights are the objects' interiors, so that the border term
        of the weight map lies on the boundary pixels between touching objects (and on the
        background gaps between close ones).
    ``boundary``
        EM membranes from instance labels: class 1 where the id changes (see
        :func:`boundary_target`), 0 inside objects; ``unlabeled`` ids are ignored.
    ``classes``
        Labels are class ids already; ``unlabeled`` marks pixels without annotation.
    """
    labels = np.asarray(labels)
    if mode not in LABEL_MODES:
        raise ConfigError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        if not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"labels must hold integers, got non-integer values ({labels.dtype})")
        labels = labels.astype(np.int64)
    unl = labels == unlabeled if unlabeled is not None else None
    instances = None
    if mode == "binary":
        from useg.training.weights import instances_from_binary

        fg = labels > 0
        if unl is not None:
            fg &= ~unl
        target = fg.astype(np.int64)
        instances = instances_from_binary(fg)
    elif mode == "instances":
        instances = labels.astype(np.int64)
        if unl is not None:
            instances = np.where(unl, 0, instances)
        target = ((instances > 0) & ~_touches_other_object(instances)).astype(np.int64)
        # The gaps are background, as in the paper's separated objects: the border term must
        # lie on them, where the distances to the two objects are smallest.
        instances = np.where(target == 1, instances, 0)
    elif mode == "three_class":
        ids = labels.astype(np.int64)
        objects = ids > 0 if unl is None else (ids > 0) & ~unl
        edge = boundary_target(ids, boundary_width, ignore=unlabeled) == 1
        target = np.where(objects, np.where(edge, 2, 1), 0).astype(np.int64)
        instances = np.where(target == 1, ids, 0)
    elif mode == "boundary":
        target = boundary_target(labels, boundary_width, ignore=unlabeled)
        return target, None
    else:
        target = labels.astype(np.int64)
        if np.any(target[~unl] < 0) if unl is not None else np.any(target < 0):
            raise InputError("class labels must be >= 0 (use --unlabeled for unannotated pixels)")
    if unl is not None:
        target[unl] = IGNORE
    return target, instances


def _touches_other_object(instances: np.ndarray) -> np.ndarray:
    """True on object pixels with a face neighbour that belongs to a different object."""
    touching = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        a = [slice(None)] * instances.ndim
        b = [slice(None)] * instances.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        ia, ib = instances[tuple(a)], instances[tuple(b)]
        contact = (ia != ib) & (ia > 0) & (ib > 0)
        touching[tuple(a)] |= contact
        touching[tuple(b)] |= contact
    return touching


def sparsify(target: np.ndarray, slices: Mapping[int, Sequence[int]]) -> np.ndarray:
    """Keep the target only on the given slices (axis -> indices); ``IGNORE`` elsewhere.

    This turns a dense annotation into the sparse slice annotation of the 3D U-Net paper.

    Examples
    --------
    >>> t = np.ones((3, 4, 4), dtype=np.int64)
    >>> s = sparsify(t, {0: [1], 2: [0]})
    >>> int((s != IGNORE).sum())  # 16 on slice z=1, 12 on x=0, 4 of them on both
    24
    """
    keep = np.zeros(target.shape, dtype=bool)
    for axis, indices in slices.items():
        if not 0 <= axis < target.ndim:
            raise InputError(f"annotated slices name axis {axis}, but the volume has {target.ndim}")
        for i in indices:
            if not 0 <= i < target.shape[axis]:
                raise InputError(
                    f"annotated slice {i} along axis {'ZYX'[3 - target.ndim + axis]} is out of "
                    f"range (size {target.shape[axis]})"
                )
            index = [slice(None)] * target.ndim
            index[axis] = i
            keep[tuple(index)] = True
    return np.where(keep, target, IGNORE)


def check_label_values(
    labels: np.ndarray,
    mode: str,
    *,
    unlabeled: int | None = None,
    classes: int | None = None,
    name: object = "labels",
) -> None:
    """Refuse label values that mean nothing in label ``mode``, before anything is trained.

    Allowed, besides the ``unlabeled`` value (allowed in every mode): ``binary`` 0 and one
    foreground value (1, or 255 as in ISBI 2012; several foreground values are object or class
    ids given to the wrong mode); ``classes`` 0 to ``classes - 1`` (any value >= 0 when
    ``classes`` is None); ``instances``, ``three_class`` and ``boundary`` ids >= 0. Negative
    values are refused in every mode (an unlabeled value is marked with ``unlabeled``). Modes
    not listed here are not checked.

    Raises
    ------
    InputError
        Naming ``name`` (the label file), the first few values refused and the allowed ones.

    Examples
    --------
    >>> check_label_values(np.array([[0, 255], [255, 9]]), "binary", unlabeled=9)
    >>> check_label_values(np.array([[0, 1, 255]]), "binary", name="a.png")
    Traceback (most recent call last):
    ...
    useg.errors.InputError: a.png: label values 1, 255 are not allowed in label mode 'binary', \
which allows 0 (background) and one foreground value (such as 1 or 255); object ids need \
--label-mode instances, class ids --label-mode classes
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.size == 0 or mode not in _ALLOWED:
        return
    annotated = None if unlabeled is None else labels != unlabeled

    def found(bad: np.ndarray) -> np.ndarray:
        if annotated is not None:
            bad &= annotated
        return np.unique(labels[bad]) if bad.any() else np.empty(0, labels.dtype)

    allowed = _ALLOWED[mode]
    if mode == "classes" and classes is not None:
        allowed = f"0 to {classes - 1} (the network's {classes} classes)"
    hint = ""
    bad = found(labels < 0) if labels.dtype.kind in "if" else np.empty(0)
    if bad.size:
        hint = "" if unlabeled is not None else "; mark unannotated pixels with --unlabeled"
    elif mode == "classes" and classes is not None:
        bad = found(labels >= classes)
    elif mode == "binary":
        foreground = labels > 0
        if annotated is not None:
            foreground &= annotated
        top = np.max(labels, where=foreground, initial=0)
        if np.any(foreground & (labels != top)):
            bad = found(foreground)
            hint = "; object ids need --label-mode instances, class ids --label-mode classes"
    if not bad.size:
        return
    shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in bad[:5])
    if bad.size > 5:
        shown += f", ... ({bad.size} values)"
    also = "" if unlabeled is None else f" and {unlabeled} (unlabeled)"
    raise InputError(f"{name}: label value{'s' if bad.size > 1 else ''} {shown} "
                     f"{'are' if bad.size > 1 else 'is'} not allowed in label mode {mode!r}, "
                     f"which allows {allowed}{also}{hint}")


# The label values each mode allows (check_label_values), in words.
_ALLOWED = {
    "binary": "0 (background) and one foreground value (such as 1 or 255)",
    "classes": "class ids >= 0",
    "instances": "0 (background) and object ids > 0",
    "three_class": "0 (background) and object ids > 0",
    "boundary": "object ids >= 0",
}


@dataclass
class Sample:
    """One training image in memory, ready for tile sampling."""

    image: np.ndarray  # (C, *spatial) float32, normalised
    target: np.ndarray  # (*spatial) int64 classes, IGNORE where unlabeled
    weight: np.ndarray  # (*spatial) float32, 0 where unlabeled
    name: str = ""
    spacing: tuple[float, ...] | None = None
    labelled: np.ndarray | None = field(default=None, repr=False)  # flat indices of labelled pixels


def make_sample(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    mode: str = "binary",
    unlabeled: int | None = None,
    slices: Mapping[int, Sequence[int]] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    boundary_width: int = 1,
    spacing: Sequence[float] | None = None,
    normalization: dict[str, Any] | None = None,
    name: str = "",
    classes: int | None = None,
) -> Sample:
    """Build a :class:`Sample`: normalised image, class target and the paper's weight map.

    The weight map is computed once per image from the un-augmented labels, as in the paper,
    and deformed together with them: ``w_c`` balances the classes over the labelled pixels and
    the border term (``w0``, ``sigma``; 0 disables it) separates touching objects.

    ``sigma`` and the distances of the border term are in pixels of the finest axis: only the
    relative ``spacing`` counts (an axis twice as coarse as the finest has steps of 2), so the
    calibration a file happens to carry (a 72-dpi PNG, a TIFF in nanometres) does not change
    the weights.

    Label values are checked first (:func:`check_label_values`, with the network's ``classes``).
    """
    from useg.training.weights import border_weight_map, class_balance_weights

    if image.shape[1:] != labels.shape:
        raise InputError(
            f"{name}: image of spatial shape {image.shape[1:]} and labels of shape "
            f"{labels.shape} differ"
        )
    check_label_values(labels, mode, unlabeled=unlabeled, classes=classes, name=name or "labels")
    target, instances = targets_from_labels(
        labels, mode, unlabeled=unlabeled, boundary_width=boundary_width
    )
    if slices:
        try:
            target = sparsify(target, slices)
        except InputError as exc:
            raise InputError(f"{name or 'labels'}: --slices: {exc}") from None
    labelled = target != IGNORE
    if not labelled.any():
        raise InputError(f"{name}: no labelled pixel (every pixel is unlabeled)")
    if class_balance:
        wc = class_balance_weights(target, ignore_index=IGNORE)
    else:
        wc = labelled.astype(np.float32)
    if instances is not None and w0 > 0:
        weight = border_weight_map(instances, w0=w0, sigma=sigma,
                                   spacing=relative_spacing(spacing), class_weights=wc)
    else:
        weight = wc
    weight = np.where(labelled, weight, 0).astype(np.float32)
    stats = norm.image_stats(image, normalization)
    sparse = labelled.mean() < 0.5
    return Sample(
        image=norm.normalize(image, stats),
        target=target,
        weight=weight,
        name=name,
        spacing=tuple(spacing) if spacing is not None else None,
        labelled=np.flatnonzero(labelled) if sparse else None,
    )


def relative_spacing(spacing: Sequence[float] | None) -> tuple[float, ...] | None:
    """Pixel size per axis in units of the finest axis, which is 1 (None stays None).

    Training measures distances in pixels whatever the unit of the files' calibration;
    only the anisotropy of a volume survives.

    Examples
    --------
    >>> relative_spacing((0.5, 0.125, 0.125))
    (4.0, 1.0, 1.0)
    """
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.atleast_1d(spacing))
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing must be positive numbers, got {tuple(spacing)}")
    finest = min(values)
    return tuple(s / finest for s in values)


def load_pairs(
    images: str | Path,
    labels: str | Path,
    *,
    ndim: int,
    in_channels: int | None = None,
    spacing: Sequence[float] | None = None,
    **sample_options: Any,
) -> list[Sample]:
    """Read image/label files matched by name and build samples (see :func:`make_sample`).

    A folder of 2D images with a 2D model, a TIFF stack with a 2D model (each slice a sample) or
    with a 3D model (one volume) are all accepted. ``spacing`` ((Z,) Y, X of the files) overrides
    the voxel size the files state.
    """
    from useg import io

    samples = []
    for img_path, lab_path in io.pair_files(images, labels):
        image, meta = io.read_image(img_path)
        lab, _ = io.read_labels(lab_path)
        check_label_values(lab, sample_options.get("mode", "binary"),
                           unlabeled=sample_options.get("unlabeled"),
                           classes=sample_options.get("classes"), name=lab_path)
        if in_channels is not None and image.shape[0] != in_channels:
            raise InputError(
                f"{img_path}: image has {image.shape[0]} channel(s), the network expects "
                f"{in_channels}"
            )
        if image.shape[1:] != lab.shape:
            raise InputError(
                f"{lab_path}: labels of shape {lab.shape} do not match image {img_path.name} "
                f"of spatial shape {image.shape[1:]}"
            )
        file_spacing = tuple(spacing) if spacing is not None else meta.get("spacing")
        if file_spacing is not None and len(file_spacing) != image.ndim - 1:
            raise InputError(
                f"{img_path}: spacing {file_spacing} does not have one value per spatial axis "
                f"of the image ({image.ndim - 1})"
            )
        if image.ndim - 1 == ndim:
            samples.append(
                make_sample(image, lab, spacing=file_spacing, name=str(img_path),
                            **sample_options)
            )
        elif image.ndim - 1 == ndim + 1:
            for z in range(image.shape[1]):
                try:
                    samples.append(make_sample(
                        image[:, z], lab[z], name=f"{img_path}[{z}]",
                        spacing=file_spacing[1:] if file_spacing else None, **sample_options,
                    ))
                except InputError as exc:
                    if "no labelled pixel" not in str(exc):
                        raise
        else:
            raise InputError(
                f"{img_path}: a {image.ndim - 1}D image cannot train a {ndim}D network"
            )
    if not samples:
        raise InputError(f"{labels}: no labelled pixel in any label image")
    return samples


def check_classes_present(samples: Sequence[Sample]) -> None:
    """Raise :class:`~useg.errors.InputError` when the labelled pixels of all ``samples`` hold
    one class: a network trained on them learns to answer that class everywhere, which would
    pass for a finished model (wrong label values, or ``--unlabeled`` set to the other class)."""
    present: set[int] = set()
    for sample in samples:
        present.update(int(c) for c in np.unique(sample.target) if c != IGNORE)
        if len(present) > 1:
            return
    names = ", ".join(s.name or "?" for s in samples[:3]) + (", ..." if len(samples) > 3 else "")
    held = f"class {present.pop()} only" if present else "no class"
    raise InputError(f"{names}: the labelled pixels of the training images hold {held}; a "
                     "network needs examples of at least two classes (check the label values "
                     "and --unlabeled)")

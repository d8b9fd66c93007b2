"""``useg predict``: probabilities, class maps and, with ``instances``, one label per object.

Prediction (:mod:`useg.inference.files`, :mod:`useg.inference.dask`) knows nothing of
post-processing; this module hands it the instance step as a derived result
(:data:`useg.inference.files.Derive`) for image files, and runs the block-wise instance step
(:mod:`useg.postprocess.instance_blocks`) over the probabilities of a ``--dask`` store.

Which post-processing settings apply: those given explicitly, else those chosen on validation
data at training time and stored in the model file (``"instances"`` of its header, written by
:mod:`useg.workflows.tune_instances`), else the defaults of
:class:`useg.postprocess.instances.InstanceParams`; :func:`instance_settings` says which.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import ConfigError, ModelFileError, UsegWarning
from useg.inference.files import predict_paths
from useg.nets.checkpoint import model_info, resolve_model
from useg.postprocess.instances import TARGETS, InstanceParams, instances_from_probabilities
from useg.training.samples import relative_spacing

__all__ = ["INSTANCE_FLAGS", "INSTANCE_TARGETS", "instance_settings", "instance_spacing",
           "instances_of", "segment_paths"]

# Label modes (useg.training.samples) whose classes say where objects are, and the target of
# the instance step for each: a binary foreground is split like the gapped instances target.
INSTANCE_TARGETS = {"binary": "instances", "instances": "instances",
                    "three_class": "three_class", "boundary": "boundary"}


# The command-line flags of the instance settings, for messages.
INSTANCE_FLAGS = {"threshold": "--instance-threshold", "seed_distance": "--seed-distance",
                  "min_size": "--min-size", "seed_threshold": "--seed-threshold",
                  "merge_below": "--merge-below"}


def instance_settings(
    model: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
) -> tuple[str, InstanceParams, str]:
    """The instance target, the post-processing settings and where they come from, for a model.

    Parameters
    ----------
    model : path or str
        Model file, run folder or packaged model name.
    overrides : mapping, optional
        Settings of :class:`~useg.postprocess.instances.InstanceParams` given explicitly (None
        values are ignored); they replace the stored ones one by one.

    Returns
    -------
    target : str
        ``"instances"``, ``"three_class"`` or ``"boundary"``.
    params : InstanceParams
    source : str
        One line for the user: which settings were chosen on validation, which were given, or
        that the defaults apply.
    """
    path = resolve_model(model)
    return _settings(path, model_info(path), overrides)


def _settings(path: Path, header: Mapping[str, Any],
              overrides: Mapping[str, Any] | None) -> tuple[str, InstanceParams, str]:
    mode = (header.get("labels") or {}).get("mode", "binary")
    if mode not in INSTANCE_TARGETS:
        raise ConfigError(f"{path}: --instances needs a model trained with --labels "
                          f"{', '.join(INSTANCE_TARGETS)}; this one was trained with {mode!r}")
    target = INSTANCE_TARGETS[mode]
    classes = int(header["config"].get("classes", 2))
    if classes != TARGETS[target]:
        # Checked before any prediction; a model file without its label mode reads as binary.
        said = "" if "labels" in header else " (the file does not say; binary assumed)"
        raise ConfigError(f"{path}: --instances needs {TARGETS[target]} classes for its label "
                          f"mode {mode!r}{said}; its network has {classes}")
    stored = header.get("instances")
    if stored is not None and not isinstance(stored, dict):
        raise ModelFileError(f"{path}: header field 'instances' must be an object")
    base = InstanceParams()
    source = "defaults (the model stores no settings chosen on validation)"
    if stored:
        base = InstanceParams.from_dict(stored.get("params", {}), source=f"{path}: instances")
        source = f"chosen on validation ({stored.get('chosen_on', 'recorded in the model')})"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        params = InstanceParams.from_dict({**base.to_dict(), **given}, source="options",
                                         error=ConfigError)
        if "seed_distance" in given and target == "three_class":
            raise ConfigError(f"--seed-distance has no effect on {path}: its three_class "
                              "target takes its seeds from the interior class")
        if "seed_distance" in given and params.seed_threshold is not None:
            whose = ("--seed-threshold" if "seed_threshold" in given
                     else f"the seed threshold stored in {path}")
            raise ConfigError(f"--seed-distance has no effect with {whose}: seeds then come "
                              "from the threshold; give one of the two")
        source += f"; given: {', '.join(f'{k}={v}' for k, v in given.items())}"
    else:
        params = base
    return target, params, source


def instances_of(target: str, params: InstanceParams,
                 model_ndim: int) -> Callable[[np.ndarray, Sequence[float] | None], np.ndarray]:
    """The instance step as a derived result of :func:`useg.inference.files.predict_files`.

    A 2D model applied to a stack saw no context across slices: its objects are found slice by
    slice, with ids unique in the stack.
    """

    def derive(probs: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
        relative = instance_spacing(spacing, probs.ndim - 1)
        if model_ndim == 2 and probs.ndim == 4:
            planes, offset = [], 0
            for z in range(probs.shape[1]):
                plane = instances_from_probabilities(
                    probs[:, z], target, params,
                    spacing=None if relative is None else relative[1:]).astype(np.int64)
                plane[plane > 0] += offset
                offset = max(offset, int(plane.max()))
                planes.append(plane)
            stack = np.stack(planes)
            return stack.astype(np.uint16 if offset <= np.iinfo(np.uint16).max else np.uint32)
        return instances_from_probabilities(probs, target, params, spacing=relative)

    return derive


def instance_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """A file's voxel size relative to its finest axis, for the instance step's distance
    transform (:func:`useg.training.samples.relative_spacing`); None when the file does not
    give one size per spatial axis."""
    if spacing is None or len(spacing) != ndim:
        return None
    return relative_spacing(spacing)


def segment_paths(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike,
    *,
    instances: bool = False,
    instance_options: Mapping[str, Any] | None = None,
    on_settings: Callable[[str], None] | None = None,
    **options: Any,
) -> list[tuple[Path, dict[str, Path]]] | dict[str, Any]:
    """``useg predict``: :func:`useg.inference.files.predict_paths`, and with ``instances`` one
    label per object in ``<stem>_instances.tif`` (or the array ``instances`` of a ``--dask``
    store).

    Parameters
    ----------
    inputs, out, model, options
        As for :func:`useg.inference.files.predict_paths`.
    instances : bool
        Also write the objects (:func:`useg.postprocess.instances.instances_from_probabilities`).
    instance_options : mapping, optional
        Explicit post-processing settings (:func:`instance_settings`).
    on_settings : callable, optional
        Called once with the line saying which post-processing settings apply.
    """
    if not instances:
        if instance_options and any(v is not None for v in instance_options.values()):
            given = ", ".join(INSTANCE_FLAGS.get(k, k) for k, v in instance_options.items()
                              if v is not None)
            raise ConfigError(f"{given}: only with --instances")
        return predict_paths(inputs, out, model, **options)
    path = resolve_model(model)
    header = model_info(path)
    target, params, source = _settings(path, header, instance_options)
    line = f"instances: {target} target, {_describe(target, params)}; {source}"
    if not options.get("dask"):
        ndim = int(header["config"]["ndim"])
        # Said once the inputs and outputs have been checked, not before a refusal.
        ready = None if on_settings is None else (lambda: on_settings(line))
        return predict_paths(inputs, out, path, on_ready=ready,
                             derive={"instances": instances_of(target, params, ndim)}, **options)
    if on_settings is not None:
        on_settings(line)
    if not options.get("write_probabilities", True):
        raise ConfigError("--instances with --dask finds objects in the stored probabilities; "
                          "leave out --no-probs")
    summary = predict_paths(inputs, out, model, **options)
    summary["instances"] = _store_instances(out, target, params, summary, options)
    return summary


def _describe(target: str, params: InstanceParams) -> str:
    # A setting that does not take part is not shown: no seed threshold (the default), or the
    # seed distance when seeds come from the seed threshold or the interior class.
    unused = {"seed_threshold"} if params.seed_threshold is None else {"seed_distance"}
    if target == "three_class":
        unused.add("seed_distance")
    if params.merge_below is None:
        unused.add("merge_below")
    return ", ".join(f"{f.name} {getattr(params, f.name)}" for f in dataclasses.fields(params)
                     if f.name not in unused)


def _store_instances(out, target, params, summary, options) -> str:
    """Objects of the probabilities in the store ``out``, block by block, into ``out/instances``
    (of an OME-Zarr store: the label image ``out/labels/instances``, with its pyramid).

    Recomputed whole on every run: the object ids depend on every block, and the step is cheap
    next to the prediction. Each block is labelled with half a block of context on every side,
    so the objects equal those of one whole-image pass wherever a group of touching objects
    spans less than half a block (:func:`useg.postprocess.instance_blocks.instances_in_blocks`).
    """
    from useg.io.chunked import create_array, open_array
    from useg.io.files import result_paths
    from useg.io.ome import fill_levels
    from useg.postprocess.instance_blocks import instances_in_blocks

    paths = result_paths(out, None, extra=("instances",))
    probs, meta = open_array(str(paths["probabilities"]))
    spatial = tuple(probs.shape[1:])
    block = tuple(int(b) for b in summary["block"])
    spacing = meta.get("spacing")
    labels = create_array(str(paths["instances"]), spatial, np.uint32, block,
                          spacing=spacing, unit=meta.get("unit"), pyramid=True, overwrite=True,
                          origin=meta.get("origin"))
    relative = instance_spacing(spacing, len(spatial))
    halo = tuple(max(16, b // 2) for b in block)
    def said(n: int) -> None:
        warnings.warn(UsegWarning(
            f"{paths['instances']}: {n} object(s) reached the edge of their block's context "
            f"({', '.join(map(str, halo))} voxels on each side), so they may be split or "
            "joined otherwise than in a whole-image pass; a larger --block gives them more "
            "context"), stacklevel=2)

    instances_in_blocks(probs, labels, target, params, block, halo, spacing=relative,
                        on_cut=said)
    fill_levels(str(paths["instances"]), "mode")  # an OME-Zarr label image's lower levels
    return str(paths["instances"])

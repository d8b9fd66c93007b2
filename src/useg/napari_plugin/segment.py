"""What the napari widget computes, from arrays: no napari, no Qt.

:func:`segment_array` applies a model to the data of an image layer as ``useg predict`` applies
it to a file: :func:`useg.inference.files.predict_image` (a 2D model predicts a stack slice by
slice), the most likely class by :func:`useg.labels.most_likely_class` (class 1 above a
two-class model's operating point), and with ``instances``
the objects by :func:`useg.workflows.segment.instances_of` with the settings that
:func:`useg.workflows.segment.instance_settings` chooses. :func:`result_layers` turns the result
into napari's layer data tuples, placed like the input layer, so the widget only moves data
between threads and layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import InputError

__all__ = ["Segmentation", "result_layers", "segment_array"]


@dataclass(frozen=True)
class Segmentation:
    """The results of :func:`segment_array`.

    Attributes
    ----------
    probabilities : ndarray
        ``(classes, *spatial)`` float32 class probabilities.
    classes : ndarray
        ``spatial``: the most likely class of every pixel (class 1 where its probability
        exceeds the operating point of a two-class model that states one).
    instances : ndarray or None
        ``spatial``: one id per object (0 = background), when asked for.
    model : Path
        The model file used.
    labels : dict
        The model header's ``labels`` record (mode, class names), for the layers' metadata.
    note : str or None
        Which instance settings applied (as ``useg predict --instances`` says it).
    """

    probabilities: np.ndarray
    classes: np.ndarray
    instances: np.ndarray | None
    model: Path
    labels: dict[str, Any]
    note: str | None = None


def segment_array(
    image: Any,
    model: str | os.PathLike,
    *,
    rgb: bool = False,
    spacing: Sequence[float] | None = None,
    tile: int | None = None,
    tta: bool = False,
    device: str = "auto",
    instances: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Segmentation:
    """Predict an image as ``useg predict`` does, and find its objects on request.

    Parameters
    ----------
    image : array-like
        A napari image layer's data: ``(*spatial)``, ``(*spatial, 3 or 4)`` when ``rgb``, or
        ``(C, *spatial)`` for a model with C > 1 input channels.
    model : path or str
        Model file (``.safetensors``), run folder or packaged model name
        (:func:`useg.nets.checkpoint.resolve_model`).
    rgb : bool
        The last axis holds the colour channels (napari's ``layer.rgb``).
    spacing : sequence of float, optional
        The layer's ``scale``; its entries for the spatial axes (the last ones) are the pixel
        size that the instance step's distance transform uses, as ``useg predict`` uses a
        file's calibration.
    tile : int, optional
        Input tile (rounded up to a valid size); chosen from memory when None or 0.
    tta : bool
        Average over flips and quarter turns.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    instances : bool
        Also split the foreground into objects.
    progress : callable, optional
        Called with (tiles done, tiles total) as the prediction goes.

    Returns
    -------
    Segmentation

    Raises
    ------
    UsegError
        A one-line reason (an image the model cannot take, a model without an instance target).
    """
    from useg.device import resolve_device
    from useg.inference.files import predict_image
    from useg.inference.predict import check_real
    from useg.labels import class_dtype, most_likely_class
    from useg.nets.checkpoint import load_model, model_info, operating_threshold, resolve_model
    from useg.nets.config import UNetConfig
    from useg.workflows.segment import instance_settings, instances_of

    path = resolve_model(model)
    # Complete, with the defaults of the fields a model file may leave out.
    config = UNetConfig.from_dict(model_info(path)["config"])
    data = np.asarray(image)
    check_real(data, "the layer")
    if rgb:
        data = np.moveaxis(data, -1, 0)
    elif config.in_channels == 1:
        data = data[np.newaxis]
    # Checked before the model is loaded or a tile predicted: a mistake costs nothing.
    if spacing is not None:
        if len(spacing) < data.ndim - 1:
            raise InputError(f"spacing {tuple(spacing)} has fewer entries than the image's "
                             f"{data.ndim - 1} spatial axes")
        spacing = tuple(float(s) for s in spacing[len(spacing) - (data.ndim - 1):])
    derive, note = None, None
    if instances:
        ndim = config.ndim
        target, params, source = instance_settings(path)
        derive = instances_of(target, params, ndim)
        note = f"instances: {target} target; {source}"
    torch_device = resolve_device(device)
    net = load_model(path, device=torch_device)
    probs = predict_image(net, data, tile=tile or None, tta=tta, device=torch_device,
                          progress=progress or False)
    classes = most_likely_class(probs, class_dtype(probs.shape[0]),
                                threshold=operating_threshold(net.meta))
    objects = None if derive is None else derive(probs, spacing)
    labels = dict(net.meta.get("labels") or {})
    return Segmentation(probs, classes, objects, path, labels, note)


def result_layers(
    result: Segmentation,
    name: str,
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """napari layer data tuples of a :class:`Segmentation` of the layer ``name``.

    ``<name> probabilities`` (an image layer, classes on its first axis), ``<name> classes``
    and ``<name> instances`` (label layers), each with the input layer's ``scale`` and
    ``translate`` (their entries for the spatial axes, the last ones) so that they overlay
    it; the probabilities' class axis has scale 1.
    """
    spatial = result.classes.ndim
    scale = _spatial(scale, spatial, 1.0)
    translate = _spatial(translate, spatial, 0.0)
    meta = {"useg": {"model": str(result.model), "labels": result.labels, "source": name}}
    layers = [
        (result.probabilities,
         {"name": f"{name} probabilities", "scale": (1.0, *scale), "translate": (0.0, *translate),
          "contrast_limits": (0.0, 1.0), "colormap": "magma", "metadata": meta}, "image"),
        (result.classes,
         {"name": f"{name} classes", "scale": scale, "translate": translate, "metadata": meta},
         "labels"),
    ]
    if result.instances is not None:
        layers.append((result.instances,
                       {"name": f"{name} instances", "scale": scale, "translate": translate,
                        "metadata": meta}, "labels"))
    return layers


def _spatial(values: Sequence[float] | None, ndim: int, default: float) -> tuple[float, ...]:
    """The last ``ndim`` of a layer's per-axis ``values`` (``default`` for each when None)."""
    if values is None:
        return (default,) * ndim
    return tuple(float(v) for v in values)[-ndim:]

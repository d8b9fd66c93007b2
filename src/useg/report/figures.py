"""Pictures of a run: overlays of images with their predictions and ground truth, and PNG data
URIs for a self-contained page.

:func:`overlay_panels` is the one composition of an image with its probability, segmentation
and ground truth (``useg report`` and the demo's ``overlay.png`` draw the same panels).
"""

from __future__ import annotations

import base64
from io import BytesIO

import numpy as np

from useg.training.samples import boundary_target

__all__ = ["SEGMENT_COLOR", "TRUTH_COLOR", "data_uri", "middle_slice", "overlay_panels",
           "png_bytes", "to_uint8"]

# Outline colours: predicted segments red, ground truth cyan (told apart also by most
# colour-blind readers, unlike red and green).
SEGMENT_COLOR = (255, 64, 32)
TRUTH_COLOR = (32, 200, 255)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Gray values stretched between their 0.5 and 99.5 percentiles to 0..255 (one outlier
    pixel does not darken the whole picture)."""
    lo, hi = np.percentile(x, [0.5, 99.5])
    return (np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def overlay_panels(
    image: np.ndarray, prob: np.ndarray, segments: np.ndarray, truth: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Panels of one 2D image as RGB ``uint8`` arrays: the image, a probability map (0..1) in
    gray, the outlines of ``segments`` (red) over the image and, when given, the outlines of
    the ground-truth labels ``truth`` (cyan) over the image.

    ``image`` is ``(Y, X)`` (gray) or ``(Y, X, 3)`` (colour); ``segments`` and ``truth`` are
    label images (class maps or instance ids: a line wherever the value changes).
    """
    if image.ndim == 3:
        rgb = np.stack([to_uint8(image[..., c]) for c in range(3)], axis=-1)
    else:
        rgb = np.stack([to_uint8(image)] * 3, axis=-1)
    seg_rgb = rgb.copy()
    seg_rgb[boundary_target(segments) > 0] = SEGMENT_COLOR
    panels = [rgb, np.stack([(np.clip(prob, 0, 1) * 255).astype(np.uint8)] * 3, -1), seg_rgb]
    if truth is not None:
        gt_rgb = rgb.copy()
        gt_rgb[boundary_target(truth) > 0] = TRUTH_COLOR
        panels.append(gt_rgb)
    return panels


def middle_slice(array: np.ndarray, spatial: int) -> np.ndarray:
    """The middle plane (along the first spatial axis) of an array with ``spatial`` spatial axes
    last, when there are three; the array itself otherwise."""
    if spatial != 3:
        return array
    index = (slice(None),) * (array.ndim - 3) + (array.shape[-3] // 2,)
    return array[index]


def png_bytes(rgb: np.ndarray, max_side: int | None = None) -> bytes:
    """``rgb`` (``uint8``, ``(Y, X[, 3])``) as PNG bytes, shrunk to at most ``max_side`` pixels
    along its longer side."""
    from PIL import Image

    if rgb.ndim == 3 and (rgb == rgb[..., :1]).all():
        rgb = rgb[..., 0]  # gray: a third of the bytes
    picture = Image.fromarray(np.ascontiguousarray(rgb))
    if max_side is not None and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    if picture.mode == "RGB":
        # Gray values and two outline colours fit a palette of 256 (about a third of the bytes
        # of RGB, so that a page of images stays a few MB).
        picture = picture.quantize(256, method=Image.Quantize.MEDIANCUT)
    buffer = BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes, for an ``<img>`` that needs no file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")

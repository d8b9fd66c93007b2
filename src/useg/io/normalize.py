"""Intensity normalisation of network inputs, computed once per image so that tiles agree."""

from __future__ import annotations

from typing import Any

import numpy as np

from useg.io.arrays import release_pages

__all__ = ["DEFAULT", "image_stats", "normalize", "raw_dtype"]

# Percentiles map to 0 and 1: robust to hot pixels and to the dtype of the file.
DEFAULT: dict[str, Any] = {"mode": "percentile", "low": 1.0, "high": 99.8}


def _sample(image: Any, max_samples: int) -> np.ndarray:
    """A strided subsample of a (C, *spatial) array-like, without reading all of a large one."""
    spatial = image.shape[1:]
    total = int(np.prod(spatial))
    if total <= max_samples:
        return np.asarray(image[...]).reshape(image.shape[0], -1)
    step = max(1, int(round((total / max_samples) ** (1.0 / len(spatial)))))
    rest = (slice(None, None, step),) * (len(spatial) - 1)
    # Every sampled row of a memmap maps whole pages (and their neighbours) of the file: read
    # it in slabs and unmap each, so that the sample costs memory for itself only.
    slab = 64 * step
    parts = []
    for lo in range(0, spatial[0], slab):
        parts.append(np.array(image[(slice(None), slice(lo, lo + slab, step), *rest)]))
        release_pages(image)
    return np.concatenate(parts, axis=1).reshape(image.shape[0], -1)


def image_stats(image: Any, spec: dict[str, Any] | None = None, max_samples: int = 1 << 22) -> dict:
    """Per-channel offset and scale of an image for a normalisation spec.

    Examples
    --------
    >>> img = np.linspace(0, 100, 1001, dtype=np.float32).reshape(1, 7, 143)
    >>> st = image_stats(img, {"mode": "percentile", "low": 0, "high": 100})
    >>> st["offset"], st["scale"]
    ([0.0], [100.0])
    """
    spec = dict(DEFAULT if spec is None else spec)
    mode = spec.get("mode", "percentile")
    c = image.shape[0]
    if mode == "none":
        return {"offset": [0.0] * c, "scale": [1.0] * c}
    if mode == "fixed":
        return {"offset": list(spec["offset"]), "scale": list(spec["scale"])}
    # float64: the spread of float32 values near their range's ends overflows float32.
    data = _sample(image, max_samples).astype(np.float64)
    if mode == "percentile":
        lo = np.percentile(data, spec.get("low", 1.0), axis=1)
        hi = np.percentile(data, spec.get("high", 99.8), axis=1)
        scale = hi - lo
    elif mode == "meanstd":
        lo = data.mean(axis=1)
        scale = data.std(axis=1)
    else:
        raise ValueError(f"unknown normalisation mode {mode!r}")
    scale = np.where(scale > 1e-12, scale, 1.0)
    return {"offset": [float(v) for v in lo], "scale": [float(v) for v in scale]}


# Statistics larger than this are applied in float64 (normalize).
_FLOAT32_SAFE = 1e30


def raw_dtype(dtype: Any) -> type:
    """The float type that holds raw values of ``dtype`` until they are normalised: float32,
    or float64 for values float32 cannot hold exactly (float64, 32- and 64-bit integers), which
    rounded first would collapse a small contrast on a large offset to a few steps."""
    return np.float32 if np.can_cast(dtype, np.float32) else np.float64


def normalize(x: np.ndarray, stats: dict[str, Any], channel_axis: int = 0) -> np.ndarray:
    """``(x - offset) / scale`` per channel, as float32."""
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    offset = np.asarray(stats["offset"], dtype=np.float64).reshape(shape)
    scale = np.asarray(stats["scale"], dtype=np.float64).reshape(shape)
    # Statistics beyond float32's comfortable range (images of huge float values) are applied
    # in float64, where x - offset cannot overflow, and so are values float32 cannot hold
    # exactly (raw_dtype). Every other image stays in float32.
    big = max(np.abs(offset).max(initial=0.0), np.abs(scale).max(initial=0.0)) > _FLOAT32_SAFE
    work = np.float64 if big else raw_dtype(x.dtype)
    out = (x.astype(work, copy=False) - offset.astype(work)) / scale.astype(work)
    return out.astype(np.float32, copy=False)

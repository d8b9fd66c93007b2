"""What label values mean, shared by every stage: the ignore value, and classes from probabilities.

``IGNORE`` marks pixels without annotation in training targets (weight 0, left out of the loss
and the class balance). :func:`most_likely_class` is the one way class probabilities become a
class map: prediction, block-wise prediction, densify, validation and post-processing call it,
and :func:`class_dtype` is the one rule for the pixel type of a class map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from useg.errors import InputError

__all__ = ["IGNORE", "class_dtype", "most_likely_class"]

#: Target value of pixels without annotation.
IGNORE = -1


def class_dtype(classes: int) -> np.dtype:
    """The smallest unsigned integer type that holds the class indices ``0 .. classes - 1``.

    Examples
    --------
    >>> class_dtype(2), class_dtype(256), class_dtype(257)
    (dtype('uint8'), dtype('uint8'), dtype('uint16'))
    """
    return np.min_scalar_type(max(int(classes) - 1, 0))


def _classes(p: np.ndarray, dtype: Any, threshold: float | None) -> np.ndarray:
    if threshold is not None:
        # One channel: a sigmoid output; two: class 1's probability (the last channel).
        return (p[-1] > threshold).astype(dtype)
    labels = np.zeros(p.shape[1:], dtype=dtype)
    best = p[0]
    for c in range(1, p.shape[0]):
        better = p[c] > best
        np.copyto(labels, c, where=better)
        if c + 1 < p.shape[0]:
            best = np.maximum(best, p[c])
    return labels


def most_likely_class(
    probs: Any,
    dtype: Any = None,
    *,
    threshold: float | None = None,
    out: Any = None,
    slab: int = 64,
) -> Any:
    """The most probable class of every pixel of ``(C, *spatial)`` class probabilities.

    Equals ``np.argmax(probs, axis=0)`` (the first class on ties), computed class by class:
    NumPy's argmax over the leading axis walks it with a stride of the whole image per step,
    and comparing whole class planes is ~20-40x faster for two classes.

    Parameters
    ----------
    probs : array-like, shape (C, ...)
        Class probabilities or scores, channels first.
    dtype : dtype, optional
        Pixel type of the result; default :func:`class_dtype` of ``C`` (``out``'s with ``out``).
    threshold : float, optional
        Class 1 where its probability exceeds ``threshold``, class 0 elsewhere: a single
        channel is read as a sigmoid output (class 1's probability), of two channels the
        second is class 1's (a two-class model's operating point,
        :func:`useg.nets.checkpoint.operating_threshold`). Without it a single channel is the
        only class (0 everywhere), as argmax gives. More than two channels take none.
    out : array-like, optional
        Where to write the result (e.g. a memmap or a zarr array); it is filled ``slab``
        positions of the first spatial axis at a time, so that the temporaries stay small.

    Returns
    -------
    ndarray, or ``out``
        Class index per pixel, shape ``probs.shape[1:]``.

    Examples
    --------
    >>> most_likely_class(np.array([[0.5, 0.2, 0.1], [0.5, 0.8, 0.1], [0.0, 0.0, 0.8]]))
    array([0, 1, 2], dtype=uint8)
    >>> most_likely_class(np.array([[0.2, 0.7]]), threshold=0.5)
    array([0, 1], dtype=uint8)
    >>> most_likely_class(np.array([[0.6, 0.8], [0.4, 0.2]]), threshold=0.3)
    array([1, 0], dtype=uint8)
    """
    shape = tuple(probs.shape)
    if len(shape) < 2:
        raise InputError(f"probs must have a channel axis and spatial axes, got shape {shape}")
    if shape[0] == 0:
        raise InputError("probs has no channels")
    if threshold is not None and shape[0] > 2:
        raise InputError(f"a threshold applies to one or two classes, not {shape[0]}")
    if out is not None:
        dtype = out.dtype if dtype is None else dtype
        for lo in range(0, shape[1], slab):
            out[lo : lo + slab] = _classes(np.asarray(probs[:, lo : lo + slab]), dtype,
                                           threshold)
        return out
    dtype = class_dtype(2 if shape[0] == 1 else shape[0]) if dtype is None else dtype
    return _classes(np.asarray(probs), dtype, threshold)

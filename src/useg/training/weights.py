"""Pixel-wise loss weight maps (Ronneberger et al. 2015, eq. 2) for 1-, 2- and 3-D label arrays.

The U-Net paper trains with a weighted cross entropy whose weight map

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

balances the class frequencies (``w_c``) and makes the network learn the thin background borders
that separate touching objects (``d1``/``d2``: distance to the nearest and second-nearest object).

Cost of :func:`border_weight_map`: the border term drops below ``tol * w0`` once
``d1 + d2 > D = sigma * sqrt(2 * ln(1 / tol))``, so only objects closer than ``D`` to a pixel can
matter. Each object's distance map is therefore computed only inside its bounding box grown by
``D`` (less one pixel), and the two smallest distances per pixel are kept while looping over the
objects. The cost is (number of objects) x (window size) instead of (number of objects) x (image
size), and the result equals the brute force computation (one full distance transform per
object) wherever ``d1 + d2 <= D``; beyond ``D`` the term is set to exactly 0 (its true value is
below ``tol * w0`` there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from useg.errors import ConfigError, InputError

__all__ = [
    "class_balance_weights",
    "border_weight_map",
    "border_cutoff",
    "instances_from_binary",
]


def class_balance_weights(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Per-pixel weights that balance the class frequencies (the ``w_c`` of the U-Net paper).

    Every class present gets the weight ``1 / (K * f_c)``, where ``f_c`` is its fraction of the
    labelled pixels and ``K`` the number of classes present: each class then carries the same
    total weight and the mean weight over the labelled pixels is exactly 1.

    Parameters
    ----------
    labels : ndarray of int
        Class (or instance) label of each pixel, any shape.
    ignore_index : int, optional
        Label of unlabelled pixels; they get weight 0 and do not count in the frequencies.

    Returns
    -------
    ndarray of float32, same shape as ``labels``.

    Examples
    --------
    >>> class_balance_weights(np.array([0, 0, 0, 1])).tolist()
    [0.6666666865348816, 0.6666666865348816, 0.6666666865348816, 2.0]
    >>> class_balance_weights(np.array([0, 1, -1]), ignore_index=-1).tolist()
    [1.0, 1.0, 0.0]
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise InputError(f"labels must be an integer array, got dtype {labels.dtype}")
    flat = labels.ravel()
    if flat.size and flat.min() >= 0 and flat.max() <= flat.size:
        # Small non-negative labels (the usual case): a bincount avoids np.unique's sort.
        index = flat.astype(np.intp, copy=False)
        counts = np.bincount(index)
        values = np.arange(len(counts))
    else:
        values, index, counts = np.unique(flat, return_inverse=True, return_counts=True)
    keep = counts > 0
    if ignore_index is not None:
        keep &= values != ignore_index
    n_labelled = counts[keep].sum()
    per_class = np.zeros(len(values), np.float64)
    if n_labelled:
        per_class[keep] = n_labelled / (keep.sum() * counts[keep])
    return per_class.astype(np.float32)[index].reshape(labels.shape)


def instances_from_binary(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Label the connected components of a binary mask as separate objects.

    A binary label image such as the ISBI 2012 membranes (255 cell interior, 0 membrane) becomes
    an instance map for :func:`border_weight_map`: every connected region of nonzero pixels is
    one object (ids 1..n), zero pixels are background (0).

    Parameters
    ----------
    mask : ndarray
        Nonzero = object, zero = background. Any number of dimensions.
    connectivity : int, default 1
        Neighbourhood for connecting pixels: 1 = faces only (4-neighbours in 2D, 6 in 3D), up to
        ``mask.ndim`` = all neighbours (8 in 2D, 26 in 3D). 1 keeps objects that touch only at a
        corner apart, which suits thin membrane borders.

    Returns
    -------
    ndarray of int32, same shape as ``mask``.

    Examples
    --------
    >>> m = np.array([[255, 255, 0, 255],
    ...               [0,   0,   0, 255]])
    >>> instances_from_binary(m).tolist()
    [[1, 1, 0, 2], [0, 0, 0, 2]]
    """
    mask = np.asarray(mask)
    if mask.ndim == 0:
        raise InputError("mask must have at least one dimension")
    if not 1 <= connectivity <= mask.ndim:
        raise ConfigError(f"connectivity must be in 1..{mask.ndim}, got {connectivity}")
    structure = ndi.generate_binary_structure(mask.ndim, connectivity)
    labelled, _ = ndi.label(mask != 0, structure=structure, output=np.int32)
    return labelled


def border_cutoff(sigma: float, tol: float = 1e-4) -> float:
    """Distance ``D`` beyond which the border term ``exp(-D**2 / (2 sigma**2))`` is below ``tol``.

    :func:`border_weight_map` treats the border term as 0 wherever ``d1 + d2 > D``.

    Examples
    --------
    >>> round(border_cutoff(5.0, 1e-4), 3)
    21.46
    """
    return float(sigma * math.sqrt(2.0 * math.log(1.0 / tol)))


def border_weight_map(
    instances: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    spacing: Sequence[float] | None = None,
    class_weights: bool | np.ndarray = True,
    background: int = 0,
    tol: float = 1e-4,
) -> np.ndarray:
    """U-Net weight map ``w = w_c + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` (Ronneberger 2015).

    ``d1`` and ``d2`` are the Euclidean distances from a pixel to the nearest and the
    second-nearest object (two different objects), in the physical units of ``spacing``. As in
    the paper, the border term is added on background pixels only: there it is large in the
    narrow gaps that separate touching objects and small elsewhere. Object pixels keep ``w_c``.

    Parameters
    ----------
    instances : ndarray of int
        Instance map, ``(Z,) Y, X`` (any number of dimensions): each object has its own id,
        background pixels equal ``background``. For a binary mask use
        :func:`instances_from_binary` first.
    w0 : float, default 10
        Amplitude of the border term (paper: 10).
    sigma : float, default 5
        Width of the border term, in the units of ``spacing`` (paper: about 5 pixels).
    spacing : sequence of float, optional
        Physical size of a pixel along each axis (default 1 for every axis).
    class_weights : bool or ndarray, default True
        ``True``: ``w_c`` from :func:`class_balance_weights` of the object/background mask;
        ``False``: ``w_c = 1``; an array of the shape of ``instances``: ``w_c`` itself.
    background : int, default 0
        Id of background pixels.
    tol : float, default 1e-4
        The border term is set to 0 where it is below ``tol * w0``, i.e. where
        ``d1 + d2 > border_cutoff(sigma, tol)``; elsewhere it is exact.

    Returns
    -------
    ndarray of float32, same shape as ``instances``.

    Examples
    --------
    >>> inst = np.zeros((20, 20), int)
    >>> inst[2:18, 2:9] = 1
    >>> inst[2:18, 10:18] = 2          # a 1-pixel gap at column 9
    >>> w = border_weight_map(inst, class_weights=False)
    >>> bool(w[10, 9] > 9), bool(w[0, 0] < 3), float(w[10, 5])
    (True, True, 1.0)
    """
    instances = np.asarray(instances)
    if not np.issubdtype(instances.dtype, np.integer):
        raise InputError(f"instances must be an integer array, got dtype {instances.dtype}")
    if instances.ndim == 0:
        raise InputError("instances must have at least one dimension")
    spacing = _check_spacing(spacing, instances.ndim)
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    if not w0 >= 0:
        raise ConfigError(f"w0 must be >= 0, got {w0}")
    if not 0 < tol < 1:
        raise ConfigError(f"tol must be in (0, 1), got {tol}")
    is_background = instances == background
    weights = _class_weight_map(instances, is_background, class_weights)
    if w0 == 0:
        return weights
    _add_border_term(weights, instances, is_background, background, spacing, w0, sigma, tol)
    return weights


def _class_weight_map(
    instances: np.ndarray, is_background: np.ndarray, class_weights: bool | np.ndarray
) -> np.ndarray:
    """``w_c`` of :func:`border_weight_map` (a new float32 array)."""
    if class_weights is True:
        return class_balance_weights(is_background.view(np.uint8))
    if class_weights is False:
        return np.ones(instances.shape, np.float32)
    weights = np.array(class_weights, dtype=np.float32)
    if weights.shape != instances.shape:
        raise InputError(
            f"class_weights has shape {weights.shape}, instances have {instances.shape}"
        )
    return weights


def _add_border_term(
    weights: np.ndarray,
    instances: np.ndarray,
    is_background: np.ndarray,
    background: int,
    spacing: tuple[float, ...],
    w0: float,
    sigma: float,
    tol: float,
) -> None:
    """Add ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` to ``weights`` on background pixels where
    it is at least ``tol * w0``, in place."""
    cutoff = border_cutoff(sigma, tol)
    sq1, sq2 = _two_nearest_squared(instances, is_background, background, spacing, cutoff)
    # d1 <= d2, so d1 + d2 <= cutoff needs d2 <= cutoff: only those pixels need square roots.
    near = np.flatnonzero(is_background & (sq2 <= np.float32(cutoff) ** 2))
    total = np.sqrt(sq1.ravel()[near].astype(np.float64))
    total += np.sqrt(sq2.ravel()[near].astype(np.float64))
    keep = total <= cutoff
    term = w0 * np.exp(-(total[keep] ** 2) / (2.0 * sigma**2))
    weights.reshape(-1)[near[keep]] += term.astype(np.float32)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in np.atleast_1d(spacing))
    if len(spacing) == 1:
        spacing = spacing * ndim
    if len(spacing) != ndim or not all(s > 0 for s in spacing):
        raise ConfigError(f"spacing must be {ndim} positive numbers, got {spacing}")
    return spacing


def _consecutive_ids(
    instances: np.ndarray, is_background: np.ndarray, background: int
) -> np.ndarray:
    """Object ids as positive integers without large holes, as find_objects needs them."""
    if background == 0 and instances.min() >= 0 and instances.max() <= 4 * instances.size + 16:
        return instances
    _, inverse = np.unique(instances.ravel(), return_inverse=True)
    ids = (inverse + 1).reshape(instances.shape)
    ids[is_background] = 0
    return ids


def _two_nearest_squared(
    instances: np.ndarray,
    is_background: np.ndarray,
    background: int,
    spacing: tuple[float, ...],
    cutoff: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (float32) to the nearest and second-nearest object.

    Exact on background pixels where the sum of the distances is <= cutoff. Elsewhere the values
    are >= the true ones (inf when fewer than two objects are near), so that sum exceeds
    ``cutoff`` there too.
    """
    ids = _consecutive_ids(instances, is_background, background)
    ndim = ids.ndim
    sq1 = np.full(ids.shape, np.inf, np.float32)
    sq2 = np.full(ids.shape, np.inf, np.float32)
    # Where the term matters (background pixel, d1 + d2 <= cutoff) d1 is at least one grid
    # step, so both distances are <= cutoff - step: an object further away from a pixel is never
    # one of its two nearest, and its distances are needed only in its bounding box grown by that.
    reach = cutoff - min(spacing)
    margin = [max(math.floor(reach / s + 1e-9), 0) for s in spacing]
    windows = []
    for label, box in enumerate(ndi.find_objects(ids), start=1):
        if box is not None:
            window = tuple(
                slice(max(sl.start - m, 0), min(sl.stop + m, n))
                for sl, m, n in zip(box, margin, ids.shape, strict=True)
            )
            windows.append((label, window))
    if not windows:
        return sq1, sq2
    largest = [max(w[a].stop - w[a].start for _, w in windows) for a in range(ndim)]
    grid = np.indices(largest, dtype=np.int32)
    isotropic = len(set(spacing)) == 1
    scale = np.asarray(spacing, np.float32)
    for label, window in windows:
        outside = ids[window] != label
        local = tuple(slice(0, n) for n in outside.shape)
        # The feature transform (nearest object pixel) is the costly part; squared distances
        # from it are cheaper than scipy's float64 distance output and order the same way.
        feature = np.empty((ndim, *outside.shape), np.int32)
        ndi.distance_transform_edt(
            outside,
            sampling=None if isotropic else spacing,
            return_distances=False,
            return_indices=True,
            indices=feature,
        )
        if isotropic:  # integer steps: exact squared distances in int32, scaled once
            step = feature[0] - grid[0][local]
            sq = step * step
            for axis in range(1, ndim):
                step = feature[axis] - grid[axis][local]
                sq += step * step
            sq = sq.astype(np.float32)
            if spacing[0] != 1.0:
                sq *= scale[0] ** 2
        else:
            sq = np.zeros(outside.shape, np.float32)
            for axis in range(ndim):
                step = (feature[axis] - grid[axis][local]).astype(np.float32)
                step *= scale[axis]
                sq += step * step
        near1, near2 = sq1[window], sq2[window]
        np.minimum(near2, np.maximum(near1, sq), out=near2)
        np.minimum(near1, sq, out=near1)
    return sq1, sq2

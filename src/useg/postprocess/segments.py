"""From network outputs to label images: thresholding, seeded watershed and label clean-up.

All functions are N-dimensional (arrays ``(Z,) Y, X``, class probabilities ``(C, (Z,) Y, X)``)
and need NumPy, SciPy and, for the watershed, scikit-image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from useg.errors import InputError
from useg.labels import most_likely_class

__all__ = [
    "threshold_components",
    "fill_unassigned",
    "watershed_segmentation",
    "remove_small_objects",
    "relabel_sequential",
    "probabilities_to_labels",
]


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    if not 1 <= connectivity <= ndim:
        raise InputError(f"connectivity must be between 1 and {ndim} for {ndim}-D arrays")
    return ndi.generate_binary_structure(ndim, connectivity)


def _label_dtype(n: int) -> type:
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def fill_unassigned(labels: np.ndarray) -> np.ndarray:
    """Give every 0 pixel the label of the nearest labelled pixel (Euclidean distance).

    Used to grow the regions found between membranes into the membrane pixels, so that a
    labelling covers every pixel before Rand or information scores are computed. On exact ties
    the choice among the nearest labelled pixels is the one of
    :func:`scipy.ndimage.distance_transform_edt`. An image without any label is returned as is.

    Parameters
    ----------
    labels : ndarray of int
        Label image; 0 = unassigned.

    Returns
    -------
    ndarray
        Copy of ``labels`` without zeros (unless it had no label at all).

    Examples
    --------
    >>> fill_unassigned(np.array([1, 0, 0, 2, 0]))
    array([1, 1, 2, 2, 2])
    """
    labels = np.asarray(labels)
    unassigned = labels == 0
    if not unassigned.any() or unassigned.all():
        return labels.copy()
    nearest = ndi.distance_transform_edt(unassigned, return_distances=False, return_indices=True)
    return labels[tuple(nearest)]


def threshold_components(
    prob_foreground: np.ndarray,
    threshold: float = 0.5,
    connectivity: int = 1,
    fill: bool = False,
) -> np.ndarray:
    """Label the connected components of ``prob_foreground > threshold``.

    This is how the ISBI 2012 evaluation turns an interior (non-membrane) probability map into
    regions: the membranes separate the cells, each connected piece of interior is one region and
    the membrane pixels get label 0. ``connectivity=1`` (4-neighbours in 2D, 6 in 3D) is the
    challenge's choice. With ``fill=True`` the membrane pixels are then given to the nearest
    region (:func:`fill_unassigned`), so that the labelling covers every pixel, which the
    Rand-type scores of :func:`useg.evaluation.isbi.isbi_scores` need. Filling is
    N-dimensional; for a stack of independent 2D sections, call it per slice.

    Parameters
    ----------
    prob_foreground : ndarray
        Foreground (interior) probability or binary map, any dimensionality.
    threshold : float
        Pixels strictly above it are foreground.
    connectivity : int
        1 = face neighbours only, up to ``ndim`` = all neighbours.
    fill : bool
        Grow the regions into the background pixels.

    Returns
    -------
    ndarray of int32
        Labels 1..K in raster order of first appearance; 0 = background (absent with ``fill``
        unless nothing is above the threshold).

    Examples
    --------
    >>> p = np.array([[0.9, 0.8, 0.1, 0.7],
    ...               [0.9, 0.6, 0.2, 0.9]])
    >>> threshold_components(p)
    array([[1, 1, 0, 2],
           [1, 1, 0, 2]], dtype=int32)
    """
    p = np.asarray(prob_foreground)
    if p.size == 0:
        raise InputError("prob_foreground is empty")
    labels, n = ndi.label(p > threshold, _structure(p.ndim, connectivity))
    labels = labels.astype(_label_dtype(n), copy=False)
    return fill_unassigned(labels) if fill else labels


def _seeds_from_distance(interior: np.ndarray, min_distance: float) -> np.ndarray:
    dist = ndi.distance_transform_edt(interior)
    r = int(np.ceil(min_distance))
    grid = np.indices((2 * r + 1,) * interior.ndim) - r
    ball = (grid**2).sum(axis=0) <= min_distance**2
    peaks = (dist == ndi.maximum_filter(dist, footprint=ball, mode="constant")) & (dist > 0)
    # A plateau of equal maxima is one seed.
    seeds, _ = ndi.label(peaks, ndi.generate_binary_structure(interior.ndim, interior.ndim))
    return seeds


def watershed_segmentation(
    prob_boundary: np.ndarray,
    markers: np.ndarray | None = None,
    *,
    threshold: float = 0.5,
    min_seed_distance: float | None = None,
    mask: np.ndarray | None = None,
    connectivity: int = 1,
) -> np.ndarray:
    """Seeded watershed on a boundary probability map.

    Regions grow from the seeds by flooding: a pixel joins the seed it can be reached from
    along a path whose highest boundary value is lowest (the boundary map is quantised to 256
    levels; among pixels of equal level the one queued first is flooded first), so that
    neighbouring regions meet on the ridges of the boundary map (Beucher & Meyer 1993). The
    flooding is :func:`skimage.segmentation.watershed` (a priority queue, compiled; unlike a
    breadth-first flood in NumPy its time does not grow with the length of the paths through
    plateaus, and :func:`scipy.ndimage.watershed_ift` is avoided because it lets a later
    marker overrun regions across ridges). Seeds, when not given, are:

    * ``min_seed_distance=None``: the connected components of ``prob_boundary < threshold``
      (the interiors separated by boundaries);
    * otherwise the maxima of the distance transform of that interior mask, keeping only
      points that are the highest within ``min_seed_distance`` pixels (one seed per object for
      touching round objects such as nuclei; a plateau of equal maxima is one seed).

    Parameters
    ----------
    prob_boundary : ndarray
        Boundary probability, any dimensionality. Values outside [0, 1] are rescaled to it by
        their minimum and maximum.
    markers : ndarray of int, optional
        Seeds (nonzero values, kept as labels); overrides the automatic seeds.
    threshold : float
        Boundary probability below which a pixel is interior, for the automatic seeds.
    min_seed_distance : float, optional
        Minimum distance between automatic seeds taken from the distance transform.
    mask : ndarray of bool, optional
        Only these pixels are labelled and flooded through (e.g. the foreground of a nuclei
        map); the rest is 0.
    connectivity : int
        Neighbourhood of the flooding (1 = face neighbours).

    Returns
    -------
    ndarray of int32
        Label image; pixels (in ``mask``) not connected to any seed are 0.

    Examples
    --------
    >>> b = np.array([[0.1, 0.2, 0.9, 0.3, 0.1],
    ...               [0.1, 0.3, 0.8, 0.2, 0.1]])
    >>> watershed_segmentation(b)  # each ridge pixel goes to the basin of its lower side
    array([[1, 1, 1, 2, 2],
           [1, 1, 2, 2, 2]], dtype=int32)
    """
    b = np.asarray(prob_boundary, dtype=np.float64)
    if b.size == 0:
        raise InputError("prob_boundary is empty")
    if not np.all(np.isfinite(b)):
        raise InputError("prob_boundary contains NaN or infinite values")
    structure = _structure(b.ndim, connectivity)
    if mask is None:
        mask = np.ones(b.shape, bool)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != b.shape:
            raise InputError(f"mask has shape {mask.shape} but prob_boundary has {b.shape}")
    lo, hi = float(b.min()), float(b.max())
    if lo < 0.0 or hi > 1.0:
        b = (b - lo) / (hi - lo)
    seeds = _watershed_seeds(b, markers, mask, threshold, min_seed_distance, structure)
    seeds = np.where(mask, seeds, 0).astype(np.int32)
    # Seeds are imposed minima: all of them start flooding at once, whatever their level.
    levels = np.where(seeds > 0, -1, np.round(b * 255)).astype(np.int16)
    return watershed(levels, seeds, connectivity=structure, mask=mask).astype(np.int32)


def _watershed_seeds(
    b: np.ndarray,
    markers: np.ndarray | None,
    mask: np.ndarray,
    threshold: float,
    min_seed_distance: float | None,
    structure: np.ndarray,
) -> np.ndarray:
    """The seeds of :func:`watershed_segmentation`: ``markers`` checked, or, without them, found
    in the boundary map ``b`` (scaled to [0, 1])."""
    if markers is None:
        interior = (b < threshold) & mask
        if min_seed_distance is None:
            return ndi.label(interior, structure)[0]
        if min_seed_distance <= 0:
            raise InputError(f"min_seed_distance must be positive, got {min_seed_distance}")
        return _seeds_from_distance(interior, float(min_seed_distance))
    seeds = np.asarray(markers)
    if seeds.shape != b.shape:
        raise InputError(f"markers have shape {seeds.shape} but prob_boundary has {b.shape}")
    if not np.issubdtype(seeds.dtype, np.integer) or seeds.min() < 0:
        raise InputError("markers must be non-negative integers (0 = no seed)")
    if seeds.max() >= np.iinfo(np.int32).max:
        raise InputError("markers exceed the int32 range")
    return seeds


def remove_small_objects(labels: np.ndarray, min_size: int, connectivity: int = 1) -> np.ndarray:
    """Remove objects with fewer than ``min_size`` pixels.

    For an integer label image each nonzero value is one object (its pixels need not be
    connected) and removed objects become 0. A boolean mask is split into connected components
    first (with ``connectivity``) and a boolean mask is returned.

    Parameters
    ----------
    labels : ndarray of int or bool
        Label image or binary mask, any dimensionality.
    min_size : int
        Objects smaller than this are removed.
    connectivity : int
        Only for boolean input: neighbourhood of the components.

    Returns
    -------
    ndarray
        Same dtype as ``labels``; remaining labels keep their values.

    Examples
    --------
    >>> remove_small_objects(np.array([1, 1, 1, 0, 2, 3, 3]), min_size=2)
    array([1, 1, 1, 0, 0, 3, 3])
    >>> remove_small_objects(np.array([1, 1, 0, 1], bool), min_size=2)
    array([ True,  True, False, False])
    """
    arr = np.asarray(labels)
    if min_size < 0:
        raise InputError(f"min_size must be non-negative, got {min_size}")
    if arr.dtype == bool:
        comp, _ = ndi.label(arr, _structure(arr.ndim, connectivity))
        return remove_small_objects(comp, min_size) > 0
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"labels must be an integer or boolean array, got dtype {arr.dtype}")
    out = arr.copy()
    if _small_ids(arr):  # counting is faster than np.unique's sort
        small = np.bincount(arr.ravel()) < min_size
        small[0] = False
        out[small[arr]] = 0
        return out
    values, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    small = (counts < min_size) & (values != 0)
    out[small[inverse.reshape(arr.shape)]] = 0
    return out


def _small_ids(labels: np.ndarray) -> bool:
    """Whether ``labels`` (integers) are non-negative and at most a few times their number, so
    that tables indexed by label are cheap."""
    return bool(labels.size) and labels.min() >= 0 and labels.max() <= 4 * labels.size + 16


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..K keeping their order; 0 stays 0.

    Parameters
    ----------
    labels : ndarray of int
        Label image with non-negative values.

    Returns
    -------
    ndarray of int32 (int64 if K does not fit)
        The smallest original nonzero label becomes 1, the next 2, and so on.

    Examples
    --------
    >>> relabel_sequential(np.array([0, 7, 7, 3, 0, 12]))
    array([0, 2, 2, 1, 0, 3], dtype=int32)
    """
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"labels must be an integer array, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError("labels must be non-negative")
    if arr.dtype != bool and _small_ids(arr):  # a table by label instead of np.unique's sort
        present = np.zeros(int(arr.max()) + 1, bool)
        present[arr.ravel()] = True
        # The rank of each present value, from 0 when 0 is present, else from 1.
        new = np.cumsum(present) - (1 if present[0] else 0)
        return new.astype(_label_dtype(int(present.sum())))[arr]
    values, inverse = np.unique(arr, return_inverse=True)
    # Map the sorted unique values to 0..K, with 0 reserved for background.
    new = np.arange(values.size) + (0 if values.size and values[0] == 0 else 1)
    return new.astype(_label_dtype(values.size))[inverse.reshape(arr.shape)]


def probabilities_to_labels(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class map from class probabilities ``(C, (Z,) Y, X)``: the most probable class per pixel.

    With a single channel (``C == 1``, a sigmoid output) the map is ``probs[0] > threshold``
    as classes 0/1. With several channels, ties go to the lowest class index. This is
    :func:`useg.labels.most_likely_class` with a threshold for single channels.

    Parameters
    ----------
    probs : ndarray, shape (C, ...)
        Class probabilities or scores (channels first), any spatial dimensionality.
    threshold : float
        Only used for a single channel.

    Returns
    -------
    ndarray of :func:`useg.labels.class_dtype` (uint8 up to 256 classes)
        Class index per pixel, shape ``probs.shape[1:]``.

    Examples
    --------
    >>> probabilities_to_labels(np.array([[0.7, 0.2, 0.1], [0.3, 0.8, 0.1], [0.0, 0.0, 0.8]]))
    array([0, 1, 2], dtype=uint8)
    """
    probs = np.asarray(probs)
    return most_likely_class(probs, threshold=threshold if probs.shape[:1] == (1,) else None)

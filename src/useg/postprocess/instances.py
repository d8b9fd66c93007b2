"""Objects from class probabilities: one label per object (cells, nuclei, neurons).

:func:`instances_from_probabilities` turns the ``(C, (Z,) Y, X)`` output of a model into a label
image, N-dimensional (2D and 3D share the code). The target names how the model's classes were
made from instance labels (the label modes of :mod:`useg.training.samples`):

``"instances"``
    2 classes, background / foreground, with gaps of background between touching objects
    (each object's pixels that touch another: two pixels wide). The foreground is
    ``probs[1] > threshold``; the seeds are the maxima of its distance transform (see
    :class:`InstanceParams` ``seed_distance``), and the objects grow from them over the inverted
    distance transform within the foreground, so that touching round objects whose gap the
    network missed are cut at their neck.
``"three_class"``
    3 classes, background / interior / boundary (each object's outer pixels). The seeds are the
    connected pieces of the interior (``probs[1] > threshold``); they grow over the boundary
    probability within the foreground (``probs[1] + probs[2] > threshold``), so the boundary
    pixels go to the interior they lie against. A piece of foreground without any interior
    (an object thinner than two boundaries) is one object.
``"boundary"``
    2 classes, interior / boundary between bodies that fill the image (EM membranes). The seeds
    are the maxima of the distance transform of the interior (``probs[0] > threshold``). They
    grow through the whole image: first over the interior, by its inverted distance transform
    as for ``"instances"`` (bodies joined through a gap in a membrane are cut at the gap), then
    over the boundary pixels by their probability, so neighbouring bodies meet on the ridges of
    the boundary map. Every pixel belongs to an object (none if no pixel is interior).

With :attr:`InstanceParams.seed_threshold`, ``"instances"`` and ``"boundary"`` take their
seeds from confidence instead: the connected pieces of the interior above that probability
(within the foreground), grown over the boundary probability (within the foreground for
``"instances"``, through the whole image for ``"boundary"``); for ``"three_class"`` it is the
threshold of the interior seeds.
Flooding is :func:`skimage.segmentation.watershed`: a pixel joins the region that reaches it
first, in the order of the landscape's values and, among equal values, of arrival (breadth
first). The seeds are imposed minima, all flooding from the start, taken in raster order, so
that nothing is left to the internal order of the priority queue: the objects within one
connected piece of the flooded region depend on that piece only. This is what makes the
block-wise version (:mod:`useg.postprocess.instance_blocks`) equal to one pass over the whole
image.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import local_maxima
from skimage.segmentation import watershed

from useg.errors import ConfigError, InputError, ModelFileError, UsegError, check_choice
from useg.postprocess.agglomerate import merge_weak_boundaries
from useg.postprocess.segments import relabel_sequential, remove_small_objects

__all__ = ["TARGETS", "InstanceParams", "instance_dtype", "instances_from_probabilities"]

#: The instance targets and the number of classes of each.
TARGETS = {"instances": 2, "three_class": 3, "boundary": 2}


@dataclass(frozen=True)
class InstanceParams:
    """Settings of :func:`instances_from_probabilities`.

    Attributes
    ----------
    threshold : float
        Probability above which a pixel is confident foreground (``"instances"``), interior
        (``"three_class"``: and foreground where interior + boundary exceed it) or interior
        between boundaries (``"boundary"``). In (0, 1).
    seed_distance : float
        The ``h`` of the seeds, in pixels of the finest axis (the distance transform counts each
        axis by its relative ``spacing``). The distance transform of the confident interior (each
        pixel's distance to the nearest pixel outside it) has one maximum near the centre of each
        round object. A maximum seeds an object of its own only if it rises *more than*
        ``seed_distance`` above the highest pass (saddle) that connects it to a higher maximum
        (its dynamic, in mathematical morphology; of two equally high maxima the first in
        raster order counts as the higher; the seed is the maximum's plateau). In other
        words, two touching objects are split where the neck between them is more than
        ``seed_distance`` narrower, as a radius, than the smaller object's largest inscribed
        ball. The highest maximum of every connected piece of the interior always seeds an
        object, so no piece is lost however thin. 0 makes every regional maximum a seed.
        Not used by ``"three_class"``, whose seeds are the pieces of the interior. >= 0.
    min_size : int
        Objects of fewer pixels (voxels) than this are removed after the flooding. Their pixels
        are flooded again from the objects that remain, so a fragment that touches another
        object (within the foreground) is merged into it, split between several along the
        landscape's ridges; a fragment touching no other object is dropped (becomes 0). 0 or 1
        keep every object. >= 0.
    connectivity : int
        Neighbourhood of the seeds' pieces, of the maxima and of the flooding: 1 = face
        neighbours (4 in 2D, 6 in 3D) up to the number of spatial axes (8 in 2D, 26 in 3D).
        >= 1, and at most the number of spatial axes of the probabilities.
    seed_threshold : float or None
        Seeds from confidence instead of shape: the connected pieces of the interior whose
        probability exceeds ``seed_threshold`` (within the foreground), grown over the boundary
        probability instead of the distance transform, so that neighbours meet where the
        network sees their boundary; ``seed_distance`` is then not used. For cells that fill
        the image and are not round (neurons in EM) a maximum of the distance transform is no
        sign of one cell, and the high-confidence interiors are the better seeds. For
        ``"three_class"`` it replaces ``threshold`` for the interior seeds only. None: the
        seeds described above. In (0, 1).
    merge_below : float or None
        After the flooding, join touching objects while the mean probability of a boundary
        over the faces they share is below this (weakest pair first, faces of joined objects
        pooled; :func:`useg.postprocess.agglomerate.merge_weak_boundaries`). The boundary is
        the boundary class of ``"boundary"`` and ``"three_class"``, the background of
        ``"instances"``. With it, seeds can be many (a small ``seed_distance``) and the bodies
        they split are joined again where the network sees no boundary between the pieces.
        For ``"instances"`` the objects lie within ``background < 1 - threshold``, so a
        ``merge_below`` of ``1 - threshold`` or more joins every pair that touches.
        None: nothing is joined. In (0, 1).

    Examples
    --------
    >>> params = InstanceParams.from_dict({"min_size": 0, "seed_threshold": 0.9}, source="flags")
    >>> params.min_size, params.seed_threshold, params.seed_distance
    (0, 0.9, 2.0)
    """

    threshold: float = 0.5
    seed_distance: float = 2.0
    min_size: int = 16
    connectivity: int = 1
    seed_threshold: float | None = None
    merge_below: float | None = None

    def __post_init__(self) -> None:
        _check_params(self.to_dict(), "InstanceParams", ConfigError)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (the inverse of :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], source: str, *, error: type[UsegError] = ModelFileError,
    ) -> InstanceParams:
        """Settings read from a model header or from command-line options, checked.

        Missing settings take their defaults. A value of the wrong type, out of range, or a
        setting of another name raises ``error`` (:class:`~useg.errors.ModelFileError` by
        default; pass :class:`~useg.errors.InputError` for settings a user typed) with one line
        that starts with ``source``.

        Examples
        --------
        >>> InstanceParams.from_dict({"threshold": 1.5}, source="m.safetensors")
        Traceback (most recent call last):
        ...
        useg.errors.ModelFileError: m.safetensors: threshold must be a number in (0, 1), got 1.5
        """
        if not isinstance(d, Mapping):
            raise error(f"{source}: instance settings must be an object of named values, "
                        f"got {_show(d)}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in d if k not in names]
        if unknown:
            raise error(f"{source}: unknown instance setting(s) {', '.join(unknown)}; "
                        f"known: {', '.join(names)}")
        values = {**cls().to_dict(), **d}
        _check_params(values, source, error)
        seed_threshold, merge_below = values["seed_threshold"], values["merge_below"]
        return cls(threshold=float(values["threshold"]),
                   seed_distance=float(values["seed_distance"]),
                   min_size=int(values["min_size"]), connectivity=int(values["connectivity"]),
                   seed_threshold=None if seed_threshold is None else float(seed_threshold),
                   merge_below=None if merge_below is None else float(merge_below))


def _show(value: Any) -> str:
    """A value for a one-line message: its repr on one line, shortened."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _check_params(values: Mapping[str, Any], source: str, error: type[UsegError]) -> None:
    """Raise ``error`` naming ``source`` for the first setting of the wrong type or range."""

    def real(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    rules = (
        ("threshold", real, lambda v: 0 < v < 1, "a number in (0, 1)"),
        ("seed_distance", real, lambda v: v >= 0, "a number >= 0 (pixels)"),
        ("min_size", integer, lambda v: v >= 0, "an integer >= 0 (pixels)"),
        ("connectivity", integer, lambda v: v >= 1, "an integer >= 1"),
        ("seed_threshold", lambda v: v is None or real(v), lambda v: v is None or 0 < v < 1,
         "a number in (0, 1) or null"),
        ("merge_below", lambda v: v is None or real(v), lambda v: v is None or 0 < v < 1,
         "a number in (0, 1) or null"),
    )
    for name, kind, in_range, wanted in rules:
        value = values[name]
        if not (kind(value) and in_range(value)):
            raise error(f"{source}: {name} must be {wanted}, got {_show(value)}")


def instance_dtype(n_objects: int) -> np.dtype:
    """The pixel type of a label image of ``n_objects`` objects: uint16 when the ids fit, else
    uint32.

    Examples
    --------
    >>> instance_dtype(65535), instance_dtype(65536)
    (dtype('uint16'), dtype('uint32'))
    """
    n = int(n_objects)
    if n < 0:
        raise InputError(f"the number of objects must be >= 0, got {n}")
    for dtype in (np.uint16, np.uint32):
        if n <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise InputError(f"{n} objects do not fit the uint32 ids of a label image")


def instances_from_probabilities(
    probs: np.ndarray,
    target: str,
    params: InstanceParams,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """One label per object from class probabilities (see the module's description of targets).

    Parameters
    ----------
    probs : ndarray, shape (C, (Z,) Y, X)
        Class probabilities, channels first, any number of spatial axes; ``C`` is 2 for
        ``"instances"`` and ``"boundary"``, 3 for ``"three_class"``.
    target : {"instances", "three_class", "boundary"}
        How the model's classes were made (:data:`TARGETS`).
    params : InstanceParams
        Threshold, seed distance, smallest object and connectivity.
    spacing : sequence of float, optional
        Voxel size per spatial axis, in any unit: only the ratios count (the distance transform
        and ``seed_distance`` are in pixels of the finest axis). Default: isotropic.

    Returns
    -------
    ndarray of :func:`instance_dtype` (uint16, or uint32 beyond 65535 objects)
        Objects 1..K, consecutive, in the order of their seeds; 0 = background.

    Examples
    --------
    >>> fg = np.zeros((11, 22))
    >>> fg[1:10, 1:10] = fg[4:7, 10:12] = fg[1:10, 12:21] = 1  # two squares joined by a neck
    >>> labels = instances_from_probabilities(np.stack([1 - fg, fg]), "instances",
    ...                                       InstanceParams(min_size=0))
    >>> int(labels.max()), labels.dtype, bool(labels[5, 5] != labels[5, 16])
    (2, dtype('uint16'), True)
    """
    p = _checked_probabilities(probs, target)
    ndim = p.ndim - 1
    if not isinstance(params, InstanceParams):
        raise ConfigError(f"params must be InstanceParams, got {type(params).__name__}")
    if params.connectivity > ndim:
        raise InputError(f"connectivity {params.connectivity} exceeds the {ndim} spatial axes "
                         "of the probabilities")
    sampling = _relative_spacing(spacing, ndim)
    footprint = ndi.generate_binary_structure(ndim, params.connectivity)
    t, s = params.threshold, params.seed_threshold
    if target == "three_class":
        mask = p[1] + p[2] > t
        interior = p[1] > (t if s is None else s)
        seeds = _seed_every_piece(ndi.label(interior & mask, footprint)[0], mask, footprint)
        landscape = p[2]
    elif s is not None:  # confident interiors as seeds, grown over the boundary probability
        inside, outside = (p[1], p[0]) if target == "instances" else (p[0], p[1])
        mask = inside > t if target == "instances" else None
        confident = inside > s if mask is None else (inside > s) & mask
        seeds = ndi.label(confident, footprint)[0]
        if mask is not None:
            seeds = _seed_every_piece(seeds, mask, footprint)
        landscape = outside
    elif target == "instances":
        mask = p[1] > t
        seeds, distance = _distance_seeds(mask, params.seed_distance, footprint, sampling)
        landscape = -distance
    else:
        mask = None
        interior = p[0] > t
        seeds, distance = _distance_seeds(interior, params.seed_distance, footprint, sampling)
        # The interior first, cut at its necks; then the boundary pixels, met on its ridges.
        landscape = np.where(interior, -distance, p[1])
    labels = _grow(landscape, seeds, mask, footprint, params.min_size)
    if params.merge_below is not None:
        between = p[{"boundary": 1, "three_class": 2, "instances": 0}[target]]
        labels = merge_weak_boundaries(labels, between, params.merge_below)
    return _consecutive(labels)


def _checked_probabilities(probs: Any, target: str) -> np.ndarray:
    check_choice("target", target, tuple(TARGETS))
    p = np.asarray(probs)
    if p.ndim < 2:
        raise InputError(f"probabilities must be (C, [Z,] Y, X), got shape {p.shape}")
    if p.shape[0] != TARGETS[target]:
        raise InputError(f"the {target} target needs {TARGETS[target]} class probabilities, got "
                         f"{p.shape[0]} channel(s)")
    if p.size == 0:
        raise InputError(f"probabilities are empty (shape {p.shape})")
    if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
        raise InputError(f"probabilities must be numbers, got dtype {p.dtype}")
    p = p.astype(np.float32, copy=False)
    if not np.isfinite(p).all():
        raise InputError("probabilities contain NaN or infinite values")
    return p


def _relative_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """``spacing`` divided by its finest value (None when isotropic or not given)."""
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"spacing must be {ndim} positive numbers (one per spatial axis), got "
                         f"{_show(spacing)}")
    finest = min(values)
    relative = tuple(s / finest for s in values)
    return None if all(s == 1.0 for s in relative) else relative


def _distance_seeds(
    interior: np.ndarray, h: float, footprint: np.ndarray, sampling: tuple[float, ...] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeds (labelled) at the maxima of the distance transform of ``interior`` that rise more
    than ``h`` above their highest pass to a higher maximum, and the distance transform."""
    if not interior.any():
        return np.zeros(interior.shape, np.int32), np.zeros(interior.shape)
    if interior.all():  # no pixel outside: one flat piece
        distance = np.ones(interior.shape)
    else:
        distance = ndi.distance_transform_edt(interior, sampling=sampling)
    # Distances are 0 outside the interior and > 0 inside: no maximum spans two pieces.
    peaks = local_maxima(distance, footprint=footprint, allow_borders=True) & interior
    maxima, k = ndi.label(peaks, footprint)
    if h > 0 and k > 1:
        maxima = _rising_more_than(maxima, k, distance, interior, h, footprint)
    return maxima, distance


def _rising_more_than(
    maxima: np.ndarray, k: int, distance: np.ndarray, interior: np.ndarray, h: float,
    footprint: np.ndarray,
) -> np.ndarray:
    """The maxima (plateaus labelled 1..k) whose dynamic exceeds ``h``; the others are 0.

    The dynamic of a maximum is its height above the highest pass by which one can reach a
    higher maximum (infinite for the highest of a piece). It is found on the graph of the
    maxima's catchment basins, whose edges carry the highest pass between two adjacent basins:
    adding the edges from the highest pass down (Kruskal), a pass that joins two trees ends the
    rise of the lower tree's top."""
    at = np.flatnonzero(maxima)
    peak = np.zeros(k + 1)
    peak[maxima.ravel()[at]] = distance.ravel()[at]  # a plateau has one value
    basins = watershed(_seeds_first(-distance, maxima), maxima, connectivity=footprint,
                       mask=interior)
    low, high, height = _passes(basins, distance, footprint, k)
    parent = list(range(k + 1))
    top = list(range(k + 1))  # the highest maximum of each tree, kept at its root
    dynamic = [math.inf] * (k + 1)
    peaks = peak.tolist()

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    # Highest passes first; equal ones in the order of the maxima (raster order).
    order = np.lexsort((high, low, -height))
    for a, b, s in zip(low[order].tolist(), high[order].tolist(), height[order].tolist(),
                       strict=True):
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        ta, tb = top[ra], top[rb]
        # Of two equally high tops, the first in raster order (smaller label) is the higher.
        if (peaks[ta], -ta) < (peaks[tb], -tb):
            ra, rb, ta, tb = rb, ra, tb, ta
        dynamic[tb] = peaks[tb] - s
        parent[rb] = ra
    keep = np.array(dynamic) > h
    keep[0] = False
    return np.where(keep[maxima], maxima, 0)


def _passes(
    basins: np.ndarray, distance: np.ndarray, footprint: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adjacent basin pairs ``low < high`` and the highest pass between each: the largest,
    over neighbouring pixels one in each basin, of the smaller distance of the two."""
    shape = basins.shape
    centre = np.array(footprint.shape) // 2
    lows, highs, heights = [], [], []
    for step in np.argwhere(footprint) - centre:
        if tuple(step) <= (0,) * len(shape):  # each neighbour pair once
            continue
        here = tuple(slice(max(-d, 0), n - max(d, 0)) for d, n in zip(step, shape, strict=True))
        there = tuple(slice(max(d, 0), n - max(-d, 0)) for d, n in zip(step, shape, strict=True))
        a, b = basins[here], basins[there]
        cross = (a != b) & (a > 0) & (b > 0)
        if cross.any():
            a, b = a[cross], b[cross]
            lows.append(np.minimum(a, b))
            highs.append(np.maximum(a, b))
            heights.append(np.minimum(distance[here][cross], distance[there][cross]))
    if not lows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    low = np.concatenate(lows).astype(np.int64)
    high = np.concatenate(highs).astype(np.int64)
    height = np.concatenate(heights)
    key = low * (k + 1) + high
    order = np.lexsort((-height, key))  # per pair, the highest pass first
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    pick = order[first]
    return low[pick], high[pick], height[pick]


def _seed_every_piece(seeds: np.ndarray, mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``seeds`` plus one seed for each connected piece of ``mask`` that holds none."""
    pieces, n = ndi.label(mask, footprint)
    seeded = np.zeros(n + 1, bool)
    seeded[pieces[seeds > 0]] = True
    seeded[0] = True
    bare = ~seeded[pieces]
    if bare.any():
        extra, _ = ndi.label(bare, footprint)
        seeds = np.where(bare, extra + seeds.max(), seeds)
    return seeds


def _seeds_first(landscape: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``landscape`` (float64) with the seed pixels as imposed minima, distinct and increasing in
    raster order, so that the flooding starts from all seeds at once in an order that does not
    depend on the priority queue. (The raster order of the pixels of a box is the same in the
    box and in the whole image, so a block orders its seeds as the whole image does.)"""
    levels = np.array(landscape, dtype=np.float64)
    at = np.flatnonzero(seeds)
    low = float(levels.min()) - 2.0
    levels.ravel()[at] = low + np.arange(at.size, dtype=np.float64) / at.size
    return levels


def _grow(
    landscape: np.ndarray, seeds: np.ndarray, mask: np.ndarray | None, footprint: np.ndarray,
    min_size: int,
) -> np.ndarray:
    """Flood ``landscape`` from ``seeds`` within ``mask``; remove objects below ``min_size`` and
    flood their pixels again from the rest."""
    if not seeds.any():
        return np.zeros(seeds.shape, np.int32)
    levels = _seeds_first(landscape, seeds)
    labels = watershed(levels, seeds.astype(np.int32, copy=False), connectivity=footprint,
                       mask=mask)
    if min_size > 1:
        kept = remove_small_objects(labels, min_size)
        if not kept.any():
            return kept
        if (kept != labels).any():
            labels = watershed(_seeds_first(landscape, kept), kept, connectivity=footprint,
                               mask=mask)
    return labels


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Ids 1..K in the order of the current ids, as :func:`instance_dtype`."""
    labels = relabel_sequential(labels)
    return labels.astype(instance_dtype(int(labels.max()) if labels.size else 0))

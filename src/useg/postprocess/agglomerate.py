"""Merging neighbouring objects whose shared boundary is weak: :func:`merge_weak_boundaries`.

A seeded flooding splits a body wherever it finds two seeds in it; seeds that are too few merge
bodies instead, and no one setting of the seeds avoids both in a volume of neurons, whose
shapes vary from thin processes to large somata. Over-seeding and then merging trades the two
errors differently: the flooding is asked for many small pieces (few merged bodies), and two
touching pieces are joined again when the network does not see a boundary between them. The
evidence is the mean boundary probability over the faces the two pieces share; pieces are
joined weakest face first, and the faces of a joined piece are pooled (their sums and counts
added), so each decision uses every face the current pieces share. This is the mean-affinity
agglomeration of region adjacency graphs used for connectomics (Funke et al., "Large Scale Image
Segmentation with Structured Loss based Deep Learning for Connectome Reconstruction", IEEE
TPAMI 2019), here on the network's boundary map rather than on affinities.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["component_roots", "merge_weak_boundaries"]


def merge_weak_boundaries(labels: np.ndarray, boundary: np.ndarray, below: float) -> np.ndarray:
    """Join touching objects while the mean boundary probability between them is below ``below``.

    Two objects touch where a pixel of one is a face neighbour (along one axis) of a pixel of
    the other; the boundary value of such a face is the mean of ``boundary`` at its two pixels.
    The pair with the lowest mean over all its faces is joined first; the joined object's faces
    with each neighbour are the union of its parts' faces; joining stops when every touching
    pair has a mean of at least ``below``.

    Parameters
    ----------
    labels : ndarray of int, any number of axes
        Objects 1..K; 0 is background and is never joined.
    boundary : ndarray of float, the shape of ``labels``
        Probability of a boundary at each pixel.
    below : float
        Pairs whose mean boundary probability is below this are joined. 0 joins nothing.

    Returns
    -------
    ndarray
        ``labels`` with each joined group carrying its smallest id (others unchanged; ids are
        not made consecutive), in the dtype of ``labels``.

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 2, 3, 3]])
    >>> boundary = np.array([[0.0, 0.1, 0.2, 0.8, 0.9, 0.0]])
    >>> merge_weak_boundaries(labels, boundary, 0.5).tolist()
    [[1, 1, 1, 1, 3, 3]]
    """
    if labels.shape != boundary.shape:
        raise ValueError(f"labels {labels.shape} and boundary {boundary.shape} differ in shape")
    # neighbours[a][b] = [sum, count] of the faces between objects a and b
    neighbours: dict[int, dict[int, list[float]]] = {}
    heap = []
    for a, b, s, n in _face_totals(labels, boundary):
        neighbours.setdefault(a, {})[b] = [s, n]
        neighbours.setdefault(b, {})[a] = [s, n]
        heap.append((s / n, a, b))
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    while heap and heap[0][0] < below:
        mean, a, b = heapq.heappop(heap)
        if a in parent or b in parent:
            continue  # a part was joined into another since this pair was queued
        faces = neighbours[a][b]
        if faces[0] / faces[1] != mean:
            continue  # the pair's faces were pooled since; its current mean is queued too
        keep, gone = (a, b) if len(neighbours[a]) >= len(neighbours[b]) else (b, a)
        parent[gone] = keep
        del neighbours[keep][gone]
        for c, (s, n) in neighbours.pop(gone).items():
            if c == keep:
                continue
            del neighbours[c][gone]
            pooled = neighbours[keep].setdefault(c, [0.0, 0])
            pooled[0] += s
            pooled[1] += n
            neighbours[c][keep] = pooled
            heapq.heappush(heap, (pooled[0] / pooled[1], min(keep, c), max(keep, c)))
    if not parent:
        return labels.copy()
    lookup = component_roots(int(labels.max()) + 1, np.array(list(parent.items()), np.int64))
    return lookup[labels].astype(labels.dtype, copy=False)


def _face_totals(labels: np.ndarray, boundary: np.ndarray) -> list[tuple[int, int, float, int]]:
    """``(a, b, sum of face boundary values, number of faces)`` of every touching pair, a < b."""
    keys, values = [], []
    top = np.int64(int(labels.max()) + 1)
    for axis in range(labels.ndim):
        n = labels.shape[axis]
        if n < 2:
            continue
        first = tuple(slice(0, n - 1) if i == axis else slice(None) for i in range(labels.ndim))
        second = tuple(slice(1, n) if i == axis else slice(None) for i in range(labels.ndim))
        a = labels[first].ravel().astype(np.int64)
        b = labels[second].ravel().astype(np.int64)
        between = (a != b) & (a > 0) & (b > 0)
        if not between.any():
            continue
        lo, hi = np.minimum(a[between], b[between]), np.maximum(a[between], b[between])
        face = (boundary[first].ravel()[between] + boundary[second].ravel()[between]) / 2.0
        keys.append(lo * top + hi)
        values.append(face.astype(np.float64))
    if not keys:
        return []
    unique, inverse, counts = np.unique(np.concatenate(keys), return_inverse=True,
                                        return_counts=True)
    sums = np.bincount(inverse, weights=np.concatenate(values), minlength=unique.size)
    return [(int(k // top), int(k % top), s, n)
            for k, s, n in zip(unique.tolist(), sums.tolist(), counts.tolist(), strict=True)]


def component_roots(n: int, edges: np.ndarray) -> np.ndarray:
    """The smallest node of each node's connected component, for nodes ``0 .. n - 1`` joined by
    ``edges`` (pairs): a union-find done on all pairs at once. Each round hooks the larger root
    of every pair that still joins two trees under the smaller one, then compresses the paths;
    roots only decrease, so it ends when every pair lies within one tree."""
    parent = np.arange(n, dtype=np.int64)
    a, b = edges[:, 0], edges[:, 1]
    while True:
        ra, rb = parent[a], parent[b]
        split = ra != rb
        if not split.any():
            return parent
        low, high = np.minimum(ra[split], rb[split]), np.maximum(ra[split], rb[split])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand

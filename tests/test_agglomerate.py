"""Merging objects across weak boundaries (useg.postprocess.agglomerate)."""

from __future__ import annotations

import numpy as np
import pytest

from useg.postprocess.agglomerate import merge_weak_boundaries


def _slow_merge(labels: np.ndarray, boundary: np.ndarray, below: float) -> np.ndarray:
    """The definition, step by step: recount every pair's faces after each join."""
    labels = labels.copy()
    while True:
        faces: dict[tuple[int, int], list[float]] = {}
        for axis in range(labels.ndim):
            a = np.moveaxis(labels, axis, 0)
            b = np.moveaxis(boundary, axis, 0)
            for i in range(a.shape[0] - 1):
                for u, v, s, t in zip(a[i].ravel(), a[i + 1].ravel(), b[i].ravel(),
                                      b[i + 1].ravel(), strict=True):
                    if u != v and u > 0 and v > 0:
                        faces.setdefault((min(u, v), max(u, v)), []).append((s + t) / 2)
        if not faces:
            return labels
        pair, values = min(faces.items(), key=lambda kv: (np.mean(kv[1]), kv[0]))
        if np.mean(values) >= below:
            return labels
        labels[labels == pair[1]] = pair[0]


@pytest.mark.parametrize("seed", range(6))
def test_joins_are_the_definition_step_by_step(seed):
    rng = np.random.default_rng(seed)
    shape = (6, 7, 5) if seed % 2 else (12, 13)
    # Blocks of random ids (background included) over a smooth-ish boundary map.
    labels = rng.integers(0, 9, size=tuple(-(-n // 2) for n in shape))
    labels = np.kron(labels, np.ones((2,) * len(shape), int))[tuple(slice(n) for n in shape)]
    boundary = rng.random(shape)
    for below in (0.0, 0.3, 0.5, 0.7, 1.01):
        got = merge_weak_boundaries(labels, boundary, below)
        want = _slow_merge(labels, boundary, below)
        # Same partition (ids may differ only by which id a group keeps).
        pairs = np.unique(np.stack([got.ravel(), want.ravel()]), axis=1)
        assert len(set(pairs[0])) == pairs.shape[1] == len(set(pairs[1])), (seed, below)
        assert ((got == 0) == (labels == 0)).all()


def test_faces_of_a_joined_object_are_pooled():
    # Pairs and their means: 1-2 weak, 1-3 0.3, 2-3 0.5. Once 1 and 2 are joined, their
    # faces with 3 are pooled (mean 0.4): joined below 0.5, not below 0.35, although 1-3
    # alone (0.3) would join below 0.35.
    labels = np.array([[1, 2, 3],
                       [1, 1, 3]])
    boundary = np.array([[0.0, 0.0, 1.0],
                         [0.0, 0.3, 0.3]])
    assert (merge_weak_boundaries(labels, boundary, 0.5) == 1).all()
    assert (merge_weak_boundaries(labels, boundary, 0.35) == [[1, 1, 3], [1, 1, 3]]).all()


def test_nothing_joins_below_zero_and_background_never_joins():
    labels = np.array([[1, 0, 2], [1, 0, 2]])
    boundary = np.zeros(labels.shape)
    out = merge_weak_boundaries(labels, boundary, 1.0)
    assert (out == labels).all() and out.dtype == labels.dtype
    assert (merge_weak_boundaries(np.array([[1, 2]]), np.zeros((1, 2)), 0.0) == [[1, 2]]).all()
    with pytest.raises(ValueError, match="differ in shape"):
        merge_weak_boundaries(labels, np.zeros((3, 3)), 0.5)

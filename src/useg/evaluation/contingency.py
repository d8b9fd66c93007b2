"""The input check and the sparse contingency table that the scores are computed from.

Every score takes NumPy arrays of any dimensionality and builds sparse contingency tables with
:func:`numpy.unique`, so the cost is O(N log N) in the number of pixels N and never O(N^2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from useg.errors import InputError

__all__ = ["ContingencyTable", "check_pair", "contingency_table"]


def check_pair(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as arrays, or :class:`~useg.errors.InputError` when their shapes differ
    or they are empty."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")
    if a.size == 0:
        raise InputError(f"{name_a} and {name_b} are empty")
    return a, b


class ContingencyTable(NamedTuple):
    """Sparse contingency table between a reference labelling (rows) and a test one (columns)."""

    counts: np.ndarray  # n_ij of the non-empty cells, float64
    rows: np.ndarray  # row index of each cell (into row_labels)
    cols: np.ndarray  # column index of each cell (into col_labels)
    row_sizes: np.ndarray  # a_i = sum_j n_ij, float64
    col_sizes: np.ndarray  # b_j = sum_i n_ij, float64
    row_labels: np.ndarray
    col_labels: np.ndarray
    n: int


def contingency_table(
    ref: np.ndarray, test: np.ndarray, ignore_labels: Iterable = ()
) -> ContingencyTable:
    """The table of ``ref`` (rows) against ``test`` (columns), without the pixels whose ``ref``
    label is in ``ignore_labels``."""
    ref = ref.reshape(-1)
    test = test.reshape(-1)
    ignore = list(ignore_labels)
    if ignore:
        keep = ~np.isin(ref, ignore)
        ref = ref[keep]
        test = test[keep]
    row_labels, ri = np.unique(ref, return_inverse=True)
    col_labels, ci = np.unique(test, return_inverse=True)
    ri = ri.reshape(-1).astype(np.int64)
    ci = ci.reshape(-1).astype(np.int64)
    n_cols = max(col_labels.size, 1)
    cells, counts = np.unique(ri * n_cols + ci, return_counts=True)
    return ContingencyTable(
        counts=counts.astype(np.float64),
        rows=cells // n_cols,
        cols=cells % n_cols,
        row_sizes=np.bincount(ri, minlength=row_labels.size).astype(np.float64),
        col_sizes=np.bincount(ci, minlength=col_labels.size).astype(np.float64),
        row_labels=row_labels,
        col_labels=col_labels,
        n=int(ref.size),
    )

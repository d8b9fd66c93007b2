"""Pair-counting and information-theoretic scores of two labellings: Rand error, adapted Rand
error (V_rand), variation of information and V_info.

Conventions used throughout
---------------------------
* ``seg`` / ``pred`` is the segmentation under test, ``gt`` the reference (ground truth).
* For the ISBI 2012 style binary maps, *foreground* means **cell interior** (label image value
  255 in the challenge files) and *background* means **membrane** (value 0).
* In label images, each distinct integer value is one segment; for the object-level scores
  (:func:`~useg.evaluation.objects.seg_score`, :func:`~useg.evaluation.objects.object_f1`) the
  value 0 is background and is never an object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from useg.evaluation.contingency import check_pair, contingency_table

__all__ = ["adapted_rand_error", "rand_error", "v_info", "variation_of_information"]


def _ratio(num: float, den: float) -> float:
    """num / den, with the vacuous 0/0 read as perfect agreement (1.0)."""
    if den == 0:
        return 1.0
    return float(num / den)


def _entropy_bits(sizes: np.ndarray, n: int) -> float:
    p = sizes[sizes > 0] / n
    return float(-(p * np.log2(p)).sum())



def rand_error(seg: np.ndarray, gt: np.ndarray) -> float:
    """Classic Rand error, 1 - Rand index, over all unordered pixel pairs.

    With the contingency table ``n_ij`` (pixels with label i in ``gt`` and j in ``seg``), row sums
    ``a_i``, column sums ``b_j`` and ``N`` pixels, the number of pairs on which the two
    labellings disagree (together in one, apart in the other) is
    ``D = (sum_i a_i^2 + sum_j b_j^2) / 2 - sum_ij n_ij^2`` and
    ``rand_error = D / (N (N - 1) / 2)`` (Rand, J. Am. Stat. Assoc. 66:846, 1971).
    Every label value, 0 included, is one segment.

    Parameters
    ----------
    seg, gt : ndarray of int
        Label images of the same shape.

    Returns
    -------
    float
        Value in [0, 1]; 0 for identical partitions (label values may differ). 0 when N < 2.

    Examples
    --------
    >>> rand_error(np.array([1, 1, 2, 2]), np.array([5, 5, 7, 7]))
    0.0
    >>> round(rand_error(np.array([1, 1, 1, 1]), np.array([1, 1, 2, 2])), 4)
    0.6667
    """
    seg, gt = check_pair(seg, gt, "seg", "gt")
    t = contingency_table(gt, seg)
    if t.n < 2:
        return 0.0
    disagree = 0.5 * (t.row_sizes @ t.row_sizes + t.col_sizes @ t.col_sizes) - t.counts @ t.counts
    return float(disagree / (0.5 * t.n * (t.n - 1.0)))


def adapted_rand_error(
    seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)
) -> tuple[float, float, float]:
    """Adapted Rand error of the ISBI 2012 / SNEMI3D challenges, as ``skimage.metrics``.

    Pixels whose ``gt`` label is in ``ignore_labels`` are dropped (the *foreground restriction*:
    with ISBI label images, label 0 = membrane). On the remaining ``n`` pixels, with contingency
    table ``n_ij`` (i: ``gt`` label, j: ``seg`` label), ``a_i = sum_j n_ij``, ``b_j = sum_i n_ij``,
    counting ordered pairs of distinct pixels::

        P  = sum_ij n_ij (n_ij - 1)       pairs together in both
        A  = sum_i  a_i  (a_i  - 1)       pairs together in gt
        B  = sum_j  b_j  (b_j  - 1)       pairs together in seg
        precision = P / A,   recall = P / B,   are = 1 - P / ((A + B) / 2)

    so that ``V_rand = 1 - are`` is the F-score of the two (Arganda-Carreras et al., "Crowdsourcing
    the creation of image segmentation algorithms for connectomics", Front. Neuroanat. 9:142, 2015).
    The numbers equal ``skimage.metrics.adapted_rand_error(image_true=gt, image_test=seg,
    ignore_labels=ignore_labels)`` (skimage >= 0.19), including its naming: skimage's
    ``precision`` divides by the pairs of ``gt`` (it is the Rand *split* score of Arganda-Carreras
    et al.) and its ``recall`` by the pairs of ``seg`` (the *merge* score); see
    scikit-image issue #6485. Unlike skimage, a 0/0 ratio (no pairs at all) is read as 1.0
    instead of giving NaN. The challenge's Fiji code normalises by ``n^2`` (self-pairs included)
    rather than ``n (n - 1)``, a difference of order 1/segment size; label 0 of ``seg`` is an
    ordinary segment here (see :func:`~useg.evaluation.isbi.isbi_scores` for the
    unassigned-pixel conventions).

    Parameters
    ----------
    seg, gt : ndarray of int
        Label images of the same shape.
    ignore_labels : sequence of int
        ``gt`` labels whose pixels are not scored.

    Returns
    -------
    are, precision, recall : float

    Examples
    --------
    >>> gt = np.array([[1, 1, 2, 2]])
    >>> adapted_rand_error(gt, gt)
    (0.0, 1.0, 1.0)
    >>> are, prec, rec = adapted_rand_error(np.array([[1, 1, 1, 1]]), gt)  # merged
    >>> round(are, 4), prec, round(rec, 4)
    (0.5, 1.0, 0.3333)
    """
    seg, gt = check_pair(seg, gt, "seg", "gt")
    t = contingency_table(gt, seg, ignore_labels)
    n = float(t.n)
    p = t.counts @ t.counts - n
    a = t.row_sizes @ t.row_sizes - n
    b = t.col_sizes @ t.col_sizes - n
    precision = _ratio(p, a)
    recall = _ratio(p, b)
    fscore = _ratio(p, 0.5 * a + 0.5 * b)
    return 1.0 - fscore, precision, recall


def variation_of_information(
    seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = ()
) -> tuple[float, float]:
    """Split and merge parts of the variation of information, in bits, as ``skimage.metrics``.

    With ``p_ij = n_ij / n`` the joint distribution of (``gt`` label i, ``seg`` label j) over the
    pixels whose ``gt`` label is not in ``ignore_labels``::

        split = H(seg | gt) = -sum_ij p_ij log2(p_ij / p_i.)   (over-segmentation)
        merge = H(gt | seg) = -sum_ij p_ij log2(p_ij / p_.j)   (under-segmentation)

    and ``VI = split + merge`` (Meila, J. Multivar. Anal. 98:873, 2007). The pair equals
    ``skimage.metrics.variation_of_information(gt, seg, ignore_labels=ignore_labels)``.
    See :func:`v_info` for the normalised information score of the ISBI challenge.

    Parameters
    ----------
    seg, gt : ndarray of int
        Label images of the same shape.
    ignore_labels : sequence of int
        ``gt`` labels whose pixels are not scored.

    Returns
    -------
    split, merge : float
        Both 0 for identical partitions; (0, 0) when every pixel is ignored.

    Examples
    --------
    >>> gt = np.array([1, 1, 2, 2])
    >>> variation_of_information(np.array([1, 2, 3, 4]), gt)  # every gt object cut in two
    (1.0, 0.0)
    >>> variation_of_information(np.array([1, 1, 1, 1]), gt)  # both objects merged
    (0.0, 1.0)
    """
    seg, gt = check_pair(seg, gt, "seg", "gt")
    t = contingency_table(gt, seg, ignore_labels)
    if t.n == 0:
        return 0.0, 0.0
    h_joint = _entropy_bits(t.counts, t.n)
    split = h_joint - _entropy_bits(t.row_sizes, t.n)
    merge = h_joint - _entropy_bits(t.col_sizes, t.n)
    # Rounding can leave -1e-16 where the true value is 0.
    return max(split, 0.0), max(merge, 0.0)


def v_info(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> float:
    """Information-theoretic score ``V_info`` of the ISBI 2012 challenge (higher is better).

    On the pixels whose ``gt`` label is not in ``ignore_labels`` (foreground restriction), with
    entropies ``H(S)`` of the segmentation, ``H(T)`` of the ground truth and mutual information
    ``I(S;T) = H(S) + H(T) - H(S,T)``::

        V_info = I(S;T) / ((H(S) + H(T)) / 2)

    i.e. the weighted harmonic mean (alpha = 0.5) of the split score ``I/H(S)`` and the merge
    score ``I/H(T)`` of Arganda-Carreras et al. (Front. Neuroanat. 9:142, 2015, "information
    theoretic scoring"); it is the arithmetic-mean normalised mutual information and does not
    depend on the base of the logarithm. When both entropies are 0 (one segment each) the
    partitions agree and the score is 1.0 (the challenge's Fiji code returns 0 there); when only
    one is 0 the score is 0.

    Parameters
    ----------
    seg, gt : ndarray of int
        Label images of the same shape.
    ignore_labels : sequence of int
        ``gt`` labels whose pixels are not scored (0 = membrane in ISBI label images).

    Returns
    -------
    float
        Value in [0, 1]; 1 for identical partitions.

    Examples
    --------
    >>> gt = np.array([0, 1, 1, 2, 2])
    >>> v_info(np.array([9, 3, 3, 4, 4]), gt)
    1.0
    >>> v_info(np.array([0, 3, 3, 3, 3]), gt)
    0.0
    """
    seg, gt = check_pair(seg, gt, "seg", "gt")
    t = contingency_table(gt, seg, ignore_labels)
    if t.n == 0:
        return 1.0
    h_s = _entropy_bits(t.col_sizes, t.n)
    h_t = _entropy_bits(t.row_sizes, t.n)
    if h_s + h_t == 0:
        return 1.0
    mutual = h_s + h_t - _entropy_bits(t.counts, t.n)
    return float(min(max(mutual / (0.5 * (h_s + h_t)), 0.0), 1.0))

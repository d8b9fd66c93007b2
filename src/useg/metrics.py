"""Segmentation scores: pixel, pair-counting, information-theoretic, topological and object-level.

Every function takes NumPy arrays of any dimensionality (the warping error works on 2D slices) and
builds sparse contingency tables with :func:`numpy.unique`, so the cost is O(N log N) in the
number of pixels N and never O(N^2).

Conventions used throughout
---------------------------
* ``seg`` / ``pred`` is the segmentation under test, ``gt`` the reference (ground truth).
* For the ISBI 2012 style binary maps, *foreground* means **cell interior** (label image value
  255 in the challenge files) and *background* means **membrane** (value 0).
* In label images, each distinct integer value is one segment; for the object-level scores
  (:func:`seg_score`, :func:`object_f1`) the value 0 is background and is never an object.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from useg.errors import InputError
from useg.postprocess import fill_unassigned

__all__ = [
    "pixel_error",
    "rand_error",
    "adapted_rand_error",
    "variation_of_information",
    "v_info",
    "simple_point_warp",
    "warping_error",
    "WarpingResult",
    "iou",
    "dice",
    "seg_score",
    "object_f1",
    "isbi_scores",
    "isbi_best",
    "DEFAULT_ISBI_THRESHOLDS",
    "DEFAULT_IOU_THRESHOLDS",
]

#: Thresholds swept by :func:`isbi_scores` unless told otherwise.
DEFAULT_ISBI_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: IoU thresholds of :func:`object_f1` unless told otherwise.
DEFAULT_IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------------------------
# Input checks and the contingency table
# --------------------------------------------------------------------------------------------


def _pair(a, b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")
    if a.size == 0:
        raise InputError(f"{name_a} and {name_b} are empty")
    return a, b


class _Table(NamedTuple):
    """Sparse contingency table between a reference labelling (rows) and a test one (columns)."""

    counts: np.ndarray  # n_ij of the non-empty cells, float64
    rows: np.ndarray  # row index of each cell (into row_labels)
    cols: np.ndarray  # column index of each cell (into col_labels)
    row_sizes: np.ndarray  # a_i = sum_j n_ij, float64
    col_sizes: np.ndarray  # b_j = sum_i n_ij, float64
    row_labels: np.ndarray
    col_labels: np.ndarray
    n: int


def _table(ref: np.ndarray, test: np.ndarray, ignore_labels: Iterable = ()) -> _Table:
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
    return _Table(
        counts=counts.astype(np.float64),
        rows=cells // n_cols,
        cols=cells % n_cols,
        row_sizes=np.bincount(ri, minlength=row_labels.size).astype(np.float64),
        col_sizes=np.bincount(ci, minlength=col_labels.size).astype(np.float64),
        row_labels=row_labels,
        col_labels=col_labels,
        n=int(ref.size),
    )


def _ratio(num: float, den: float) -> float:
    """num / den, with the vacuous 0/0 read as perfect agreement (1.0)."""
    if den == 0:
        return 1.0
    return float(num / den)


def _entropy_bits(sizes: np.ndarray, n: int) -> float:
    p = sizes[sizes > 0] / n
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------------------------
# Pixel and pair-counting scores
# --------------------------------------------------------------------------------------------


def pixel_error(pred_binary: np.ndarray, gt_binary: np.ndarray) -> float:
    """Fraction of pixels where two binary maps differ.

    ``pixel_error = #{x : pred(x) != gt(x)} / N``, with every nonzero value read as True.
    This is the ISBI 2012 "pixel error" (Arganda-Carreras et al., Front. Neuroanat. 9:142, 2015)
    for one binarisation threshold.

    Parameters
    ----------
    pred_binary, gt_binary : ndarray
        Binary maps of the same shape (any dimensionality).

    Returns
    -------
    float
        Value in [0, 1]; 0 when the maps are identical.

    Examples
    --------
    >>> pixel_error(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    0.25
    """
    pred, gt = _pair(pred_binary, gt_binary, "pred_binary", "gt_binary")
    return float(np.count_nonzero(pred.astype(bool) != gt.astype(bool)) / pred.size)


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
    seg, gt = _pair(seg, gt, "seg", "gt")
    t = _table(gt, seg)
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
    ordinary segment here (see :func:`isbi_scores` for the unassigned-pixel conventions).

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
    seg, gt = _pair(seg, gt, "seg", "gt")
    t = _table(gt, seg, ignore_labels)
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
    seg, gt = _pair(seg, gt, "seg", "gt")
    t = _table(gt, seg, ignore_labels)
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
    seg, gt = _pair(seg, gt, "seg", "gt")
    t = _table(gt, seg, ignore_labels)
    if t.n == 0:
        return 1.0
    h_s = _entropy_bits(t.col_sizes, t.n)
    h_t = _entropy_bits(t.row_sizes, t.n)
    if h_s + h_t == 0:
        return 1.0
    mutual = h_s + h_t - _entropy_bits(t.counts, t.n)
    return float(min(max(mutual / (0.5 * (h_s + h_t)), 0.0), 1.0))


# --------------------------------------------------------------------------------------------
# Warping error (Jain et al. 2010)
# --------------------------------------------------------------------------------------------

# The 8 neighbours of a pixel as (dy, dx); bit k of a configuration code is neighbour k.
_RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _components(members: list[int], adjacent) -> list[set[int]]:
    seen: set[int] = set()
    comps = []
    for start in members:
        if start in seen:
            continue
        comp = {start}
        stack = [start]
        while stack:
            u = stack.pop()
            for v in members:
                if v not in comp and adjacent(u, v):
                    comp.add(v)
                    stack.append(v)
        seen |= comp
        comps.append(comp)
    return comps


def _simple_point_table() -> bytes:
    """Entry ``code`` is 1 when the centre of that 3x3 configuration is a simple point.

    Digital topology (4, 8): foreground 4-connected, background 8-connected. The centre x is
    simple iff T4(x, X) = 1 and T8(x, complement of X) = 1 (Bertrand & Malandain, Pattern
    Recogn. Lett. 15:169, 1994), where T4 counts the 4-components of foreground neighbours that
    contain a 4-neighbour of x, and T8 the 8-components of background neighbours. The answer does
    not depend on the value of x itself, so one table serves both flip directions.
    """

    def adj4(u: int, v: int) -> bool:
        (y0, x0), (y1, x1) = _RING[u], _RING[v]
        return abs(y0 - y1) + abs(x0 - x1) == 1

    def adj8(u: int, v: int) -> bool:
        (y0, x0), (y1, x1) = _RING[u], _RING[v]
        return max(abs(y0 - y1), abs(x0 - x1)) == 1

    edge = {k for k, (dy, dx) in enumerate(_RING) if abs(dy) + abs(dx) == 1}
    table = bytearray(256)
    for code in range(256):
        fg = [k for k in range(8) if code >> k & 1]
        bg = [k for k in range(8) if not code >> k & 1]
        t4 = sum(1 for c in _components(fg, adj4) if c & edge)
        t8 = len(_components(bg, adj8))
        table[code] = t4 == 1 and t8 == 1
    return bytes(table)


_SIMPLE = _simple_point_table()


def _ring_code(patch: np.ndarray) -> int:
    """Configuration code of the 8 neighbours of the centre of a 3x3 binary patch (tests use it)."""
    return sum(1 << k for k, (dy, dx) in enumerate(_RING) if patch[1 + dy, 1 + dx])


def _warp_slice(gt_fg: np.ndarray, pred_fg: np.ndarray, priority: np.ndarray) -> np.ndarray:
    h, w = gt_fg.shape
    wp = w + 2
    padded = np.zeros((h + 2, w + 2), np.uint8)  # outside the image counts as background
    padded[1:-1, 1:-1] = gt_fg
    img = bytearray(padded.tobytes())
    rr, cc = np.nonzero(gt_fg != pred_fg)
    # Fiji visits pixels by decreasing |pred - threshold| with a stable sort over a
    # column-major scan, so ties are broken by column, then row.
    order = np.lexsort((rr, cc, -priority[rr, cc]))
    pix = ((rr[order] + 1) * wp + (cc[order] + 1)).tolist()
    m = len(pix)
    rank_arr = np.full((h + 2) * wp, -1, np.int64)
    rank_arr[pix] = np.arange(m)
    rank = rank_arr.tolist()
    offsets = (-wp - 1, -wp, -wp + 1, 1, wp + 1, wp, wp - 1, -1)
    o0, o1, o2, o3, o4, o5, o6, o7 = offsets
    simple = _SIMPLE
    done = bytearray(m)
    queued = bytearray(b"\x01") * m
    # One sweep visits the mismatches in priority order and flips each that is simple at that
    # moment; sweeps repeat until one flips nothing. A visit can only succeed if a neighbour
    # flipped since the pixel's last visit, so only such pixels are queued: later-ranked ones in
    # the current sweep, earlier-ranked ones in the next. This gives the same result as full
    # sweeps at a cost proportional to the flips.
    current = list(range(m))
    while current:
        following: list[int] = []
        while current:
            r = heapq.heappop(current)
            queued[r] = 0
            p = pix[r]
            code = (
                img[p + o0]
                | img[p + o1] << 1
                | img[p + o2] << 2
                | img[p + o3] << 3
                | img[p + o4] << 4
                | img[p + o5] << 5
                | img[p + o6] << 6
                | img[p + o7] << 7
            )
            if not simple[code]:
                continue
            img[p] ^= 1
            done[r] = 1
            for off in offsets:
                q = rank[p + off]
                if q < 0 or done[q] or queued[q]:
                    continue
                queued[q] = 1
                if q > r:
                    heapq.heappush(current, q)
                else:
                    following.append(q)
        heapq.heapify(following)
        current = following
    out = np.frombuffer(bytes(img), np.uint8).reshape(h + 2, w + 2)[1:-1, 1:-1]
    return out.astype(bool)


def _warp_inputs(gt_binary, pred, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt, p = _pair(gt_binary, pred, "gt_binary", "pred")
    if gt.ndim not in (2, 3):
        raise InputError(f"the warping error needs 2D images or 3D stacks, got shape {gt.shape}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError("pred contains NaN or infinite values")
    return gt.astype(bool), p > threshold, np.abs(p - threshold)


def simple_point_warp(
    gt_binary: np.ndarray, pred: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Warp a binary ground truth towards a prediction by flipping simple points only.

    The prediction is binarised as ``pred > threshold`` (foreground = cell interior). Pixels
    where the ground truth and the binarised prediction disagree are visited in order of
    decreasing ``|pred - threshold|`` (how strongly the prediction disagrees; ties in column-major
    order), and each is flipped if it is a *simple point* of the current warped image, i.e. if
    flipping it changes no topology (no split, merge, hole or object created or deleted) under
    4-connectivity for the foreground and 8-connectivity for the background, the image being
    surrounded by background. Sweeps are repeated until one flips nothing. This is the greedy
    warping of Jain et al. (CVPR 2010) as implemented by the ISBI 2012 challenge's Fiji code
    (``trainableSegmentation.metrics.WarpingError.simplePointWarp2d``). A 3x3 lookup table of
    the 256 neighbour configurations decides simplicity; 3D stacks are warped slice by slice.

    Parameters
    ----------
    gt_binary : ndarray, shape (Y, X) or (Z, Y, X)
        Reference; nonzero = foreground (interior).
    pred : ndarray, same shape
        Foreground probability (or a binary map).
    threshold : float
        Binarisation threshold for ``pred``.

    Returns
    -------
    ndarray of bool
        The warped ground truth: same topology as ``gt_binary``, differing from it only where
        ``gt_binary`` and ``pred > threshold`` disagree.

    Examples
    --------
    >>> gt = np.ones((5, 6), bool); gt[:, 2] = False  # a membrane line at column 2
    >>> pred = np.ones((5, 6)); pred[:, 3] = 0        # the same line, one pixel to the right
    >>> bool(np.array_equal(simple_point_warp(gt, pred), pred > 0.5))
    True
    """
    gt, pred_fg, priority = _warp_inputs(gt_binary, pred, threshold)
    if gt.ndim == 2:
        return _warp_slice(gt, pred_fg, priority)
    return np.stack([_warp_slice(g, f, q) for g, f, q in zip(gt, pred_fg, priority, strict=True)])


class WarpingResult(NamedTuple):
    """Result of :func:`warping_error`."""

    error: float
    """Fraction of pixels where the warped ground truth and the binarised prediction differ."""
    splits: int
    """Extra pieces the prediction cuts warped ground-truth objects into."""
    mergers: int
    """Warped ground-truth objects the prediction joins to others (count of joins)."""


_CROSS2 = ndi.generate_binary_structure(2, 1)


def _splits_and_mergers(warped: np.ndarray, pred_fg: np.ndarray) -> tuple[int, int]:
    lab_w, n_w = ndi.label(warped, _CROSS2)
    if n_w == 0:
        return 0, 0
    lab_and, _ = ndi.label(warped & pred_fg, _CROSS2)
    sel = lab_and > 0
    pairs = np.unique(np.stack([lab_w[sel], lab_and[sel]]), axis=1)
    pieces = np.bincount(pairs[0], minlength=n_w + 1)[1:]
    splits = int(np.maximum(pieces - 1, 0).sum())
    lab_or, _ = ndi.label(warped | pred_fg, _CROSS2)
    sel = lab_w > 0
    pairs = np.unique(np.stack([lab_or[sel], lab_w[sel]]), axis=1)
    joined = np.bincount(pairs[0])
    mergers = int(np.maximum(joined - 1, 0).sum())
    return splits, mergers


def warping_error(pred: np.ndarray, gt_binary: np.ndarray, threshold: float = 0.5) -> WarpingResult:
    """Warping error of Jain et al. (2010), the topological score of the ISBI 2012 challenge.

    The ground truth is warped towards the binarised prediction with :func:`simple_point_warp`
    (only topology-preserving flips); the error is the fraction of pixels where the warped
    ground truth and ``pred > threshold`` still disagree::

        warping_error = #{x : warped(x) != [pred(x) > threshold]} / N

    Those pixels are exactly the topological mistakes of the prediction (splits, mergers, holes,
    objects added or removed); boundary shifts cost nothing, unlike in :func:`pixel_error`.
    For a 3D stack the error is the mean over 2D slices (as the challenge), which equals the
    pooled fraction since slices have equal size.

    Topological errors are also counted, from 4-connected components: ``splits`` = sum over
    warped objects of (number of pieces of it that remain inside the predicted foreground - 1);
    ``mergers`` = sum over components of (warped foreground OR predicted foreground) of (number
    of warped objects they contain - 1). These counts are this library's definition; the Fiji
    code instead classifies and clusters the remaining mismatch pixels.

    Parameters
    ----------
    pred : ndarray, shape (Y, X) or (Z, Y, X)
        Foreground (cell interior) probability or binary map; only its order of
        ``|pred - threshold|`` matters besides the binarisation.
    gt_binary : ndarray, same shape
        Reference; nonzero = foreground (interior), 0 = membrane.
    threshold : float
        Binarisation threshold for ``pred``.

    Returns
    -------
    WarpingResult
        ``(error, splits, mergers)``.

    Examples
    --------
    >>> gt = np.ones((6, 7), bool)
    >>> pred = gt.astype(float); pred[:, 3] = 0   # a line cuts the single cell in two
    >>> warping_error(pred, gt)                   # one pixel of the line is not simple
    WarpingResult(error=0.023809523809523808, splits=1, mergers=0)
    """
    gt, pred_fg, priority = _warp_inputs(gt_binary, pred, threshold)
    if gt.ndim == 2:
        gt, pred_fg, priority = gt[None], pred_fg[None], priority[None]
    wrong = 0
    splits = mergers = 0
    for g, f, q in zip(gt, pred_fg, priority, strict=True):
        warped = _warp_slice(g, f, q)
        wrong += int(np.count_nonzero(warped != f))
        s, m = _splits_and_mergers(warped, f)
        splits += s
        mergers += m
    return WarpingResult(wrong / gt.size, splits, mergers)


# --------------------------------------------------------------------------------------------
# Per-class overlap
# --------------------------------------------------------------------------------------------


def _class_overlaps(pred, gt, labels) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    pred, gt = _pair(pred, gt, "pred", "gt")
    if pred.dtype == bool:
        pred = pred.astype(np.uint8)
    if gt.dtype == bool:
        gt = gt.astype(np.uint8)
    t = _table(gt, pred)
    if labels is None:
        labels = np.union1d(t.row_labels, t.col_labels).tolist()
    else:
        labels = [lab.item() if isinstance(lab, np.generic) else lab for lab in labels]
    # Per label: pixels in gt, pixels in pred, pixels in both.
    in_gt = dict(zip(t.row_labels.tolist(), t.row_sizes.tolist(), strict=True))
    in_pred = dict(zip(t.col_labels.tolist(), t.col_sizes.tolist(), strict=True))
    diag = t.row_labels[t.rows] == t.col_labels[t.cols]
    in_both = dict(zip(t.row_labels[t.rows[diag]].tolist(), t.counts[diag].tolist(), strict=True))
    a = np.array([in_gt.get(lab, 0.0) for lab in labels])
    b = np.array([in_pred.get(lab, 0.0) for lab in labels])
    both = np.array([in_both.get(lab, 0.0) for lab in labels])
    return labels, a, b, both


def iou(pred: np.ndarray, gt: np.ndarray, labels: Sequence | None = None) -> dict:
    """Intersection over union (Jaccard index) per class.

    ``IoU_c = |{pred = c} & {gt = c}| / |{pred = c} | {gt = c}|``. A class absent from both
    images has an empty union; it scores 1.0 (the two agree that it is absent) so that the
    result never contains NaN. Such classes only appear when ``labels`` names them.

    Parameters
    ----------
    pred, gt : ndarray
        Class maps of the same shape (bool maps are read as classes 0 and 1).
    labels : sequence, optional
        Classes to score; default: every value present in either image.

    Returns
    -------
    dict
        Class value -> IoU in [0, 1].

    Examples
    --------
    >>> iou(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), labels=[0, 1, 2])
    {0: 0.6666666666666666, 1: 0.5, 2: 1.0}
    """
    labels, a, b, both = _class_overlaps(pred, gt, labels)
    union = a + b - both
    values = np.divide(both, union, out=np.ones_like(union), where=union > 0)
    return {lab: float(v) for lab, v in zip(labels, values, strict=True)}


def dice(pred: np.ndarray, gt: np.ndarray, labels: Sequence | None = None) -> dict:
    """Dice coefficient (F1 of pixels) per class.

    ``Dice_c = 2 |{pred = c} & {gt = c}| / (|{pred = c}| + |{gt = c}|)``. A class absent from
    both images scores 1.0, so the result never contains NaN (see :func:`iou`).

    Parameters
    ----------
    pred, gt : ndarray
        Class maps of the same shape (bool maps are read as classes 0 and 1).
    labels : sequence, optional
        Classes to score; default: every value present in either image.

    Returns
    -------
    dict
        Class value -> Dice in [0, 1].

    Examples
    --------
    >>> dice(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    {0: 0.8, 1: 0.6666666666666666}
    """
    labels, a, b, both = _class_overlaps(pred, gt, labels)
    total = a + b
    values = np.divide(2.0 * both, total, out=np.ones_like(total), where=total > 0)
    return {lab: float(v) for lab, v in zip(labels, values, strict=True)}


# --------------------------------------------------------------------------------------------
# Object-level scores
# --------------------------------------------------------------------------------------------


class _Objects(NamedTuple):
    gt_index: np.ndarray  # row index of each overlapping (gt object, pred object) pair
    pred_index: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    gt_sizes: np.ndarray  # size of each gt object (rows with label != 0)
    n_gt: int
    n_pred: int


def _object_overlaps(pred, gt) -> _Objects:
    pred, gt = _pair(pred, gt, "pred_instances", "gt_instances")
    for name, arr in (("pred_instances", pred), ("gt_instances", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise InputError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    t = _table(gt, pred)
    gt_obj = t.row_labels != 0
    pred_obj = t.col_labels != 0
    # Renumber objects 0..n-1 without the background label.
    gt_id = np.cumsum(gt_obj) - 1
    pred_id = np.cumsum(pred_obj) - 1
    sel = gt_obj[t.rows] & pred_obj[t.cols]
    rows, cols, inter = t.rows[sel], t.cols[sel], t.counts[sel]
    union = t.row_sizes[rows] + t.col_sizes[cols] - inter
    return _Objects(
        gt_index=gt_id[rows],
        pred_index=pred_id[cols],
        inter=inter,
        union=union,
        gt_sizes=t.row_sizes[gt_obj],
        n_gt=int(gt_obj.sum()),
        n_pred=int(pred_obj.sum()),
    )


def seg_score(pred_instances: np.ndarray, gt_instances: np.ndarray) -> float:
    """SEG score of the Cell Tracking Challenge.

    Each reference object R is matched to the predicted object S covering more than half of it,
    ``|R & S| > 0.5 |R|`` (at most one S can); its score is the Jaccard index
    ``|R & S| / |R | S|``, or 0 without such an S. SEG is the mean over reference objects
    (Ulman et al., "An objective comparison of cell-tracking algorithms", Nat. Methods 14:1141,
    2017; Maska et al., Bioinformatics 30:1609, 2014). Label 0 is background in both images;
    false positive objects do not lower the score. Without reference objects the score is 1.0
    if the prediction has no objects either, else 0.0 (the challenge leaves this undefined).

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape (each nonzero value is one object).

    Returns
    -------
    float
        Value in [0, 1].

    Examples
    --------
    >>> gt = np.array([[1, 1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[5, 5, 5, 0, 0, 0, 6]])
    >>> seg_score(pred, gt)  # object 1: J = 3/4; object 2: 6 covers only half of it -> 0
    0.375
    """
    o = _object_overlaps(pred_instances, gt_instances)
    if o.n_gt == 0:
        return 1.0 if o.n_pred == 0 else 0.0
    best = np.zeros(o.n_gt)
    hit = 2.0 * o.inter > o.gt_sizes[o.gt_index]
    best[o.gt_index[hit]] = o.inter[hit] / o.union[hit]
    return float(best.mean())


def _match_count(o: _Objects, threshold: float) -> int:
    ok = o.inter / o.union > threshold
    gi, pi, w = o.gt_index[ok], o.pred_index[ok], (o.inter / o.union)[ok]
    if gi.size == 0:
        return 0
    if threshold >= 0.5:
        # IoU > 0.5 with two disjoint partners is impossible, so these pairs form a matching.
        return int(gi.size)
    # Optimal matching, solved per connected component of the candidate graph: maximise the
    # number of matches first, then the summed IoU. (Imported here: scipy.optimize is slow to load.)
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ug, gi = np.unique(gi, return_inverse=True)
    up, pi = np.unique(pi, return_inverse=True)
    n_g, n_p = ug.size, up.size
    graph = coo_matrix((np.ones(gi.size), (gi, n_g + pi)), shape=(n_g + n_p, n_g + n_p))
    _, comp = connected_components(graph, directed=False)
    total = 0
    for c in np.unique(comp[gi]):
        e = comp[gi] == c
        rows, r_inv = np.unique(gi[e], return_inverse=True)
        cols, c_inv = np.unique(pi[e], return_inverse=True)
        if rows.size == 1 or cols.size == 1:
            total += 1
            continue
        weight = np.zeros((rows.size, cols.size))
        weight[r_inv, c_inv] = min(rows.size, cols.size) + 1.0 + w[e]
        r, c_ = linear_sum_assignment(weight, maximize=True)
        total += int(np.count_nonzero(weight[r, c_] > 0))
    return total


def object_f1(
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict:
    """Object detection precision, recall and F1 at several IoU thresholds.

    A predicted object and a reference object match when their IoU is strictly greater than
    the threshold; each object is matched at most once. For thresholds >= 0.5 such pairs are
    unique (two disjoint objects cannot both overlap a third by IoU > 0.5); below 0.5 the largest
    matching (ties broken by summed IoU) is found with ``scipy.optimize.linear_sum_assignment``.
    With ``tp`` matches, ``fp`` unmatched predictions and ``fn`` unmatched references::

        precision = tp / (tp + fp),  recall = tp / (tp + fn),  f1 = 2 tp / (2 tp + fp + fn)

    An empty denominator gives 0.0, except that two images without objects score 1.0 throughout.
    Label 0 is background in both images.

    Parameters
    ----------
    pred_instances, gt_instances : ndarray of int
        Instance label images of the same shape.
    thresholds : sequence of float
        IoU thresholds in [0, 1).

    Returns
    -------
    dict
        Threshold (float) -> ``{"precision", "recall", "f1": float, "tp", "fp", "fn": int}``.

    Examples
    --------
    >>> gt = np.array([[1, 1, 0, 2, 2, 0, 3]])
    >>> pred = np.array([[4, 4, 0, 5, 0, 0, 0]])
    >>> object_f1(pred, gt, thresholds=(0.4,))[0.4]["f1"]  # objects 1 and 2 found, 3 missed
    0.8
    """
    o = _object_overlaps(pred_instances, gt_instances)
    out = {}
    for t in thresholds:
        t = float(t)
        if not 0.0 <= t < 1.0:
            raise InputError(f"IoU thresholds must lie in [0, 1), got {t}")
        tp = _match_count(o, t)
        fp, fn = o.n_pred - tp, o.n_gt - tp
        if tp + fp + fn == 0:
            precision = recall = f1 = 1.0
        else:
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * tp / (2 * tp + fp + fn)
        out[t] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "tp": int(tp),
            "fp": int(fp),
            "fn": int(fn),
        }
    return out


# --------------------------------------------------------------------------------------------
# ISBI 2012 evaluation over thresholds
# --------------------------------------------------------------------------------------------


def _singletons(labels: np.ndarray) -> np.ndarray:
    out = labels.astype(np.int64, copy=True)
    zero = out == 0
    out[zero] = out.max() + 1 + np.arange(np.count_nonzero(zero))
    return out


def _isbi_slice(p: np.ndarray, gt_fg: np.ndarray, gt_regions: np.ndarray, t: float, unassigned):
    pred_fg = p > t
    regions, _ = ndi.label(pred_fg, _CROSS2)
    full = fill_unassigned(regions) if unassigned == "fill" else _singletons(regions)
    are, split_score, merge_score = adapted_rand_error(full, gt_regions, ignore_labels=(0,))
    voi_split, voi_merge = variation_of_information(full, gt_regions, ignore_labels=(0,))
    warp = warping_error(p, gt_fg, threshold=t)
    return {
        "pixel_error": pixel_error(pred_fg, gt_fg),
        "rand_error": rand_error(regions, gt_regions),
        "adapted_rand_error": are,
        "v_rand": 1.0 - are,
        "v_rand_split": split_score,
        "v_rand_merge": merge_score,
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "v_info": v_info(full, gt_regions, ignore_labels=(0,)),
        "warping_error": warp.error,
        "warping_splits": warp.splits,
        "warping_mergers": warp.mergers,
        "iou_membrane": iou(pred_fg, gt_fg, labels=(0,))[0],
    }


# (name, better) of the scalar scores isbi_scores reports per threshold.
_ISBI_KEYS = (
    ("pixel_error", min),
    ("rand_error", min),
    ("adapted_rand_error", min),
    ("v_rand", max),
    ("v_rand_split", max),
    ("v_rand_merge", max),
    ("voi_split", min),
    ("voi_merge", min),
    ("v_info", max),
    ("warping_error", min),
    ("iou_membrane", max),
)


def isbi_best(per_threshold: Sequence[dict]) -> dict:
    """Best value, and the threshold reaching it, of each score in ``per_threshold``.

    Used by :func:`isbi_scores`; exposed to summarise averages over several images.

    Parameters
    ----------
    per_threshold : sequence of dict
        Entries with a ``"threshold"`` key and the score keys of :func:`isbi_scores`.

    Returns
    -------
    dict
        Score name -> ``{"value": float, "threshold": float}`` (the first threshold on ties).

    Examples
    --------
    >>> isbi_best([{"threshold": 0.3, "v_rand": 0.8}, {"threshold": 0.5, "v_rand": 0.9}])
    {'v_rand': {'value': 0.9, 'threshold': 0.5}}
    """
    best = {}
    for key, better in _ISBI_KEYS:
        rows = [r for r in per_threshold if key in r]
        if rows:
            row = better(rows, key=lambda r, k=key: r[k])
            best[key] = {"value": float(row[key]), "threshold": float(row["threshold"])}
    return best


def isbi_scores(
    prob: np.ndarray,
    gt_binary: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_ISBI_THRESHOLDS,
    *,
    membrane: bool = False,
    unassigned: str = "fill",
) -> dict:
    """ISBI 2012 evaluation of a probability map at several thresholds.

    For each threshold ``t`` the prediction ``prob > t`` (cell interior) is compared with the
    binary ground truth (nonzero = interior, 0 = membrane). A stack ``(Z, Y, X)`` is treated as
    independent 2D sections, as in the challenge: every score is computed per slice and averaged
    over slices (the error counts ``warping_splits`` and ``warping_mergers`` are summed). Per slice:

    * ``pixel_error``: :func:`pixel_error` of the binary maps;
    * ``rand_error``: classic :func:`rand_error` between the 4-connected interior components of
      both maps, every membrane pixel belonging to one extra segment (label 0), as the
      challenge's "classic" Rand error;
    * ``adapted_rand_error``, ``v_rand = 1 - adapted_rand_error`` and its split/merge parts
      (``v_rand_split`` = skimage's "precision", ``v_rand_merge`` = its "recall"), ``voi_split``,
      ``voi_merge`` and ``v_info``: foreground-restricted scores between the predicted regions
      and the ground-truth regions (4-connected interior components), on the ground-truth
      interior pixels only (ground-truth membrane ignored). Predicted membrane pixels inside the
      ground-truth interior get a region according to ``unassigned``;
    * ``warping_error`` (with ``warping_splits`` and ``warping_mergers``): :func:`warping_error`;
    * ``iou_membrane``: :func:`iou` of the membrane class.

    ``best`` lists, per score, the best value over the thresholds and where it is reached.
    These follow the definitions of the challenge (Arganda-Carreras et al., Front. Neuroanat.
    9:142, 2015) but are not bit-identical to its Fiji script, which thins boundaries before
    computing V_rand and V_info and normalises pair counts by n^2.

    Parameters
    ----------
    prob : ndarray, shape (Y, X) or (Z, Y, X)
        Probability of cell interior (the challenge's submission format: 0 = membrane), or of
        membrane with ``membrane=True``. Values in [0, 1]; binary maps are fine.
    gt_binary : ndarray, same shape
        Ground truth; nonzero = interior.
    thresholds : sequence of float
        Binarisation thresholds in [0, 1].
    membrane : bool
        ``prob`` is a membrane probability; it is replaced by ``1 - prob``.
    unassigned : {"fill", "singletons"}
        Predicted membrane pixels: ``"fill"`` gives each the label of the nearest predicted
        region (:func:`useg.postprocess.fill_unassigned`, per slice, the default), so that the
        predicted labelling covers every pixel; ``"singletons"`` makes each its own segment, the
        SNEMI3D convention.

    Returns
    -------
    dict
        ``{"thresholds": [...], "per_threshold": [{"threshold": t, score: value, ...}, ...],
        "best": {score: {"value": v, "threshold": t}}}`` of plain floats and ints.

    Examples
    --------
    >>> gt = np.ones((8, 8), np.uint8); gt[:, 4] = 0
    >>> r = isbi_scores(gt.astype(float), gt, thresholds=(0.5,))
    >>> r["best"]["v_rand"], r["best"]["warping_error"]["value"]
    ({'value': 1.0, 'threshold': 0.5}, 0.0)
    """
    p, gt = _pair(prob, gt_binary, "prob", "gt_binary")
    if p.ndim not in (2, 3):
        raise InputError(f"ISBI scores need 2D images or 3D stacks, got shape {p.shape}")
    if unassigned not in ("fill", "singletons"):
        raise InputError(f"unassigned must be 'fill' or 'singletons', got {unassigned!r}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise InputError("prob must hold finite values in [0, 1] (scale 8-bit maps by 1/255)")
    if membrane:
        p = 1.0 - p
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise InputError(f"thresholds must be a non-empty list of values in [0, 1]: {thresholds}")
    if p.ndim == 2:
        p, gt = p[None], gt[None]
    gt_fg = gt.astype(bool)
    gt_regions = [ndi.label(g, _CROSS2)[0] for g in gt_fg]
    rows = []
    for t in thresholds:
        per_slice = [
            _isbi_slice(ps, gs, rs, t, unassigned)
            for ps, gs, rs in zip(p, gt_fg, gt_regions, strict=True)
        ]
        row: dict = {"threshold": t}
        for key, value in per_slice[0].items():
            values = [s[key] for s in per_slice]
            if isinstance(value, int):
                row[key] = int(sum(values))
            else:
                row[key] = float(np.mean(values))
        rows.append(row)
    return {"thresholds": thresholds, "per_threshold": rows, "best": isbi_best(rows)}

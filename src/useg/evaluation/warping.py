"""Warping error (Jain et al. 2010), the topological score of the ISBI 2012 challenge, and the
simple-point warping it is computed from.

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

import heapq
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from useg.errors import InputError
from useg.evaluation.contingency import check_pair

__all__ = ["WarpingResult", "simple_point_warp", "warping_error"]

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


def _simple_pointcontingency_table() -> bytes:
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


_SIMPLE = _simple_pointcontingency_table()


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
    gt, p = check_pair(gt_binary, pred, "gt_binary", "pred")
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
    objects added or removed); boundary shifts cost nothing, unlike in
    :func:`~useg.evaluation.pixel.pixel_error`. For a 3D stack the error is the mean over 2D
    slices (as the challenge), which equals the pooled fraction since slices have equal size.

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

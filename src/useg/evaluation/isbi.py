"""The ISBI 2012 evaluation of a probability map over binarisation thresholds.

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

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from useg.errors import InputError
from useg.evaluation.contingency import check_pair
from useg.evaluation.pixel import iou, pixel_error
from useg.evaluation.rand import adapted_rand_error, rand_error, v_info, variation_of_information
from useg.evaluation.warping import warping_error
from useg.postprocess.instances import InstanceParams, instances_from_probabilities
from useg.postprocess.segments import fill_unassigned

__all__ = ["DEFAULT_ISBI_THRESHOLDS", "check_interior", "isbi_best", "isbi_scores"]

#: Thresholds swept by :func:`isbi_scores` unless told otherwise.
DEFAULT_ISBI_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# Face neighbours in 2D: the connectivity of regions in the challenge's scores.
_CROSS2 = ndi.generate_binary_structure(2, 1)


def _singletons(labels: np.ndarray) -> np.ndarray:
    out = labels.astype(np.int64, copy=True)
    zero = out == 0
    out[zero] = out.max() + 1 + np.arange(np.count_nonzero(zero))
    return out


def _isbi_slice(p: np.ndarray, gt_fg: np.ndarray, gt_regions: np.ndarray, t: float, unassigned,
                instances: InstanceParams | None, warping: bool):
    pred_fg = p > t
    if instances is None:
        regions, _ = ndi.label(pred_fg, _CROSS2)
    else:
        # What useg predict --instances makes of a binary model's map at this threshold.
        params = dataclasses.replace(instances, threshold=t)
        regions = instances_from_probabilities(np.stack([1.0 - p, p]), "instances", params)
    full = fill_unassigned(regions) if unassigned == "fill" else _singletons(regions)
    are, split_score, merge_score = adapted_rand_error(full, gt_regions, ignore_labels=(0,))
    voi_split, voi_merge = variation_of_information(full, gt_regions, ignore_labels=(0,))
    scores = {
        "pixel_error": pixel_error(pred_fg, gt_fg),
        "rand_error": rand_error(regions, gt_regions),
        "adapted_rand_error": are,
        "v_rand": 1.0 - are,
        "v_rand_split": split_score,
        "v_rand_merge": merge_score,
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "v_info": v_info(full, gt_regions, ignore_labels=(0,)),
        "iou_membrane": iou(pred_fg, gt_fg, labels=(0,))[0],
    }
    if warping:
        warp = warping_error(p, gt_fg, threshold=t)
        scores.update(warping_error=warp.error, warping_splits=warp.splits,
                      warping_mergers=warp.mergers)
    return scores


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
    instances: InstanceParams | None = None,
    warping: bool = True,
) -> dict:
    """ISBI 2012 evaluation of a probability map at several thresholds.

    For each threshold ``t`` the prediction ``prob > t`` (cell interior) is compared with the
    binary ground truth (nonzero = interior, 0 = membrane). A stack ``(Z, Y, X)`` is treated as
    independent 2D sections, as in the challenge: every score is computed per slice and averaged
    over slices (the error counts ``warping_splits`` and ``warping_mergers`` are summed). Per slice:

    * ``pixel_error``: :func:`pixel_error` of the binary maps;
    * ``rand_error``: classic :func:`rand_error` between the 4-connected interior components of
      both maps, every membrane pixel belonging to one extra segment (label 0), as the
      challenge's "classic" Rand error (with ``instances``, between the objects of
      :func:`~useg.postprocess.instances.instances_from_probabilities`, see below);
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
        region (:func:`useg.postprocess.segments.fill_unassigned`, per slice, the default), so
        that the predicted labelling covers every pixel; ``"singletons"`` makes each its own
        segment, the SNEMI3D convention.
    instances : InstanceParams, optional
        Score the regions that ``useg predict --instances`` makes of the map instead of its
        connected components: the ``"instances"`` objects of
        :func:`~useg.postprocess.instances.instances_from_probabilities` with these settings
        (seed distance, smallest object, connectivity), the row's threshold replacing theirs.
        Interiors joined through a gap in a membrane narrower than the cells are then cut at
        the gap instead of merged. The pixel and warping errors do not change.
    warping : bool
        Compute the warping error (most of the time of these scores); without it the
        ``warping_*`` keys are absent, e.g. while searching settings on validation images.

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
    p, gt, thresholds = _isbi_inputs(prob, gt_binary, thresholds, membrane, unassigned)
    if instances is not None and not isinstance(instances, InstanceParams):
        raise InputError(f"instances must be InstanceParams, got {type(instances).__name__}")
    gt_fg = gt.astype(bool)
    gt_regions = [ndi.label(g, _CROSS2)[0] for g in gt_fg]
    rows = []
    for t in thresholds:
        per_slice = [
            _isbi_slice(ps, gs, rs, t, unassigned, instances, warping)
            for ps, gs, rs in zip(p, gt_fg, gt_regions, strict=True)
        ]
        rows.append({"threshold": t, **_over_slices(per_slice)})
    return {"thresholds": thresholds, "per_threshold": rows, "best": isbi_best(rows)}


def _isbi_inputs(
    prob: np.ndarray,
    gt_binary: np.ndarray,
    thresholds: Sequence[float],
    membrane: bool,
    unassigned: str,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The arguments of :func:`isbi_scores` checked: interior probability and ground truth as
    stacks ``(Z, Y, X)``, and the thresholds as floats."""
    p, gt = check_pair(prob, gt_binary, "prob", "gt_binary")
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
    check_interior(gt)
    if p.ndim == 2:
        p, gt = p[None], gt[None]
    return p, gt, thresholds


def check_interior(gt_binary: np.ndarray) -> None:
    """Raise :class:`~useg.errors.InputError` for a ground truth (or a slice of a stack) without
    cell interior: the Rand and information scores count pairs of interior pixels, so with none
    they are 0/0, which would read as perfect scores for any prediction (and raise a stack's
    mean)."""
    slices = np.asarray(gt_binary).reshape(-1, *np.shape(gt_binary)[-2:])
    empty = [i for i, plane in enumerate(slices) if not plane.any()]
    if not empty:
        return
    where = "" if np.ndim(gt_binary) == 2 else (
        f" in slice{'s' if len(empty) > 1 else ''} "
        + ", ".join(map(str, empty[:3])) + (", ..." if len(empty) > 3 else ""))
    raise InputError(
        f"ground truth has no cell interior{where} (every pixel 0 = membrane), so its Rand "
        "and information scores are undefined; the ISBI scores need the interior nonzero"
    )


def _over_slices(per_slice: list[dict]) -> dict:
    """Scores of a stack from those of its slices: counts summed, the others averaged."""
    row: dict = {}
    for key, value in per_slice[0].items():
        values = [s[key] for s in per_slice]
        if isinstance(value, int):
            row[key] = int(sum(values))
        else:
            row[key] = float(np.mean(values))
    return row

"""The last stage: scores of label images against ground truth.

Scores are split as scikit-image's ``skimage.metrics``: :mod:`~useg.evaluation.pixel` (pixel
error, IoU, Dice), :mod:`~useg.evaluation.rand` (Rand error, adapted Rand error, variation of
information, V_info), :mod:`~useg.evaluation.warping` (warping error),
:mod:`~useg.evaluation.objects` (SEG, object F1, average precision, AJI, matched IoU) and
:mod:`~useg.evaluation.isbi` (the ISBI 2012 evaluation over thresholds), all on the
contingency tables of :mod:`~useg.evaluation.contingency`; :mod:`~useg.evaluation.files`
scores folders of files (``useg evaluate``). Probabilities become segments before this stage,
in :mod:`useg.postprocess`. The score functions are re-exported here.
"""

from __future__ import annotations

from useg.evaluation.isbi import DEFAULT_ISBI_THRESHOLDS, isbi_best, isbi_scores
from useg.evaluation.objects import (
    DEFAULT_IOU_THRESHOLDS,
    aggregated_jaccard_index,
    average_precision,
    mean_matched_iou,
    object_f1,
    object_scores,
    seg_score,
)
from useg.evaluation.pixel import dice, iou, pixel_error
from useg.evaluation.rand import adapted_rand_error, rand_error, v_info, variation_of_information
from useg.evaluation.warping import WarpingResult, simple_point_warp, warping_error

__all__ = [
    "DEFAULT_IOU_THRESHOLDS",
    "DEFAULT_ISBI_THRESHOLDS",
    "WarpingResult",
    "adapted_rand_error",
    "aggregated_jaccard_index",
    "average_precision",
    "dice",
    "iou",
    "isbi_best",
    "isbi_scores",
    "mean_matched_iou",
    "object_f1",
    "object_scores",
    "pixel_error",
    "rand_error",
    "seg_score",
    "simple_point_warp",
    "v_info",
    "variation_of_information",
    "warping_error",
]

"""The scores the run report gives each gallery image, computed with :mod:`useg.evaluation` on
the pixels its labels annotate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from useg.evaluation import dice, iou, pixel_error
from useg.labels import IGNORE, most_likely_class
from useg.training.validation import foreground_adapted_rand

__all__ = ["image_scores", "score_names"]


def score_names(class_names: Sequence[str]) -> list[str]:
    """The names of :func:`image_scores`, in order, for a model with these classes."""
    names = ["pixel error"]
    for name in class_names[1:]:
        names += [f"IoU {name}", f"Dice {name}"]
    return [*names, "adapted Rand error"]


def image_scores(
    probs: np.ndarray, target: np.ndarray, class_names: Sequence[str]
) -> dict[str, float | None]:
    """Scores of class probabilities ``probs`` ``(C, *spatial)`` against a class target (the
    label file as training reads it, :data:`~useg.labels.IGNORE` where unannotated).

    The segmentation is the most likely class, as ``useg predict`` writes it. Pixel error
    (of foreground against background when there are more than two classes), IoU and Dice of
    each class but the first (IoU of class 1 is validation's ``val_iou``) on the annotated
    pixels, and the adapted Rand error of the foreground segments where validation computes it
    (:func:`useg.training.validation.foreground_adapted_rand`; else None). All None when no
    pixel is annotated.
    """
    names = score_names(class_names)
    mask = target != IGNORE
    if not mask.any():
        return dict.fromkeys(names)
    pred = most_likely_class(probs)
    p, t = pred[mask], target[mask]
    classes = list(range(len(class_names)))
    error = pixel_error(p, t) if len(classes) == 2 else pixel_error(p > 0, t > 0)
    overlap, f1 = iou(p, t, labels=classes), dice(p, t, labels=classes)
    scores: dict[str, float | None] = {"pixel error": float(error)}
    for c, name in zip(classes[1:], class_names[1:], strict=True):
        scores[f"IoU {name}"] = float(overlap[c])
        scores[f"Dice {name}"] = float(f1[c])
    scores["adapted Rand error"] = foreground_adapted_rand(probs, target, mask)
    return scores

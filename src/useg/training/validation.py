"""Validation during training: the predictions ``useg predict`` would make of the validation
samples, scored on their labelled pixels.

Training comes before prediction and evaluation in the pipeline; this is the one place it uses
them, imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from useg.labels import IGNORE, most_likely_class
from useg.nets.unet import UNet
from useg.training.samples import Sample

__all__ = ["evaluate_samples", "foreground_adapted_rand"]


def evaluate_samples(
    model: UNet,
    samples: Sequence[Sample],
    device: torch.device,
    tile: Sequence[int] | None = None,
    precision: str = "auto",
) -> dict[str, float]:
    """Mean foreground IoU, pixel error and (when objects are meaningful) adapted Rand error of
    whole-image predictions (overlap tiles) on labelled pixels of ``samples``.

    The predictions are those ``useg predict`` makes of the samples' files: a sample's image is
    normalised already (:func:`useg.training.samples.make_sample`, with the statistics
    ``predict`` would compute from the file), so it is not normalised again. A network whose
    output depends on the tile predicts in one pass over the whole image, as ``useg predict``
    does. Without ``tile``, the tile is the one ``useg predict`` chooses (from memory), which is
    what training validates with: a same-padding network discards its context at every tile
    edge, so a training-sized tile would leave a sliver of output and thousands of tiles.
    """
    from useg.inference.predict import predict
    from useg.inference.tile_choice import tile_dependence

    was_training = model.training
    model.eval()
    if tile_dependence(model) is not None:
        tile = None
    ious, errors, rands = [], [], []
    try:
        for s in samples:
            unchanged = {"offset": [0.0] * s.image.shape[0], "scale": [1.0] * s.image.shape[0]}
            probs = predict(model, s.image, tile=tile, device=device, precision=precision,
                            stats=unchanged)
            pred = most_likely_class(probs)
            mask = s.target != IGNORE
            fg_p, fg_t = (pred == 1) & mask, (s.target == 1) & mask
            union = np.logical_or(fg_p, fg_t).sum()
            ious.append(float(np.logical_and(fg_p, fg_t).sum() / union) if union else 1.0)
            errors.append(float((pred[mask] != s.target[mask]).mean()))
            rand = foreground_adapted_rand(probs, s.target, mask)
            if rand is not None:
                rands.append(rand)
    finally:
        model.train(was_training)
    result = {"val_iou": float(np.mean(ious)), "val_pixel_error": float(np.mean(errors))}
    if rands:
        result["val_adapted_rand"] = float(np.mean(rands))
    return result


def foreground_adapted_rand(
    probs: np.ndarray, target: np.ndarray, mask: np.ndarray
) -> float | None:
    """ISBI adapted Rand error of the foreground segments of class probabilities ``probs``
    against the class target (2-class models on dense 2D labels, ``mask`` all True; else
    None): validation's ``val_adapted_rand``, and the score the run report gives its images."""
    if probs.shape[0] != 2 or target.ndim != 2 or not mask.all():
        return None
    try:
        from useg.evaluation.rand import adapted_rand_error
        from useg.postprocess.segments import threshold_components
    except ImportError:
        return None
    from scipy import ndimage as ndi

    # Every pixel gets a segment (membranes grow into their neighbours), as the ISBI scoring.
    seg = threshold_components(probs[1], 0.5, fill=True)
    gt = ndi.label(target == 1)[0]
    return float(adapted_rand_error(seg, gt)[0])

"""Prediction with a trained network: tiles, their choice, test-time augmentation, files, dask.

:mod:`~useg.inference.tiling` (overlap tiles for any NumPy predictor),
:mod:`~useg.inference.tta` (flips and quarter turns), :mod:`~useg.inference.tile_choice` (which
tile), :mod:`~useg.inference.predict` (``predict(model, image)``), :mod:`~useg.inference.files`
(image files in, result files out), :mod:`~useg.inference.blocks` and
:mod:`~useg.inference.dask` (block-wise prediction of images larger than one machine).
Nothing is imported here, so that the tiler can be used without torch.
"""

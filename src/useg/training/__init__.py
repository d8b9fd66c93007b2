"""Training: samples and their tiles, the loss, the loop, the run folder, and ``useg train``.

:mod:`~useg.training.weights` (the paper's weight map), :mod:`~useg.training.augment`,
:mod:`~useg.training.losses`, :mod:`~useg.training.samples` (label modes, targets, samples),
:mod:`~useg.training.stream` (random training tiles), :mod:`~useg.training.config` (the run's
configuration and learning-rate schedule), :mod:`~useg.training.run_folder` (what a run writes,
and resuming it), :mod:`~useg.training.distributed` (torchrun),
:mod:`~useg.training.validation`, :mod:`~useg.training.loop` (``train``),
:mod:`~useg.training.options` and :mod:`~useg.training.from_folders` (``useg train``). Nothing is
imported here, so that the command line reads its options without importing torch.
"""

"""The last stage: a run folder to one self-contained HTML page (``useg report``).

:mod:`~useg.report.gather` collects what a run folder holds (configuration, log, the model's
header) and predicts its gallery images with its model as ``useg predict`` would;
:mod:`~useg.report.figures` turns arrays and the log into PNG images (inline data URIs);
:mod:`~useg.report.page` assembles the page from those parts (a pure function);
:mod:`~useg.report.build` ties them together and writes the page atomically
(:func:`write_report`), and :func:`report_after_training` is the call at the end of
``useg train``, which warns instead of failing.
"""

from __future__ import annotations

from useg.report.build import REPORT, report_after_training, write_report

__all__ = ["REPORT", "report_after_training", "write_report"]

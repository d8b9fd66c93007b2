"""``useg report``: a run folder's report page, gathered, drawn, assembled and written
atomically (:func:`write_report`); :func:`report_after_training` is the same at the end of
``useg train``, where a failure only warns, so that a finished run never loses its model to
its report."""

from __future__ import annotations

import json
import os
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from useg.errors import OutputError, UsegWarning, one_line
from useg.io.files import atomic_write, check_output_file
from useg.report.figures import data_uri, png_bytes
from useg.report.gather import GalleryImage, RunRecord, class_names, gallery, read_run
from useg.report.page import GalleryRow, Page, Table, format_value, render_page
from useg.report.scores import score_names
from useg.training.run_folder import curves_png

__all__ = ["GALLERY_LIMIT", "PANEL_SIDE", "REPORT", "report_after_training", "write_report"]

REPORT = "report.html"
# Images in the gallery at most: each costs a prediction and up to about 1 MB of page
# (four 512x512 panels of a noisy EM image).
GALLERY_LIMIT = 6
# Longest side of a gallery panel, in pixels (larger images are shrunk for the page).
PANEL_SIDE = 512
# The validation scores of the log, as the curves name them.
_VAL_KEYS = ("val_iou", "val_pixel_error", "val_adapted_rand")


def write_report(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    max_images: int = GALLERY_LIMIT,
    device: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Write the report of the run folder ``run`` (``useg report``): one self-contained HTML
    page with the training curves, a gallery of its validation images (its training images,
    labelled as such, without them) predicted with its model as ``useg predict`` would, the
    validation scores recorded in training and the scores of the gallery images, and the
    run's configuration and command.

    Parameters
    ----------
    run : path
        The run folder (``useg train --out``).
    out : path, optional
        The page to write (default ``run/report.html``); its folder must exist.
    max_images : int
        Gallery images at most (the first ones, in natural order of their names).
    device, precision : str
        As for ``useg predict``.
    overwrite : bool
        Replace an ``out`` that exists (refused otherwise, before anything is predicted). The
        run's own ``report.html`` is the report of that run, which ``useg train`` and every
        ``useg report`` rewrite: it is replaced without ``overwrite``.

    Returns
    -------
    Path
        The page written.

    Raises
    ------
    InputError
        ``run`` is not a run folder, its configuration is incomplete, or it has no model; the
        folder of ``out`` does not exist.
    ConfigError
        ``out`` exists and is not the run's own report, without ``overwrite``.
    OutputError
        ``out`` cannot be written (:func:`useg.io.files.check_output_file`).
    """
    record = read_run(run)
    own = record.folder / REPORT
    target = Path(out) if out is not None else own
    if target.parent.resolve() == record.folder.resolve() and target.name != REPORT:
        # The run's other files (config.json, log.csv, the models) are the run itself.
        raise OutputError(f"--out {target}: a file of the run {record.folder}; the report "
                          f"goes to {REPORT} there or outside the run folder")
    check_output_file(target, new_folder=False,
                      overwrite=overwrite or target.resolve() == own.resolve())
    images, notes = gallery(record, limit=max_images, device=device, precision=precision)
    html = render_page(_page(record, images, notes))
    with atomic_write(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target


def report_after_training(run: str | os.PathLike, *, device: str = "auto",
                          precision: str = "auto") -> Path | None:
    """:func:`write_report` at the end of ``useg train``: the written page, or None after one
    line of warning (:class:`~useg.errors.UsegWarning`) when it could not be written. Under
    torchrun only the first process writes it."""
    if os.environ.get("RANK", "0") != "0":
        return None
    try:
        return write_report(run, device=device, precision=precision)
    except Exception as exc:  # noqa: BLE001 -- the model is trained and saved: keep it, say why
        warnings.warn(UsegWarning(f"the run report was not written ({one_line(exc)}); the model "
                                  f"is saved; try again with: useg report {run}"), stacklevel=2)
        return None


def _page(record: RunRecord, images: list[GalleryImage], notes: list[str]) -> Page:
    """The parts of the report page of ``record`` and its gallery."""
    config, names = record.config, class_names(record.config)
    rows = record.rows
    curves = curves_png(rows, dpi=110) if rows else None
    every = config.get("val_every")
    curves_note = ("Left: training loss (log scale). Right: validation scores every "
                   f"{every} steps (val_iou, the foreground IoU: higher is better; errors: "
                   "lower is better)." if curves else
                   "No curves: the run has logged no step yet" if not rows else
                   "No curves: drawing them needs matplotlib.")
    command = config.get("command")
    from useg import __version__

    return Page(
        title=f"useg run report: {record.folder.name}",
        summary=_summary(record),
        curves=data_uri(curves) if curves else None,
        curves_note=curves_note,
        panel_names=["image", f"probability of {' or '.join(names[1:])}",
                     "segmentation (most likely class)", "ground truth"],
        gallery=[_gallery_row(g) for g in images],
        gallery_notes=notes,
        tables=_tables(record, images, names),
        metrics_notes=_metrics_notes(record),
        command=shlex.join(command) if command else None,
        command_note=("The command that started the run, as recorded in config.json; "
                      f"useg train --out {shlex.quote(str(record.folder))} --resume "
                      "continues it." if command else
                      "config.json records no command: the run was started from Python (or "
                      "the demo, or useg densify), or by a useg that did not record it."),
        config_json=json.dumps(config, indent=2),
        footer=f"Written by useg {__version__} on {time.strftime('%Y-%m-%d %H:%M')}.",
    )


def _summary(record: RunRecord) -> list[tuple[str, str]]:
    config, header = record.config, record.header
    net = config["net"]
    data = (config.get("labels") or {}).get("data") or {}
    step = header.get("step")
    logged = record.rows[-1]["step"] if record.rows else None
    tile = config.get("tile")
    layout = (f"{net['ndim']}D, width {net.get('width')}, depth {net.get('depth')}, "
              f"{net.get('padding')} padding, norm {net.get('norm')}, {net['in_channels']} "
              f"input channel(s), {net['classes']} classes; tile "
              f"{'x'.join(map(str, tile)) if isinstance(tile, list) else tile}")
    recipe = config.get("recipe") or {}
    summary = [
        ("run folder", str(record.folder)),
        ("model shown", f"{record.model.name}" + (f" (step {step})" if step is not None else "")),
        ("steps", f"{logged if logged is not None else 0} logged of {config.get('iterations')}"),
        ("network", layout),
        ("labels", f"{config.get('label_mode')}: {', '.join(class_names(config))}"),
        ("optimizer", f"{config.get('optimizer')}, lr {format_value(config.get('lr'))}, "
                      f"schedule {config.get('schedule')}, batch {config.get('batch_size')}"),
        ("recipe", f"{recipe['name']} ({recipe.get('why', '')})" if recipe else "none"),
        ("training data", f"{data.get('images') or data.get('volume') or '-'} / "
                          f"{data.get('labels') or '-'}"),
        ("validation data", f"{data['val_images']} / {data['val_labels']}"
         if data.get("val_images") else "none"),
    ]
    decision = config.get("budget_decision")
    if decision:
        said = [decision.get("reason"), decision.get("stopped")]
        summary.append(("time budget", "; ".join(str(s) for s in said if s) or str(decision)))
    instances = header.get("instances")
    if isinstance(instances, dict):
        summary.append(("instance settings", str(instances.get("chosen_on", ""))))
    return summary


def _gallery_row(image: GalleryImage) -> GalleryRow:
    where = f"{image.split} image" + (f", {image.plane}" if image.plane else "")
    shown = [(k, v) for k, v in image.scores.items() if v is not None and k != "adapted Rand error"]
    scores = " \u00b7 ".join(f"{k} {format_value(v)}" for k, v in shown[:3])
    small = max(image.panels[0].shape[:2]) < PANEL_SIDE // 2
    return GalleryRow(f"{image.name} ({where})",
                      [data_uri(png_bytes(p, PANEL_SIDE)) for p in image.panels], scores,
                      pixelated=small)


def _tables(record: RunRecord, images: list[GalleryImage], names: list[str]) -> list[Table]:
    tables = []
    recorded = []
    best = record.header.get("val")
    if isinstance(best, dict):
        recorded.append([f"{record.model.name} (the best)", best.get("step"),
                         *(best.get(k) for k in _VAL_KEYS)])
    validated = [r for r in record.rows if "val_iou" in r]
    if validated and (not isinstance(best, dict) or validated[-1]["step"] != best.get("step")):
        last = validated[-1]
        recorded.append(["last validation", last["step"], *(last.get(k) for k in _VAL_KEYS)])
    if recorded:
        tables.append(Table("Validation scores recorded during training (all validation "
                            "images)", ["", "step", *_VAL_KEYS], recorded))
    if images:
        columns = score_names(names)
        rows: list[list[Any]] = [[g.name, g.split, *(g.scores.get(c) for c in columns)]
                                 for g in images]
        if len(images) > 1:
            means = []
            for c in columns:
                values = [g.scores.get(c) for g in images if g.scores.get(c) is not None]
                means.append(float(np.mean(values)) if values else None)
            rows.append(["mean", "", *means])
        tables.append(Table(f"The gallery's images, scored now with {record.model.name} "
                            "(useg.evaluation, annotated pixels)", ["image", "split", *columns],
                            rows))
    return tables


def _metrics_notes(record: RunRecord) -> list[str]:
    header = record.header
    notes = []
    if header.get("validation") is None and header.get("validation_note"):
        notes.append(str(header["validation_note"]))
    if isinstance(header.get("validation"), dict) and header["validation"].get("kept"):
        notes.append(str(header["validation"]["kept"]))
    return notes

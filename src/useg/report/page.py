"""The HTML of a run report, as a pure function of its already computed parts
(:func:`render_page`): one self-contained page, its images inline as data URIs, its style
inline, no script, nothing fetched."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = ["SECTIONS", "GalleryRow", "Page", "Table", "format_value", "render_page"]

# The sections of the page, by their id, in order.
SECTIONS = ("summary", "curves", "gallery", "metrics", "configuration")


@dataclass
class Table:
    """A table: its caption, column names and rows of values (numbers are formatted by
    :func:`format_value`)."""

    caption: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class GalleryRow:
    """One gallery image: a title, its panels as image URIs (in the order of the page's
    ``panel_names``) and a line of scores."""

    title: str
    panels: list[str]
    scores: str = ""
    pixelated: bool = False  # small images: enlarged with visible pixels rather than blurred


@dataclass
class Page:
    """Everything a report shows, computed already."""

    title: str
    summary: list[tuple[str, str]]
    curves: str | None  # the URI of the curves' PNG; None: no curves
    curves_note: str
    panel_names: list[str]
    gallery: list[GalleryRow]
    gallery_notes: list[str]
    tables: list[Table]
    command: str | None
    command_note: str
    config_json: str
    footer: str = ""
    metrics_notes: list[str] = field(default_factory=list)


def format_value(value: Any) -> str:
    """A table cell: floats with four significant digits, None and NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
  background: #f6f7f9; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 40px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #dde1e8; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #5b6475; margin: 0 0 18px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid #dde1e8; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f6; font-weight: 600; }
td.num { text-align: right; }
table.summary th { width: 190px; }
figure { margin: 0; }
img { display: block; max-width: 100%; height: auto; border-radius: 3px; }
img.curves { border: 1px solid #dde1e8; }
.gallery img { width: 100%; }
.gallery img.pixels { image-rendering: pixelated; }
details > summary { cursor: pointer; font-weight: 600; margin: 18px 0 6px; }
.gallery { display: grid; gap: 6px 10px; align-items: start; }
.gallery .head { font-weight: 600; font-size: 13px; color: #5b6475; text-align: center; }
.gallery .title { grid-column: 1 / -1; margin-top: 14px; font-weight: 600; }
.gallery .title span { font-weight: 400; color: #5b6475; }
.note { color: #5b6475; font-size: 14px; margin: 4px 0; }
.key { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  vertical-align: -1px; margin: 0 3px 0 8px; }
pre { background: #f3f4f7; border: 1px solid #dde1e8; border-radius: 4px; padding: 10px 12px;
  overflow-x: auto; font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  white-space: pre-wrap; word-break: break-all; }
footer { margin-top: 36px; color: #8a92a3; font-size: 13px; }
"""


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for value in row:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            cls = ' class="num"' if number else ""
            cells.append(f"<td{cls}>{escape(format_value(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table><caption>{escape(table.caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{escape(n)}</p>' for n in notes)


def _gallery(page: Page) -> str:
    if not page.gallery:
        return _notes(page.gallery_notes or ["No gallery."])
    columns = len(page.panel_names)
    heads = "".join(f'<div class="head">{escape(n)}</div>' for n in page.panel_names)
    rows = []
    for row in page.gallery:
        scores = f" <span>{escape(row.scores)}</span>" if row.scores else ""
        rows.append(f'<div class="title">{escape(row.title)}{scores}</div>')
        cls = ' class="pixels"' if row.pixelated else ""
        for name, uri in zip(page.panel_names, row.panels, strict=False):
            rows.append(f'<figure><img{cls} src="{uri}" alt="{escape(row.title)}: '
                        f'{escape(name)}"></figure>')
    grid = (f'<div class="gallery" style="grid-template-columns: repeat({columns}, 1fr)">'
            f"{heads}{''.join(rows)}</div>")
    legend = ('<p class="note">Outlines: <span class="key" style="background:#ff4020"></span>'
              'prediction <span class="key" style="background:#20c8ff"></span>ground truth</p>')
    return _notes(page.gallery_notes) + legend + grid


def render_page(page: Page) -> str:
    """The report page of ``page`` as one HTML document (UTF-8 text)."""
    summary = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                      for k, v in page.summary)
    if page.curves is not None:
        curves = (f'<img class="curves" src="{page.curves}" alt="training loss and validation '
                  f'scores against the step"><p class="note">{escape(page.curves_note)}</p>')
    else:
        curves = f'<p class="note">{escape(page.curves_note)}</p>'
    command = (f"<pre><code>{escape(page.command)}</code></pre>" if page.command is not None
               else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(page.title)}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{escape(page.title)}</h1>",
        '<section id="summary"><h2>Summary</h2>',
        f'<table class="summary"><tbody>{summary}</tbody></table></section>',
        f'<section id="curves"><h2>Training curves</h2>{curves}</section>',
        f'<section id="gallery"><h2>Gallery</h2>{_gallery(page)}</section>',
        '<section id="metrics"><h2>Metrics</h2>',
        "".join(_table(t) for t in page.tables), _notes(page.metrics_notes), "</section>",
        '<section id="configuration"><h2>Configuration</h2>',
        "<h3>Command</h3>", command, f'<p class="note">{escape(page.command_note)}</p>',
        "<details><summary>config.json (everything that defines the run)</summary>",
        f"<pre><code>{escape(page.config_json)}</code></pre></details>",
        "</section>",
        f"<footer>{escape(page.footer)}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"

"""A run's results as one self-contained HTML file (`report.html`): no network, ever.

Images are embedded as `data:` URIs, the style sheet and the one small script (click a column
header of the predictions table to sort it) are inline. Metrics are rendered generically:
every key of a split's metrics dict becomes a column (numbers, confidence intervals given as
`[lo, hi]` pairs, strings), nested dicts become their own tables and matrices (the confusion
matrix) their own grids, so keys added to the metrics later show up without a change here.
For cross-validation, the per-fold spread of every metric is drawn as an inline SVG strip.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from balnmp_mil.evaluation.report import COLUMNS

TITLES = {"auc": "AUC", "auc_ci": "AUC 95% CI", "n": "n", "n_pos": "n (pos)",
          **{key: name for name, key in COLUMNS}}
SPREAD_KEYS = ("auc", *(key for _, key in COLUMNS))
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;
max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}
figure img{max-width:36em;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.scroll{max-height:40em;overflow:auto;display:inline-block}.note{color:#555}
.wide{overflow-x:auto}.matrix{display:inline-block;margin-right:2em;vertical-align:top}
"""
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) { var c = row.cells[col]; return c.dataset.v || c.textContent; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        var d = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def cell(value: Any) -> str:
    """A value as table text: numbers to 3 digits, [lo, hi] pairs, missing as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) or v is None
                                                for v in value):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return str(value)


def is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple)) or (
        isinstance(value, (list, tuple)) and len(value) <= 4
        and all(v is None or isinstance(v, (int, float, str)) for v in value))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "",
          sort_keys: Sequence[Sequence[Any]] | None = None) -> str:
    """An HTML table; `sort_keys` (per row, per cell) become `data-v` for the sort script."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for c, v in enumerate(row):
            key = None if sort_keys is None else sort_keys[r][c]
            attr = "" if key is None else f' data-v="{esc(key)}"'
            cells.append(f"<td{attr}>{v if isinstance(v, _Raw) else esc(cell(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    klass = f' class="{cls}"' if cls else ""
    return (f"<table{klass}><thead><tr>{head}</tr></thead><tbody>" + "".join(body)
            + "</tbody></table>")


class _Raw(str):
    """Markup put into a cell as is (a link); everything else is escaped."""


def link(href: str, text: str) -> _Raw:
    return _Raw(f'<a href="{esc(href)}">{esc(text)}</a>')


def metrics_tables(reports: Mapping[str, Mapping[str, Any]], first: str = "split") -> str:
    """Rows = entries (splits, settings), columns = every scalar key any of them has, in
    first-seen order; nested dicts become one more table each, matrices one grid each."""
    keys: list[str] = []
    nested: list[str] = []
    for rep in reports.values():
        for k, v in rep.items():
            if k == "class_names":
                continue
            target = keys if is_scalar(v) else nested
            if k not in keys and k not in nested:
                target.append(k)
    keys = [k for k in keys if any(rep.get(k) is not None for rep in reports.values())]
    rows = [[label, *(rep.get(k) for k in keys)] for label, rep in reports.items()]
    parts = [f'<div class="wide">{table([first, *(TITLES.get(k, k) for k in keys)], rows)}'
             "</div>"]
    for k in nested:
        subs = {label: rep[k] for label, rep in reports.items() if isinstance(rep.get(k), dict)}
        if subs:
            parts.append(f"<h3>{esc(k)}</h3>" + metrics_tables(subs, first))
        for label, rep in reports.items():
            value = rep.get(k)
            if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
                names = list(rep.get("class_names") or range(len(value)))
                grid = table(["true \\ predicted", *map(str, names)],
                             [[str(names[i]) if i < len(names) else i, *r]
                              for i, r in enumerate(value)])
                parts.append(f'<div class="matrix"><h3>{esc(k)} · {esc(label)}</h3>{grid}</div>')
    return "".join(parts)


def key_values(items: Mapping[str, Any]) -> str:
    return table(["item", "value"], [[k, v] for k, v in items.items() if is_scalar(v)],
                 cls="kv")


def image(path: str | Path, caption: str) -> str:
    """A PNG as a `data:` URI figure; nothing when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def predictions_table(frame: pd.DataFrame,
                      heatmaps: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> str:
    """Every row of predictions.csv, sortable; with `heatmaps` (patient id -> [(slide id,
    href)]) a column linking each patient's heatmaps."""
    cols = list(frame.columns)
    rows, keys = [], []
    for rec in frame.itertuples(index=False):
        values = list(rec)
        row_keys: list[Any] = [None] * len(values)
        if heatmaps is not None:
            links = heatmaps.get(str(getattr(rec, "patient_id", "")), [])
            values.append(_Raw(" ".join(link(h, s) for s, h in links)))
            row_keys.append(" ".join(s for s, _ in links))
        rows.append(values)
        keys.append(row_keys)
    header = [*cols, *(["heatmaps"] if heatmaps is not None else [])]
    return f'<div class="scroll">{table(header, rows, "sortable predictions", keys)}</div>'


def spread_svg(folds: Sequence[Mapping[str, Any]], keys: Sequence[str] = SPREAD_KEYS,
               width: int = 640) -> str:
    """Per-fold values of each metric (0..1 axis), one row per setting and metric, as an
    inline SVG strip chart: one dot per fold, a bar at the mean."""
    settings = list(dict.fromkeys(str(r["setting"]) for r in folds))
    lines = [(s, k) for s in settings for k in keys]
    left, right, step = 260, 20, 22
    height = step * len(lines) + 40
    span = width - left - right
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" aria-label="per-fold spread" font-size="12" font-family="sans-serif">']
    for t in range(6):
        x = left + span * t / 5
        out.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{height - 25}" '
                   f'stroke="#e3e3e3"/><text x="{x:.1f}" y="{height - 8}" '
                   f'text-anchor="middle">{t / 5:.1f}</text>')
    for i, (setting, key) in enumerate(lines):
        y = 24 + i * step
        vals = [float(r[key]) for r in folds if str(r["setting"]) == setting
                and isinstance(r.get(key), (int, float)) and not math.isnan(float(r[key]))]
        out.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">'
                   f'{esc(setting)} · {esc(TITLES.get(key, key))}</text>')
        for v in vals:
            out.append(f'<circle cx="{left + span * v:.1f}" cy="{y}" r="4" fill="#1f77b4" '
                       f'fill-opacity="0.7"><title>{v:.3f}</title></circle>')
        if vals:
            m = left + span * sum(vals) / len(vals)
            out.append(f'<line x1="{m:.1f}" y1="{y - 8}" x2="{m:.1f}" y2="{y + 8}" '
                       f'stroke="#d62728" stroke-width="2"/>')
    return "".join(out) + "</svg>"


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: `sections` are (heading, inner HTML); empty ones are left out."""
    body = "".join(f'<section><h2>{esc(h)}</h2>{inner}</section>' if h else inner
                   for h, inner in sections if inner)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{esc(title)}</h1>{body}<script>{_SORT_JS}</script></body></html>\n")

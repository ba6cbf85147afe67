"""The index of a cohort's heatmaps: `index.md` (a table linking every PNG and GeoJSON, the
failed slides with their errors) and `index.csv` (one row per slide), written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from balnmp_mil.workflow import rundir

INDEX_MD, INDEX_CSV, INDEX_HTML = "index.md", "index.csv", "index.html"


def index_frame(drawn_results: Sequence[Any], failed: Mapping[str, str],
                order: Sequence[str]) -> pd.DataFrame:
    """One row per slide of `order`: slide_id, status (drawn/failed), n_patches, mapped,
    p_<class>..., png, geojson (file names in the index's folder), error; `drawn_results`
    are `HeatmapResult`s, `failed` slide id -> error."""
    drawn = {r.slide_id: r for r in drawn_results}
    rows = []
    for sid in order:
        r = drawn.get(sid)
        if r is None:
            rows.append({"slide_id": sid, "status": "failed", "error": failed.get(sid)})
            continue
        rows.append({"slide_id": sid, "status": "drawn", "n_patches": r.n_patches,
                     "mapped": r.mapped, **{f"p_{k}": v for k, v in r.probabilities.items()},
                     "png": r.path.name, "geojson": r.geojson.name if r.geojson else None})
    cols = ["slide_id", "status", "n_patches", "mapped"]
    frame = pd.DataFrame(rows)
    if "n_patches" in frame:
        frame["n_patches"] = frame["n_patches"].astype("Int64")
    rest = [c for c in frame.columns if c.startswith("p_")] + ["png", "geojson", "error"]
    return frame.reindex(columns=cols + rest)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def index_markdown(frame: pd.DataFrame) -> str:
    drawn, failed = frame[frame["status"] == "drawn"], frame[frame["status"] == "failed"]
    probs = [c for c in frame.columns if c.startswith("p_")]
    lines = [f"# Heatmaps: {len(drawn)} slides drawn, {len(failed)} failed\n",
             "| slide | patches | map | " + " | ".join(probs) + " | PNG | GeoJSON |",
             "|" + "---|" * (5 + len(probs))]
    for _, r in drawn.iterrows():
        cells = [_cell(r["slide_id"]), str(int(r["n_patches"])), _cell(r["mapped"]),
                 *(_cell(r[c]) for c in probs), f"[png]({r['png']})",
                 f"[geojson]({r['geojson']})" if _cell(r["geojson"]) else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if len(failed):
        lines += ["\n## Failed\n", "| slide | error |", "|---|---|"]
        lines += [f"| {_cell(r['slide_id'])} | {_cell(r['error'])} |"
                  for _, r in failed.iterrows()]
    return "\n".join(lines) + "\n"


def write_index(out: Path, drawn: Sequence[Any], failed: Mapping[str, str],
                order: Sequence[str]) -> None:
    """`out/index.csv` and `out/index.md` (see `index_frame`)."""
    frame = index_frame(drawn, failed, order)
    rundir.write_file(out / INDEX_CSV, lambda tmp: frame.to_csv(tmp, index=False))
    text = index_markdown(frame)
    rundir.write_file(out / INDEX_MD, lambda tmp: tmp.write_text(text))

"""`report.html` of a `train` or `cv` run directory (see `balnmp_mil.evaluation.html`).

Built from the files the run has already written into its folder (metrics.json's dict,
config.yaml's dict, predictions.csv, roc.png, training.png), so it can be rebuilt later, e.g.
with heatmaps linked: `heatmaps` maps a patient id to its slides' (slide id, href) pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from balnmp_mil.evaluation import html as h

SPLITS = ("train", "val", "test")
CONFIG_KEYS = ("features", "labels", "clinical", "task", "model", "folds", "seed", "epochs",
               "lr", "bag_level", "bags")
HeatmapLinks = Mapping[str, Sequence[tuple[str, str]]]


def _run_table(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    items: dict[str, Any] = {k: config.get(k) for k in CONFIG_KEYS if config.get(k) is not None}
    items.update({k: v for k, v in metrics.items() if h.is_scalar(v) and k not in items})
    names = metrics.get("class_names")
    if names:
        items["class_names"] = ", ".join(map(str, names))
    return h.key_values(items)


def _predictions(folder: Path, heatmaps: HeatmapLinks | None) -> str:
    path = folder / "predictions.csv"
    if not path.is_file():
        return ""
    frame = pd.read_csv(path, dtype={"patient_id": str})
    note = ("" if heatmaps is not None else
            '<p class="note">Heatmaps: <code>balnmp-mil heatmap RUN --slides DIR --out OUT'
            "</code> writes <code>OUT/index.html</code>, this report with each patient's "
            "heatmaps linked. Click a column header to sort.</p>")
    return note + h.predictions_table(frame, heatmaps)


def _heatmap_list(heatmaps: HeatmapLinks | None) -> str:
    """Every heatmap, by patient (also those of slides without a predictions row)."""
    if not heatmaps:
        return ""
    rows = [[p, s, h.link(href, href)] for p, links in heatmaps.items() for s, href in links]
    return h.table(["patient", "slide", "heatmap"], rows, "sortable")


def _heatmap_failures(failed: Mapping[str, str] | None) -> str:
    if not failed:
        return ""
    return h.table(["slide", "error"], [[s, e] for s, e in failed.items()])


def train_html(folder: str | Path, metrics: Mapping[str, Any], config: Mapping[str, Any],
               heatmaps: HeatmapLinks | None = None,
               failed: Mapping[str, str] | None = None) -> str:
    """The report of a training run in `folder`."""
    folder = Path(folder)
    splits = {s: metrics[s] for s in SPLITS if isinstance(metrics.get(s), Mapping)}
    binary = len(metrics.get("class_names") or []) <= 2
    title = (f"balnmp-mil run: {metrics.get('model') or config.get('model')} on "
             f"{config.get('task') or 'label'}")
    figures = (h.image(folder / "roc.png", "ROC curves (95% bootstrap band)")
               + h.image(folder / "training.png", "Training curves"))
    return h.page(title, [
        ("Run", _run_table(metrics, config)),
        ("Metrics (threshold 0.5)" if binary else "Metrics (predicted class = argmax)",
         h.metrics_tables(splits)),
        ("Figures", figures),
        ("Per-patient predictions", _predictions(folder, heatmaps)),
        ("Heatmaps", _heatmap_list(heatmaps)),
        ("Heatmaps that failed", _heatmap_failures(failed)),
    ])


def cv_html(folder: str | Path, metrics: Mapping[str, Any], config: Mapping[str, Any],
            heatmaps: HeatmapLinks | None = None,
            failed: Mapping[str, str] | None = None) -> str:
    """The report of a cross-validation run in `folder`: mean and sd over folds per
    setting, the pooled out-of-fold metrics, every fold, and the per-fold spread."""
    folder = Path(folder)
    folds: list[Mapping[str, Any]] = list(metrics.get("per_fold") or [])
    settings = metrics.get("settings") or {}
    per_fold = {f"{r.get('setting')} · fold {r.get('fold')}": {
        k: v for k, v in r.items() if k not in ("setting", "fold")} for r in folds}
    title = (f"balnmp-mil cross-validation: {metrics.get('folds') or config.get('folds')} "
             f"folds, task {config.get('task') or 'label'}")
    return h.page(title, [
        ("Run", _run_table({k: v for k, v in metrics.items() if k != "per_fold"}, config)),
        ("Test metrics over folds (mean, sd; pooled out-of-fold)",
         h.metrics_tables(settings, "setting")),
        ("Per-fold spread (dots: folds, bar: mean)", h.spread_svg(folds) if folds else ""),
        ("Per fold (test split)", h.metrics_tables(per_fold, "setting · fold")),
        ("Figures", h.image(folder / "roc.png", "Pooled out-of-fold ROC")),
        ("Per-patient predictions (out of fold)", _predictions(folder, heatmaps)),
        ("Heatmaps", _heatmap_list(heatmaps)),
        ("Heatmaps that failed", _heatmap_failures(failed)),
    ])


def run_html(folder: str | Path, metrics: Mapping[str, Any], config: Mapping[str, Any],
             heatmaps: HeatmapLinks | None = None,
             failed: Mapping[str, str] | None = None) -> str:
    """`cv_html` for a cross-validation run's metrics (they list `per_fold`), else
    `train_html`."""
    build = cv_html if "per_fold" in metrics else train_html
    return build(folder, metrics, config, heatmaps, failed)

"""K-fold cross-validation behind `balnmp-mil cv`.

Per fold and setting (image-only MIL, image + clinical MIL, clinical-only logistic regression:
the paper's three rows) the model is fitted on the fold's training patients (clinical encoder
included, early stopping on the fold's val part) and evaluated on its test patients. The run
directory holds config.yaml, splits.json (all folds), cv.csv (one row per fold and setting),
predictions.csv (out-of-fold test predictions), metrics.json, report.md, report.html and roc.png.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from balnmp_mil.evaluation.report import COLUMNS, cv_report, cv_table
from balnmp_mil.evaluation.report_html import run_html
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.config import CVConfig
from balnmp_mil.workflow.steps import (
    attach_clinical,
    bags_per_step,
    clinical_only_fit,
    fit_and_predict,
    labels_named,
    labels_numpy,
    positive_class,
    positive_scores,
)
from balnmp_mil.workflow.train import bags_line, start_run

if TYPE_CHECKING:
    from balnmp_mil.data.cohort import Cohort


@dataclass
class CVResult:
    """Where the cv run went, one row per fold and setting, and the mean ± sd table."""

    path: Path
    folds: list[dict[str, Any]]
    table: str
    seconds: float
    positive: str | None = None
    bags_line: str | None = None

    def summary(self) -> str:
        head = f"positive class: {self.positive}\n" if self.positive else ""
        head += f"{self.bags_line}\n" if self.bags_line else ""
        return f"{head}{self.table}\nrun: {self.path}  in {self.seconds:.1f} s"


def _fold_settings(cfg: CVConfig, cohort: Cohort, idx: dict[str, np.ndarray], device: str
                   ) -> dict[str, dict[str, np.ndarray]]:
    """Probabilities per part for every setting of one fold."""
    out: dict[str, dict[str, np.ndarray]] = {}
    clinical_cohort = cohort  # with the fold's clinical encoding, when a setting uses it
    if any("clinical" in s for s in cfg.settings()):
        _, clinical_cohort = attach_clinical(cfg, cohort, idx["train"])
    for setting in cfg.settings():
        if setting == "clinical":
            out["clinical (logistic regression)"] = clinical_only_fit(clinical_cohort, idx, cfg)[1]
            continue
        data = clinical_cohort if setting == "image+clinical" else cohort
        for model in cfg.models:
            sub = dataclasses.replace(cfg, model=model)
            out[f"{model} · {setting}"] = fit_and_predict(sub, data, idx, device)[2]
    return out


def cv_run(cfg: CVConfig, out: str | Path, overwrite: bool = False,
           config: str | Path | None = None) -> CVResult:
    """Run k-fold cross-validation and write the cv run directory (atomically); `config` as
    for `train_run`."""
    from balnmp_mil.data.splits import check_classes, check_fold_sizes, kfold_splits, save_splits
    from balnmp_mil.evaluation.metrics import evaluate
    start = time.perf_counter()
    begun = start_run(cfg, out, overwrite, config)
    out, device, cohort, saved = begun.out, begun.device, begun.cohort, begun.saved
    y_all = labels_numpy(cohort)
    with labels_named(cfg):
        check_classes(y_all, cohort.class_names)
        check_fold_sizes(y_all, cohort.class_names, cfg.folds)
    folds = kfold_splits(cohort.patient_ids, y_all, k=cfg.folds, val=cfg.val, seed=cfg.seed)
    if any(setting != "clinical" for setting in cfg.settings()):  # a MIL model is fitted
        saved["meta"]["bags_per_step"] = [  # per fold: what --bags-per-step auto resolved to
            bags_per_step(cfg, cohort, f.indices(cohort.patient_ids)["train"]) for f in folds]
    rows: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    with rundir.staged_run(out, overwrite, cfg.inputs()) as tmp:
        rundir.write_config(tmp / rundir.CONFIG, saved)
        save_splits(folds, tmp / rundir.SPLITS)
        for k, split in enumerate(folds):
            idx = {p: r for p, r in split.indices(cohort.patient_ids).items() if len(r)}
            test = idx["test"]
            for setting, probs in _fold_settings(cfg, cohort, idx, device).items():
                rep = evaluate(y_all[test], positive_scores(probs["test"]), ci=cfg.ci,
                               n_bootstrap=cfg.n_bootstrap, seed=cfg.seed,
                               class_names=cohort.class_names).to_dict()
                rows.append({"setting": setting, "fold": k, **rep})
                frame = pd.DataFrame({"patient_id": [cohort.patient_ids[i] for i in test],
                                      "fold": k, "setting": setting, "label": y_all[test]})
                for c, name in enumerate(cohort.class_names):
                    frame[f"prob_{name}"] = probs["test"][:, c]
                frames.append(frame)
        preds = pd.concat(frames, ignore_index=True)
        preds.to_csv(tmp / rundir.PREDICTIONS, index=False)
        keys = ["setting", "fold", "n", "n_pos", "auc", *(k for _, k in COLUMNS)]
        pd.DataFrame([{k: r.get(k) for k in keys} for r in rows]).to_csv(tmp / "cv.csv",
                                                                        index=False)
        rundir.write_json(tmp / rundir.METRICS, _cv_metrics(rows, preds, cohort.class_names, cfg))
        _plot_pooled(preds, cohort.class_names, tmp / rundir.ROC, cfg)
        (tmp / rundir.REPORT).write_text(cv_report(rows, saved, cohort.class_names))
        (tmp / rundir.REPORT_HTML).write_text(
            run_html(tmp, rundir.read_json(tmp / rundir.METRICS), saved), encoding="utf-8")
    used = saved["meta"].get("bags_per_step")
    return CVResult(Path(out), rows, cv_table(rows), time.perf_counter() - start,
                    positive_class(list(cohort.class_names)),
                    None if used is None else bags_line(used, cfg.bags_per_step))


def _cv_metrics(rows: list[dict], preds: pd.DataFrame, class_names: list[str],
                cfg: CVConfig) -> dict[str, Any]:
    """Per setting: mean and sd of each metric over folds, and the pooled out-of-fold AUC."""
    from balnmp_mil.evaluation.metrics import evaluate

    settings: dict[str, Any] = {}
    prob_cols = [f"prob_{n}" for n in class_names]
    for setting, group in preds.groupby("setting", sort=False):
        fold_rows = [r for r in rows if r["setting"] == setting]
        entry: dict[str, Any] = {}
        for key in ("auc", *(k for _, k in COLUMNS)):
            vals = np.asarray([r.get(key) for r in fold_rows], dtype=float)
            vals = vals[~np.isnan(vals)]
            entry[f"{key}_mean"] = float(vals.mean()) if vals.size else None
            entry[f"{key}_sd"] = float(vals.std(ddof=1)) if vals.size > 1 else None
        pooled = evaluate(group["label"].to_numpy(), positive_scores(group[prob_cols].to_numpy()),
                          ci=cfg.ci, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed,
                          class_names=class_names)
        entry["pooled"] = pooled.to_dict()
        settings[str(setting)] = entry
    return {"task": cfg.task, "folds": cfg.folds, "class_names": class_names,
            "positive_class": positive_class(class_names), "settings": settings,
            "per_fold": rows}


def _plot_pooled(preds: pd.DataFrame, class_names: list[str], out: Path, cfg: CVConfig) -> None:
    """ROC of the pooled out-of-fold test predictions, one curve per setting (binary)."""
    from balnmp_mil.evaluation.plots import plot_roc

    if len(class_names) != 2:
        first = preds[preds["setting"] == preds["setting"].iloc[0]]
        curves = {f"{n} vs rest": ((first["label"] == c).astype(int).to_numpy(),
                                   first[f"prob_{n}"].to_numpy())
                  for c, n in enumerate(class_names)
                  if 0 < (first["label"] == c).sum() < len(first)}
    else:
        curves = {str(s): (g["label"].to_numpy(), g[f"prob_{class_names[1]}"].to_numpy())
                  for s, g in preds.groupby("setting", sort=False)
                  if g["label"].nunique() == 2}
    if curves:
        plot_roc(curves, out, n_bootstrap=min(cfg.n_bootstrap, 500), seed=cfg.seed,
                 title=f"{cfg.folds}-fold CV, {cfg.task or 'label'}: pooled test ROC")

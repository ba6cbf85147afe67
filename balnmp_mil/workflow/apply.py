"""Apply a saved run: `evaluate` (recompute metrics), `predict` (new bags) and `heatmap`.

A run is loaded with `rundir.load_run` (state_dict with weights_only=True, JSON/YAML configs);
its clinical encoder, fitted on the run's training patients, encodes new patients as is.
`heatmap` is the only place where balnmp_mil touches a slide: it imports
`balnmp_cache.slides.open_slide` lazily, inside the function, for the thumbnail and the top-k
patch gallery.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from balnmp_cache.store._atomic import check_output
from balnmp_mil.errors import InputError, LabelError
from balnmp_mil.evaluation.report import metrics_table
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.compat import check_store
from balnmp_mil.workflow.config import SPLIT_NAMES, TrainConfig, resolve_device
from balnmp_mil.workflow.diagnose import check_store_path
from balnmp_mil.workflow.steps import (
    CLINICAL_LOGREG,
    ClinicalLogReg,
    evaluate_parts,
    labels_numpy,
    positive_class,
    positive_scores,
)

if TYPE_CHECKING:
    from balnmp_mil.data.clinical import ClinicalEncoder
    from balnmp_mil.data.cohort import Cohort
    from balnmp_mil.evaluation.metrics import Report


def run_config(run: rundir.Run, **overrides: Any) -> TrainConfig:
    """The TrainConfig a run was made with (from its config.yaml), with `overrides` (options
    given to evaluate / predict; None keeps the run's value) applied and checked."""
    cfg = TrainConfig.from_dict(dict(run.config), source=f"{run.path / rundir.CONFIG}")
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def clinical_matrix(encoder: ClinicalEncoder, table: str | Path,
                    patient_ids: list[str]) -> np.ndarray:
    """Encode the rows of `patient_ids` (in that order) from a clinical table file."""
    from balnmp_mil.data.clinical_fields import patient_labels
    from balnmp_mil.data.labels import read_table

    df = read_table(table, "clinical table")
    first: dict[str, int] = {}
    for i, pid in enumerate(patient_labels(df, encoder.columns)):
        first.setdefault(pid, i)
    missing = [p for p in patient_ids if p not in first]
    if missing:
        raise InputError(f"clinical table {table} has no row for patient(s) {missing[:10]}; "
                         "add them or pass the right --clinical table")
    return encoder.transform(df.iloc[[first[p] for p in patient_ids]])


def apply_run(run: rundir.Run, cohort: Cohort, clinical: str | Path | None = None) -> np.ndarray:
    """Patient probabilities (n, C) of a saved run on a cohort (its clinical data encoded)."""
    from balnmp_mil.training.fit import predict

    if run.clinical_encoder is not None:
        table = clinical or run.config.get("clinical")
        if table is None:
            raise InputError(f"run {run.path} uses clinical data; pass --clinical TABLE")
        cohort = cohort.with_clinical(
            clinical_matrix(run.clinical_encoder, table, list(cohort.patient_ids)))
    if run.model is None or run.model_config.get("kind") == CLINICAL_LOGREG:
        if cohort.clinical is None:
            raise InputError(f"run {run.path} is a clinical-only model; pass --clinical TABLE")
        x = cohort.clinical.detach().cpu().numpy()
        return ClinicalLogReg.from_dict(run.model_config).predict_proba(x)
    return predict(run.model, cohort)


def check_run_store(run: rundir.Run, record: dict[str, Any], features: str | Path,
                    allow: bool) -> None:
    """The bags about to be used (their `store_record`) against the run's record; a
    clinical-only run reads no features and is not checked."""
    if run.model is None:
        return
    check_store(record, run.store_record, store=str(features), run=f"run {run.path}",
                allow=allow, model_dim=run.model_config.get("in_dim"))


def _labels(run: rundir.Run, cfg: TrainConfig, labels: str | Path) -> Any:
    """New patients' labels, mapped onto the run's classes (a `LabelTable`)."""
    from balnmp_mil.data.labels import read_table, resolve_labels

    if not Path(labels).is_file():
        raise InputError(f"labels file {labels} does not exist")
    df = read_table(labels, "labels file")
    classes = None if cfg.task is not None else run.class_names
    try:
        return resolve_labels(df, task=cfg.task, positive=cfg.positive, classes=classes)
    except LabelError as exc:
        raise LabelError(f"labels file {labels}: {exc}") from exc


def load_labelled(run: rundir.Run, cfg: TrainConfig, features: str | Path,
                  labels: str | Path, device: str) -> Cohort:
    """A cohort of new labelled patients with the run's task, classes, bag level and store
    policy, checked against the store the run was trained on."""
    from balnmp_mil.data.cohort import load_cohort

    check_store_path(features)
    table = _labels(run, cfg, labels)
    cohort = load_cohort(features, table, task=cfg.task, bag_level=cfg.bag_level,
                         device=device, on_missing=cfg.on_missing,
                         allow_mixed=cfg.allow_mixed)
    if list(cohort.class_names) != run.class_names:
        raise InputError(f"labels {labels} give classes {cohort.class_names} but run "
                         f"{run.path} was trained on {run.class_names}")
    check_run_store(run, cohort.meta["store_record"], features, cfg.allow_store_mismatch)
    return cohort


def load_unlabelled(run: rundir.Run, cfg: TrainConfig, features: str | Path,
                    device: str) -> Cohort:
    """Every slide of a store as its own patient (labels unknown: set to 0, never reported)."""
    from balnmp_cache.store import load_bags
    from balnmp_mil.data.cohort import cohort_from_bags
    from balnmp_mil.data.provenance import store_record

    check_store_path(features)
    packed = load_bags(features, on_problem=cfg.on_missing, allow_mixed=cfg.allow_mixed)
    offs = np.asarray(packed.offsets)
    feats = np.asarray(packed.features)
    check_run_store(run, store_record(packed.attrs, feats.shape[1]), features,
                    cfg.allow_store_mismatch)
    bags = [feats[offs[i]:offs[i + 1]] for i in range(len(packed.slide_ids))]
    return cohort_from_bags(bags, np.zeros(len(bags), dtype=np.int64),
                            patient_ids=list(packed.slide_ids), class_names=run.class_names,
                            device=device)


@dataclass
class EvalResult:
    """Reports per part (train/val/test of the run, or `new` data) and the metrics dict."""

    reports: dict[str, Report]
    metrics: dict[str, Any]

    def summary(self) -> str:
        positive = self.metrics.get("positive_class")
        text = f"positive class: {positive}\n" if positive else ""
        text += "Threshold 0.5\n" + metrics_table(self.reports)
        youden = {p: m["at_youden"] for p, m in self.metrics.items()
                  if isinstance(m, dict) and m.get("at_youden")}
        if youden:
            t = self.metrics.get("youden_threshold")
            text += f"\nYouden threshold {t:.3f}\n" + metrics_table(youden)
        return text


def evaluate_run(run_path: str | Path, features: str | Path | None = None,
                 labels: str | Path | None = None, clinical: str | Path | None = None,
                 device: str | None = None, **overrides: Any) -> EvalResult:
    """Recompute a run's metrics from predictions.csv, or evaluate it on new labelled data.

    overrides: run options to use instead of the run's (ci / n_bootstrap / seed for the AUC
    confidence interval, on_missing / allow_mixed for new data); None keeps the run's.
    """
    run = rundir.load_run(run_path, device="cpu")
    cfg = run_config(run, **overrides)
    names = run.class_names
    if features is None and labels is None:
        preds = rundir.read_predictions(run)
        probs_cols = [f"prob_{n}" for n in names]
        parts = [p for p in SPLIT_NAMES if p in set(preds["split"])]
        y = {p: preds.loc[preds["split"] == p, "label"].to_numpy(np.int64) for p in parts}
        probs = {p: preds.loc[preds["split"] == p, probs_cols].to_numpy(float) for p in parts}
        reports, metrics, _ = evaluate_parts(y, probs, names, cfg)
        metrics["positive_class"] = positive_class(names)
        return EvalResult(reports, metrics)
    if features is None or labels is None:
        raise InputError("evaluating on new data needs both --features and --labels")
    dev = resolve_device(device)
    if run.model is not None:
        run.model.to(dev)
    cohort = load_labelled(run, cfg, features, labels, dev)
    probs = {"new": apply_run(run, cohort, clinical)}
    y = {"new": labels_numpy(cohort)}
    reports, metrics, _ = evaluate_parts(y, probs, names, cfg, youden_from=None)
    threshold = run.metrics.get("youden_threshold")
    if threshold is not None:
        from balnmp_mil.evaluation.metrics import evaluate

        metrics["new"]["at_youden"] = evaluate(
            y["new"], positive_scores(probs["new"]), threshold=threshold, ci=cfg.ci,
            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, class_names=names).to_dict()
        metrics["youden_threshold"] = threshold
        metrics["youden_split"] = f"val of {run.path}"
    metrics["positive_class"] = positive_class(names)
    return EvalResult(reports, metrics)


def predict_run(run_path: str | Path, features: str | Path, out: str | Path,
                labels: str | Path | None = None, clinical: str | Path | None = None,
                device: str | None = None, **overrides: Any) -> pd.DataFrame:
    """Write patient probabilities of a saved run on FEATURES to `out` (CSV, atomically).

    Without labels every slide is its own patient; with a labels table (patient_id, slide_id)
    slides are grouped by patient and the true label is added. `overrides`: on_missing /
    allow_mixed instead of the run's.
    """
    run = rundir.load_run(run_path, device="cpu")
    cfg = run_config(run, **overrides)
    check_output(out, [("RUN", run_path), ("FEATURES", features), ("--labels", labels),
                       ("--clinical", clinical)], InputError)
    dev = resolve_device(device)
    if run.model is not None:
        run.model.to(dev)
    cohort = (load_labelled(run, cfg, features, labels, dev) if labels is not None
              else load_unlabelled(run, cfg, features, dev))
    probs = apply_run(run, cohort, clinical)
    frame = pd.DataFrame({"patient_id": list(cohort.patient_ids)})
    if labels is not None:
        frame["label"] = labels_numpy(cohort)
    for c, name in enumerate(run.class_names):
        frame[f"prob_{name}"] = probs[:, c]
    frame["prediction"] = [run.class_names[i] for i in _predicted(probs)]
    rundir.write_file(out, lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def _predicted(probs: np.ndarray) -> np.ndarray:
    """Class index per patient: positive when p >= 0.5 (binary), else the argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1] >= 0.5).astype(np.int64)
    return probs.argmax(axis=1)

"""One training run, written as a run directory: `train_run(TrainConfig, out)`.

load_cohort -> stratified patient split -> clinical encoder fitted on the training patients only
-> build_model + fit (early stopping on val) -> predict train/val/test -> evaluate at 0.5 and at
the Youden threshold chosen on val -> run directory (see `balnmp_mil.workflow.rundir`). The CLI
only parses arguments into a `TrainConfig`; a run's `config.yaml` is that config, so
`--config run/config.yaml` reproduces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from balnmp_cache._version import __version__
from balnmp_mil.evaluation.report import fmt_auc, train_report
from balnmp_mil.evaluation.report_html import run_html
from balnmp_mil.training.config import AUTO
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.config import SPLIT_NAMES, TrainConfig, resolve_device, resolved_config
from balnmp_mil.workflow.steps import (
    attach_clinical,
    bags_per_step,
    check_inputs,
    clinical_only_fit,
    evaluate_parts,
    fit_and_predict,
    labels_numpy,
    load_training_cohort,
    make_split,
    positive_class,
    predictions_frame,
    roc_curves,
    split_indices,
)


@dataclass
class RunResult:
    """What `train_run` produced: where, the metrics per split, and the training outcome."""

    path: Path
    config: TrainConfig
    metrics: dict[str, Any]
    reports: dict[str, Any]
    youden_threshold: float | None
    best_epoch: int | None
    seconds: float
    bags_per_step: int | None = None

    def summary(self) -> str:
        """A few lines for the terminal: AUC [CI] per split and the files written."""
        model = self.metrics.get("model") or self.config.model
        positive = self.metrics.get("positive_class")
        lines = [f"{model} on {self.config.task or 'label'} (seed {self.config.seed})"
                 + (f"; positive class: {positive}" if positive else "")]
        if self.bags_per_step is not None:
            lines.append(f"  {bags_line(self.bags_per_step, self.config.bags_per_step)}")
        for name in SPLIT_NAMES:
            if name in self.metrics:
                m = self.metrics[name]
                lines.append(f"  {name:<5} AUC {fmt_auc(m)}  (n={m.get('n')})")
        files = ", ".join(
            p.name for p in sorted(self.path.iterdir()) if not p.name.startswith(".")
        )
        lines.append(f"run: {self.path}  ({files})  in {self.seconds:.1f} s")
        return "\n".join(lines)


def bags_line(used: int | list[int], given: int | str) -> str:
    """'bags per optimiser step: 1 (auto)' for the summary of a run."""
    shown = used if isinstance(used, int) else "/".join(map(str, sorted(set(used))))
    return f"bags per optimiser step: {shown}" + (" (auto)" if given == AUTO else "")


@dataclass
class Started:
    """What `train_run` and `cv_run` begin with: the checked `--out`, the device, the loaded
    cohort and the config record to save (its `meta` filled in)."""

    out: Path
    device: str
    cohort: Any
    saved: dict[str, Any]


def start_run(cfg: TrainConfig, out: str | Path, overwrite: bool,
              config: str | Path | None) -> Started:
    """Refuse an `--out` that may not be written and bad inputs before any work, then load
    the cohort on the resolved device (`config` as for `train_run`)."""
    target = rundir.check_target(out, overwrite, cfg.inputs())
    check_inputs(cfg)
    device = resolve_device(cfg.device)
    cohort = load_training_cohort(cfg, device, config)
    saved = resolved_config(cfg)
    saved["meta"] = run_meta(cohort, device, target)
    return Started(target, device, cohort, saved)


def run_meta(cohort: Any, device: str, out: Path) -> dict[str, Any]:
    """The `meta` block of a run's `config.yaml`: who wrote it, where and when, and the
    record of the store it was trained on (checked when the run is applied or reused)."""
    meta = {"balnmp_version": __version__, "run_format": rundir.RUN_FORMAT, "device": device,
            "out": str(out), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "n_patients": len(cohort), "n_bags": int(cohort.n_bags),
            "store": cohort.meta.get("store_record")}
    fixed = cohort.meta.get("fixed_bags")
    if fixed:  # --bags: the rows of the store that no fixed bag names (the paper's leftovers)
        meta["n_rows_unused"] = int(fixed["n_rows_unused"])
    return meta


def train_run(cfg: TrainConfig, out: str | Path, overwrite: bool = False,
              config: str | Path | None = None) -> RunResult:
    """Train, evaluate and write one run directory atomically (see module docstring).

    `config`: the `--config` file `cfg` was read from; when it is a run's `config.yaml`,
    FEATURES must match the store that run was trained on (see `workflow.compat`)."""
    from balnmp_mil.data.splits import save_splits
    from balnmp_mil.evaluation.plots import plot_roc, plot_training_curves

    start = time.perf_counter()
    begun = start_run(cfg, out, overwrite, config)
    out, device, cohort, saved = begun.out, begun.device, begun.cohort, begun.saved
    split = make_split(cfg, cohort)
    idx = split_indices(cohort, split)
    class_names = list(cohort.class_names)
    per_step = bags_per_step(cfg, cohort, idx["train"])
    if per_step is not None:
        saved["meta"]["bags_per_step"] = per_step  # what --bags-per-step auto resolved to
    with rundir.staged_run(out, overwrite, cfg.inputs()) as tmp:
        rundir.write_config(tmp / rundir.CONFIG, saved)
        save_splits(split, tmp / rundir.SPLITS)
        encoder, cohort = attach_clinical(cfg, cohort, idx["train"])
        if encoder is not None:
            rundir.write_json(tmp / rundir.CLINICAL_ENCODER, encoder.to_dict())
        if cfg.clinical_only:
            coef, probs, history, best_epoch = clinical_only_fit(cohort, idx, cfg)
            rundir.write_json(tmp / rundir.MODEL_CONFIG, coef)
        else:
            model, fit_result, probs = fit_and_predict(cfg, cohort, idx, device)
            rundir.save_model(tmp, model)
            history, best_epoch = fit_result.history, fit_result.best_epoch
        y = {part: labels_numpy(cohort)[rows] for part, rows in idx.items()}
        reports, metrics, threshold = evaluate_parts(y, probs, class_names, cfg)
        model_name = "clinical_logreg" if cfg.clinical_only else cfg.model
        metrics.update(task=cfg.task, model=model_name, class_names=class_names,
                       positive_class=positive_class(class_names), best_epoch=best_epoch)
        rundir.write_json(tmp / rundir.METRICS, metrics)
        predictions_frame(cohort, idx, probs, class_names).to_csv(
            tmp / rundir.PREDICTIONS, index=False)
        pd.DataFrame(history).to_csv(tmp / rundir.HISTORY, index=False)
        if history:
            plot_training_curves(history, tmp / "training.png")
        curves = roc_curves(y, probs, class_names)
        if curves:
            plot_roc(curves, tmp / rundir.ROC, n_bootstrap=min(cfg.n_bootstrap, 500),
                     seed=cfg.seed, title=f"{model_name} · {cfg.task or 'label'} · ROC")
        (tmp / rundir.REPORT).write_text(train_report(metrics, saved))
        (tmp / rundir.REPORT_HTML).write_text(
            run_html(tmp, rundir.read_json(tmp / rundir.METRICS), saved), encoding="utf-8")
    return RunResult(Path(out), cfg, metrics, reports, threshold, best_epoch,
                     time.perf_counter() - start, per_step)

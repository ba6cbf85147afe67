"""Library-level workflows behind `balnmp-mil`: one training run, written as a run directory.

`train_run(TrainConfig, out)` = load_cohort -> stratified patient split -> clinical encoder
fitted on the training patients only -> build_model + fit (early stopping on val) -> predict
train/val/test -> evaluate at 0.5 and at the Youden threshold chosen on val -> run directory
(see `balnmp_mil.rundir`). The CLI only parses arguments into a `TrainConfig`; `config.yaml`
of a run is that config, so `--config run/config.yaml` reproduces it.
Cross-validation lives in `workflow_cv.py`, applying a saved run in `workflow_apply.py`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balnmp_cache._version import __version__
from balnmp_mil import rundir
from balnmp_mil.report import fmt_auc, train_report

SPLIT_NAMES = ("train", "val", "test")
FIT_OPTIONS = ("epochs", "lr", "weight_decay", "bags_per_step", "instances_per_bag", "patience",
               "monitor", "optimizer", "schedule")


class InputError(ValueError):
    """Bad user input (a path, task, model, option or patient); the message says what to do."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as the run's `config.yaml`."""

    features: str
    labels: str
    task: str | None = None
    model: str = "abmil"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    clinical: str | None = None
    clinical_variant: str = "full"
    clinical_impute: bool = False
    clinical_only: bool = False
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    bags_per_step: int | None = None
    instances_per_bag: int | None = None
    patience: int | None = None
    monitor: str | None = None
    optimizer: str | None = None
    schedule: str | None = None
    val: float = 0.15
    test: float = 0.2
    splits: str | None = None
    bag_level: str = "patient"
    on_missing: str = "error"
    device: str | None = None
    ci: str = "bootstrap"
    n_bootstrap: int = 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def inputs(self) -> list[tuple[str, str | None]]:
        """The files and folders a run reads: its `--out` may not be, hold or lie inside one."""
        return [("FEATURES", self.features), ("--labels", self.labels),
                ("--clinical", self.clinical), ("--splits", self.splits)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys and missing required ones by name."""
        return _from_dict(cls, data, source)


def _from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"meta"})
    if unknown:
        raise InputError(
            f"{source}: unknown option(s) {', '.join(unknown)}; valid options are "
            f"{', '.join(sorted(names))}"
        )
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        and data.get(f.name) is None
    ]
    if required:
        raise InputError(f"{source}: missing required option(s) {', '.join(required)}")
    values = {k: v for k, v in data.items() if k in names}
    if values.get("model_kwargs") is None:
        values.pop("model_kwargs", None)
    elif not isinstance(values["model_kwargs"], dict):
        raise InputError(f"{source}: model_kwargs must be a mapping of argument: value")
    return cls(**values)


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

    def summary(self) -> str:
        """A few lines for the terminal: AUC [CI] per split and the files written."""
        model = self.metrics.get("model") or self.config.model
        lines = [f"{model} on {self.config.task or 'label'} (seed {self.config.seed})"]
        for name in SPLIT_NAMES:
            if name in self.metrics:
                m = self.metrics[name]
                lines.append(f"  {name:<5} AUC {fmt_auc(m)}  (n={m.get('n')})")
        files = ", ".join(
            p.name for p in sorted(self.path.iterdir()) if not p.name.startswith(".")
        )
        lines.append(f"run: {self.path}  ({files})  in {self.seconds:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation
def resolve_device(device: str | None) -> str:
    """The given torch device, or cuda when available; a CUDA device that is absent is an
    input error (e.g. a config.yaml from a GPU node reused on a laptop)."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but no CUDA device is available; "
                         "pass --device cpu")
    return str(device)


def check_inputs(cfg: TrainConfig, need_model: bool = True) -> None:
    """Check paths, task, model and options before any expensive work; errors say what to do."""
    from balnmp_mil.labels import TASKS
    from balnmp_mil.models import list_models

    if not Path(cfg.features).exists():
        raise InputError(f"feature store {cfg.features} does not exist; run extract-features first")
    for what, path in (("labels file", cfg.labels), ("clinical table", cfg.clinical),
                       ("splits file", cfg.splits)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist")
    if cfg.task is not None and cfg.task not in TASKS:
        raise InputError(f"unknown task {cfg.task!r}; choose one of {', '.join(TASKS)}")
    if need_model and not cfg.clinical_only and cfg.model not in list_models():
        raise InputError(f"unknown model {cfg.model!r}; choose one of {', '.join(list_models())}")
    if cfg.clinical_only and cfg.clinical is None:
        raise InputError("--clinical-only needs --clinical TABLE (the clinical data)")
    if cfg.clinical_variant not in ("full", "paper5"):
        raise InputError(f"unknown clinical variant {cfg.clinical_variant!r}; use full or paper5")
    if cfg.on_missing not in ("error", "warn"):
        raise InputError(f"unknown --on-missing {cfg.on_missing!r}; use error or warn")
    if cfg.bag_level not in ("patient", "slide"):
        raise InputError(f"unknown bag level {cfg.bag_level!r}; use patient or slide")
    from balnmp_mil.train import FitConfig

    try:
        FitConfig(**fit_options(cfg))
    except (TypeError, ValueError) as exc:
        raise InputError(f"bad training option: {exc}") from exc
    if not (0 <= cfg.val < 1 and 0 < cfg.test < 1 and cfg.val + cfg.test < 1):
        raise InputError(
            f"--val {cfg.val} and --test {cfg.test} must be fractions with val + test < 1"
        )


def fit_options(cfg: TrainConfig) -> dict[str, Any]:
    """The FitConfig fields this run sets (None keeps FitConfig's default)."""
    return {k: getattr(cfg, k) for k in FIT_OPTIONS if getattr(cfg, k) is not None}


def resolved_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved: absolute paths and the FitConfig defaults written out."""
    from balnmp_mil.train import FitConfig

    data = cfg.to_dict()
    for key in ("features", "labels", "clinical", "splits"):
        if data[key] is not None:
            data[key] = str(Path(data[key]).resolve())
    defaults = FitConfig()
    for key in FIT_OPTIONS:
        if data[key] is None:
            data[key] = getattr(defaults, key)
    return data


# --------------------------------------------------------------------------- building blocks
def load_training_cohort(cfg: TrainConfig, device: str) -> Any:
    """`load_cohort` with the run's labels, clinical table, task and bag level.

    Label-table errors are prefixed with the labels file, so the message names it.
    """
    from balnmp_mil.cohort import load_cohort
    from balnmp_mil.labels import LabelError

    try:
        return load_cohort(
            cfg.features, cfg.labels, clinical=cfg.clinical, task=cfg.task,
            bag_level=cfg.bag_level, device=device, on_missing=cfg.on_missing,
        )
    except LabelError as exc:
        raise InputError(f"labels file {cfg.labels}: {exc}") from exc
    except ValueError as exc:
        text = str(exc).replace("pass on_missing='warn'", "pass --on-missing warn")
        raise InputError(text) from exc


def labels_numpy(cohort: Any) -> np.ndarray:
    return cohort.labels.detach().cpu().numpy().astype(np.int64)


def make_split(cfg: TrainConfig, cohort: Any) -> Any:
    """The saved split (`--splits`) checked against the cohort, or a new stratified one."""
    from balnmp_mil.splits import Split, load_splits, stratified_split

    if cfg.splits is None:
        return stratified_split(
            cohort.patient_ids, labels_numpy(cohort), val=cfg.val, test=cfg.test, seed=cfg.seed
        )
    loaded = load_splits(cfg.splits)
    split = loaded if isinstance(loaded, Split) else loaded[0]
    known = set(cohort.patient_ids)
    for part in SPLIT_NAMES:
        missing = [p for p in getattr(split, part) if p not in known]
        if missing:
            raise InputError(
                f"splits file {cfg.splits}: patient {missing[0]} ({part} split) is not in the "
                f"cohort built from {cfg.features} and {cfg.labels}"
            )
    return split


def split_indices(cohort: Any, split: Any) -> dict[str, np.ndarray]:
    """Patient indices of each non-empty part of the split, in the split's order."""
    return {part: rows for part, rows in split.indices(cohort.patient_ids).items() if len(rows)}


def attach_clinical(cfg: TrainConfig, cohort: Any, train_idx: np.ndarray) -> tuple[Any, Any]:
    """Fit the clinical encoder on the training patients only; return (encoder, cohort)."""
    if cfg.clinical is None:
        return None, cohort
    from balnmp_mil.clinical import ClinicalEncoder, ClinicalError

    table = cohort.clinical_table
    train_ids = [cohort.patient_ids[i] for i in train_idx]
    try:
        encoder = ClinicalEncoder(variant=cfg.clinical_variant, impute=cfg.clinical_impute)
        encoder.fit(table.loc[train_ids])
        matrix = encoder.transform(table.loc[list(cohort.patient_ids)])
    except ClinicalError as exc:
        raise InputError(f"clinical table {cfg.clinical}: {exc}") from exc
    return encoder, cohort.with_clinical(matrix)


def positive_scores(probs: np.ndarray) -> np.ndarray:
    """Binary: the positive-class column; multi-class: the (n, C) probabilities."""
    return probs[:, 1] if probs.ndim == 2 and probs.shape[1] == 2 else probs


def evaluate_parts(
    y: dict[str, np.ndarray], probs: dict[str, np.ndarray], class_names: list[str],
    cfg: TrainConfig, youden_from: str | None = "val",
) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """Reports per split at 0.5 and (binary) at the Youden threshold of `youden_from`."""
    from balnmp_mil.metrics import evaluate, youden_threshold

    def ev(part: str, threshold: float) -> Any:
        return evaluate(y[part], positive_scores(probs[part]), threshold=threshold, ci=cfg.ci,
                        n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, class_names=class_names)

    reports = {part: ev(part, 0.5) for part in y}
    metrics: dict[str, Any] = {part: rep.to_dict() for part, rep in reports.items()}
    threshold = None
    source = youden_from if youden_from in y else ("train" if "train" in y else None)
    binary = len(class_names) == 2
    if binary and source is not None and len(np.unique(y[source])) == 2:
        threshold = float(youden_threshold(y[source], positive_scores(probs[source])))
        for part in y:
            metrics[part]["at_youden"] = ev(part, threshold).to_dict()
    metrics["youden_threshold"] = threshold
    metrics["youden_split"] = source if threshold is not None else None
    return reports, metrics, threshold


def predictions_frame(
    cohort: Any, idx: dict[str, np.ndarray], probs: dict[str, np.ndarray], class_names: list[str]
) -> pd.DataFrame:
    """predictions.csv rows: patient_id, split, label, prob_<class>..."""
    labels = labels_numpy(cohort)
    frames = []
    for part, rows in idx.items():
        frame = pd.DataFrame({
            "patient_id": [cohort.patient_ids[i] for i in rows],
            "split": part,
            "label": labels[rows],
        })
        for c, name in enumerate(class_names):
            frame[f"prob_{name}"] = probs[part][:, c]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def roc_curves(y: dict[str, np.ndarray], probs: dict[str, np.ndarray],
               class_names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Curves for plot_roc: one per split (binary) or one-vs-rest per class on test."""
    if len(class_names) == 2:
        return {f"{part} (n={len(y[part])})": (y[part], probs[part][:, 1]) for part in y
                if len(np.unique(y[part])) == 2}
    part = "test" if "test" in y else next(iter(y))
    return {f"{name} vs rest ({part})": ((y[part] == c).astype(int), probs[part][:, c])
            for c, name in enumerate(class_names) if 0 < (y[part] == c).sum() < len(y[part])}


# --------------------------------------------------------------------------- the run
def fit_and_predict(
    cfg: TrainConfig, cohort: Any, idx: dict[str, np.ndarray], device: str
) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """Build the configured model, fit on train (early stopping on val), predict every part."""
    from balnmp_mil.models import build_model
    from balnmp_mil.train import fit, predict

    clinical_dim = 0 if cohort.clinical is None else int(cohort.clinical.shape[1])
    model = build_model(cfg.model, in_dim=cohort.feature_dim, n_classes=cohort.n_classes,
                        clinical_dim=clinical_dim, seed=cfg.seed, **cfg.model_kwargs)
    val = cohort.subset(idx["val"]) if "val" in idx else None
    result = fit(model, cohort.subset(idx["train"]), val=val, seed=cfg.seed, device=device,
                 progress=sys.stderr.isatty(), **fit_options(cfg))
    probs = {part: np.asarray(predict(result.model, cohort.subset(rows)))
             for part, rows in idx.items()}
    return result.model, result, probs


def train_run(cfg: TrainConfig, out: str | Path, overwrite: bool = False) -> RunResult:
    """Train, evaluate and write one run directory atomically (see module docstring)."""
    from balnmp_mil.plots import plot_roc, plot_training_curves
    from balnmp_mil.splits import save_splits

    start = time.perf_counter()
    out = rundir.check_target(out, overwrite, cfg.inputs())
    check_inputs(cfg)
    device = resolve_device(cfg.device)
    cohort = load_training_cohort(cfg, device)
    split = make_split(cfg, cohort)
    idx = split_indices(cohort, split)
    class_names = list(cohort.class_names)
    saved = resolved_config(cfg)
    saved["meta"] = {"balnmp_version": __version__, "device": device, "out": str(out),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "n_patients": len(cohort), "n_bags": int(cohort.n_bags)}
    with rundir.staged_run(out, overwrite, cfg.inputs()) as tmp:
        rundir.write_config(tmp / rundir.CONFIG, saved)
        save_splits(split, tmp / rundir.SPLITS)
        encoder, cohort = attach_clinical(cfg, cohort, idx["train"])
        if encoder is not None:
            rundir.write_json(tmp / rundir.CLINICAL_ENCODER, encoder.to_dict())
        if cfg.clinical_only:
            from balnmp_mil.workflow_cv import clinical_only_fit

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
                       best_epoch=best_epoch)
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
    return RunResult(Path(out), cfg, metrics, reports, threshold, best_epoch,
                     time.perf_counter() - start)

"""The steps `train` and `cv` share: check the inputs, load the cohort (and check it against
the run whose `--config` it reuses, and that its classes can be split), split it, attach
clinical data, fit and predict, evaluate each part, and the clinical-only logistic regression
(the paper's third row).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from balnmp_mil.errors import InputError, MILWarning, SplitError
from balnmp_mil.workflow.compat import check_store, config_record
from balnmp_mil.workflow.config import SPLIT_NAMES, TrainConfig, fit_options
from balnmp_mil.workflow.diagnose import check_store_path

if TYPE_CHECKING:
    from balnmp_mil.data.clinical import ClinicalEncoder
    from balnmp_mil.data.cohort import Cohort
    from balnmp_mil.data.splits import Split
    from balnmp_mil.evaluation.metrics import Report
    from balnmp_mil.models import MILModel
    from balnmp_mil.training.fit import FitResult

CLINICAL_LOGREG = "clinical_logreg"


@dataclass
class ClinicalLogReg:
    """A fitted logistic regression kept as plain numbers (saved as model.json, no pickle)."""

    coef: np.ndarray  # (1, K) binary or (C, K)
    intercept: np.ndarray
    classes: list[int]
    n_classes: int

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities, same as scikit-learn's for these parameters."""
        z = np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            part = np.stack([1.0 - p1, p1], axis=1)
        else:
            z = z - z.max(axis=1, keepdims=True)
            part = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out = np.zeros((len(part), self.n_classes))
        out[:, self.classes] = part
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": CLINICAL_LOGREG, "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "classes": list(self.classes),
                "n_classes": self.n_classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClinicalLogReg:
        return cls(np.asarray(d["coef"], dtype=np.float64),
                   np.asarray(d["intercept"], dtype=np.float64),
                   [int(c) for c in d["classes"]], int(d["n_classes"]))


def clinical_only_fit(
    cohort: Cohort, idx: dict[str, np.ndarray], cfg: TrainConfig
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[dict[str, Any]], None]:
    """Fit EVAL's clinical baseline on train; (model.json dict, probs per part, history, None)."""
    from balnmp_mil.training.baseline import fit_clinical_baseline

    if cohort.clinical is None:
        raise InputError("the clinical-only model needs --clinical TABLE")
    x = cohort.clinical.detach().cpu().numpy()
    y = labels_numpy(cohort)
    fitted = fit_clinical_baseline(x[idx["train"]], y[idx["train"]], seed=cfg.seed)
    model = ClinicalLogReg(np.asarray(fitted.coef_), np.asarray(fitted.intercept_),
                           [int(c) for c in fitted.classes_], cohort.n_classes)
    probs = {part: model.predict_proba(x[rows]) for part, rows in idx.items()}
    return model.to_dict(), probs, [], None


def check_inputs(cfg: TrainConfig) -> None:
    """Check the paths a run reads before any expensive work (the options checked themselves
    when the config was made); errors say what to do."""
    check_store_path(cfg.features)
    for what, path in (("labels file", cfg.labels), ("clinical table", cfg.clinical),
                       ("splits file", cfg.splits), ("bags file", cfg.bags)):
        if path is not None and Path(path).is_dir():
            raise InputError(f"{what} {path} is a folder; pass the file")
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist")


def load_training_cohort(cfg: TrainConfig, device: str, config: str | Path | None = None
                         ) -> Cohort:
    """`load_cohort` with the run's labels, clinical table, task, positive class, bag level
    and store policy, re-expressed as the fixed bags of `--bags` when given. `config`: the
    `--config` file `cfg` came from; when it is a run's, the bags must match the store that
    run was trained on (`--allow-store-mismatch` to go on)."""
    from balnmp_mil.data.cohort import load_cohort
    from balnmp_mil.data.fixed_bags import fixed_bag_cohort, read_fixed_bags

    cohort = load_cohort(
        cfg.features, cfg.labels, clinical=cfg.clinical, task=cfg.task,
        bag_level=cfg.bag_level, device=device, on_missing=cfg.on_missing,
        allow_mixed=cfg.allow_mixed, positive=cfg.positive,
    )
    if config is not None:
        recorded, is_run = config_record(config)
        if is_run:
            check_store(cohort.meta["store_record"], recorded, store=str(cfg.features),
                        run=f"the run of --config {config}", allow=cfg.allow_store_mismatch,
                        applying=False)
    if cfg.bags is not None:
        cohort = fixed_bag_cohort(cohort, read_fixed_bags(cfg.bags), task=cfg.task,
                                  on_missing=cfg.on_missing)
    return cohort


def bags_per_step(cfg: TrainConfig, cohort: Cohort, train_rows: np.ndarray) -> int | None:
    """The bags per optimiser step `fit` will use on the training patients `train_rows`
    (`--bags-per-step auto` resolved for their bags); None for the clinical-only model."""
    from balnmp_mil.training.config import resolve_bags_per_step

    if cfg.clinical_only:
        return None
    n_bags = int(cohort.bag_selection(train_rows)[1].numel())
    return resolve_bags_per_step(cfg.bags_per_step, n_bags)


def labels_numpy(cohort: Cohort) -> np.ndarray:
    return cohort.labels.detach().cpu().numpy().astype(np.int64)


def make_split(cfg: TrainConfig, cohort: Cohort) -> Split:
    """A new stratified split (the cohort checked to have enough patients of each class), or
    the saved one (`--splits`) checked against the cohort; parts without a class warned of."""
    from balnmp_mil.data.splits import check_classes, check_split_sizes, stratified_split

    y = labels_numpy(cohort)
    with labels_named(cfg):
        check_classes(y, cohort.class_names)
        if cfg.splits is None and cfg.bags is None:
            check_split_sizes(y, cohort.class_names)
    if cfg.splits is None and cfg.bags is not None:
        split = _bags_split(cfg, cohort)
    elif cfg.splits is None:
        split = stratified_split(cohort.patient_ids, y, val=cfg.val, test=cfg.test,
                                 seed=cfg.seed)
    else:
        split = _saved_split(cfg, cohort)
        if cfg.bags is not None:
            _bags_split(cfg, cohort, split)
    _check_train_classes(cohort, split, "the train part" if cfg.splits is None
                         else f"the train part of splits file {cfg.splits}")
    warn_missing_classes(cohort, split)
    return split


@contextlib.contextmanager
def labels_named(cfg: TrainConfig) -> Iterator[None]:
    """Errors about the cohort's classes name the labels file they come from."""
    try:
        yield
    except SplitError as exc:
        raise SplitError(f"labels file {cfg.labels}: {exc}") from exc


def _check_train_classes(cohort: Cohort, split: Split, where: str) -> None:
    """Refuse a training part without a class: the model could not learn it."""
    y = labels_numpy(cohort)
    rows = split.indices(cohort.patient_ids)["train"]
    absent = [n for c, n in enumerate(cohort.class_names) if not (y[rows] == c).any()]
    if absent:
        raise SplitError(f"{where} has no patient of class {', '.join(absent)}; the model "
                         "could not learn it: label more patients, or pass another --splits")


def _bags_split(cfg: TrainConfig, cohort: Cohort, given: Split | None = None) -> Split:
    """The split parts of the `--bags` file (its patients in the cohort); with `given` (the
    `--splits` file's), check that each patient is in the same part of both."""
    from balnmp_mil.data.splits import Split

    parts = cohort.meta["fixed_bags"]["parts"]
    known = set(cohort.patient_ids)
    split = Split(**{k: [p for p in v if p in known] for k, v in parts.items()})
    if given is not None:
        part_of = {p: k for k, v in split.parts().items() for p in v}
        for name, ids in given.parts().items():
            wrong = [p for p in ids if part_of.get(p, name) != name]
            if wrong:
                raise SplitError(
                    f"patient {wrong[0]} is in the {name} part of splits file {cfg.splits} "
                    f"but in the {part_of[wrong[0]]} part of bags file {cfg.bags} "
                    f"({len(wrong)} such patients in {name}); pass the splits file written "
                    "beside the bags file (`balnmp-mil paper splits`: DIR/<task>.json), or "
                    "leave --splits out to use the bags file's parts")
    return split


def _saved_split(cfg: TrainConfig, cohort: Cohort) -> Split:
    from balnmp_mil.data.splits import Split, load_splits

    loaded = load_splits(cfg.splits)  # type: ignore[arg-type]  # set: cfg.splits is not None
    split = loaded if isinstance(loaded, Split) else loaded[0]
    if not isinstance(loaded, Split):
        warnings.warn(f"splits file {cfg.splits} holds {len(loaded)} folds (a cv run's); "
                      "train uses fold 0 (its train/val/test parts)", MILWarning, stacklevel=3)
    known = set(cohort.patient_ids)
    for part in SPLIT_NAMES:
        missing = [p for p in getattr(split, part) if p not in known]
        if missing:
            raise InputError(
                f"splits file {cfg.splits}: patient {missing[0]} ({part} split) is not in the "
                f"cohort built from {cfg.features} and {cfg.labels}"
            )
    if not split.train:
        raise SplitError(f"splits file {cfg.splits} has no training patients; pass the "
                         "splits.json of a run (or leave --splits out)")
    used = set(split.train) | set(split.val) | set(split.test)
    left = [p for p in cohort.patient_ids if p not in used]
    if left:
        warnings.warn(f"{len(left)} patients of the cohort are in no part of splits file "
                      f"{cfg.splits} and are left out (e.g. {', '.join(left[:5])})",
                      MILWarning, stacklevel=3)
    return split


def warn_missing_classes(cohort: Cohort, split: Split) -> None:
    """Warn, with the numbers, of a val or test part that lacks a class (its AUC is undefined;
    without val the Youden threshold falls back to train)."""
    from balnmp_mil.data.splits import class_counts

    y = labels_numpy(cohort)
    for part, rows in split.indices(cohort.patient_ids).items():
        if part == "train" or not len(rows):
            continue
        counts = class_counts(y[rows], cohort.class_names)
        absent = [n for n, k in counts.items() if not k]
        if not absent:
            continue
        youden = (" and the Youden threshold is chosen on train"
                  if part == "val" and len(counts) == 2 else "")
        shown = ", ".join(f"{n} {k}" for n, k in counts.items())
        warnings.warn(f"the {part} part has no patient of class {', '.join(absent)} "
                      f"({len(rows)} patients: {shown}); its AUC is undefined{youden}",
                      MILWarning, stacklevel=3)


def positive_class(class_names: list[str]) -> str | None:
    """The positive class of a binary task (always the second), None for more classes."""
    return class_names[1] if len(class_names) == 2 else None


def split_indices(cohort: Cohort, split: Split) -> dict[str, np.ndarray]:
    """Patient indices of each non-empty part of the split, in the split's order."""
    return {part: rows for part, rows in split.indices(cohort.patient_ids).items() if len(rows)}


def attach_clinical(cfg: TrainConfig, cohort: Cohort, train_idx: np.ndarray
                    ) -> tuple[ClinicalEncoder | None, Cohort]:
    """Fit the clinical encoder on the training patients only; return (encoder, cohort)."""
    table = cohort.clinical_table
    if cfg.clinical is None or table is None:
        return None, cohort
    from balnmp_mil.data.clinical import ClinicalEncoder, ClinicalError

    train_ids = [cohort.patient_ids[i] for i in train_idx]
    try:
        encoder = ClinicalEncoder(variant=cfg.clinical_variant, impute=cfg.clinical_impute,
                                  columns=cfg.clinical_columns)
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
) -> tuple[dict[str, Report], dict[str, Any], float | None]:
    """Reports per split at 0.5 and (binary) at the Youden threshold of `youden_from`.

    Binary splits with both classes also get `at_roc_cutoff`: the metrics at the Youden
    cut-off of that split's own ROC, the operating point of the paper's Table 2.
    """
    from balnmp_mil.evaluation.metrics import evaluate, youden_threshold

    def ev(part: str, threshold: float | str, source: str | None = None) -> Report:
        return evaluate(y[part], positive_scores(probs[part]), threshold=threshold, ci=cfg.ci,
                        n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, class_names=class_names,
                        threshold_source=source)

    reports = {part: ev(part, 0.5) for part in y}
    metrics: dict[str, Any] = {part: rep.to_dict() for part, rep in reports.items()}
    threshold = None
    source = youden_from if youden_from in y else ("train" if "train" in y else None)
    binary = len(class_names) == 2
    if binary and source is not None and len(np.unique(y[source])) == 2:
        threshold = float(youden_threshold(y[source], positive_scores(probs[source])))
        for part in y:
            metrics[part]["at_youden"] = ev(part, threshold, f"youden ({source} ROC)").to_dict()
    for part in y if binary else ():
        if len(np.unique(y[part])) == 2:  # the paper's operating point: each cohort's own ROC
            metrics[part]["at_roc_cutoff"] = ev(part, "youden").to_dict()
    metrics["youden_threshold"] = threshold
    metrics["youden_split"] = source if threshold is not None else None
    return reports, metrics, threshold


def predictions_frame(
    cohort: Cohort, idx: dict[str, np.ndarray], probs: dict[str, np.ndarray], class_names: list[str]
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


def fit_and_predict(
    cfg: TrainConfig, cohort: Cohort, idx: dict[str, np.ndarray], device: str
) -> tuple[MILModel, FitResult, dict[str, np.ndarray]]:
    """Build the configured model, fit on train (early stopping on val), predict every part."""
    from balnmp_mil.models import build_model
    from balnmp_mil.training.fit import fit, predict

    clinical_dim = 0 if cohort.clinical is None else int(cohort.clinical.shape[1])
    model = build_model(cfg.model, in_dim=cohort.feature_dim, n_classes=cohort.n_classes,
                        clinical_dim=clinical_dim, seed=cfg.seed, **cfg.model_kwargs)
    val = cohort.subset(idx["val"]) if "val" in idx else None
    result = fit(model, cohort.subset(idx["train"]), val=val,
                 **{**fit_options(cfg), "device": device})
    probs = {part: predict(result.model, cohort.subset(rows), cfg.merge)
             for part, rows in idx.items()}
    return result.model, result, probs

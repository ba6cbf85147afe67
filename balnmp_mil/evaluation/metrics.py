"""Patient-level evaluation: AUC with a 95 % CI, threshold metrics, subgroups, thresholds.

`evaluate` returns a `Report` (JSON-able through `to_dict`) with the numbers of the BALNMP
paper's tables: AUC [95 % CI], accuracy, sensitivity, specificity, PPV, NPV and F1. The AUC CI
is a seeded stratified bootstrap (default), DeLong's, or the paper's exact binomial one; the
binary threshold metrics carry the paper's intervals (`intervals.count_cis`). Multi-class scores give the macro
one-vs-rest AUC, per-class AUCs and macro-averaged threshold metrics (prediction = argmax).
Undefined quantities (an AUC on one class, 0/0 ratios) are NaN, written as null in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypedDict

import numpy as np

from balnmp_cache._registry import Registry
from balnmp_mil.errors import EvaluationError
from balnmp_mil.evaluation.bootstrap import bootstrap_aucs, percentile_ci
from balnmp_mil.evaluation.delong import (
    DeLongResult,
    auc_score,
    delong_ci,
    delong_test,
    pairwise_delong,
)
from balnmp_mil.evaluation.intervals import binomial_auc_ci, clopper_pearson, count_cis

__all__ = [
    "Report", "evaluate", "youden_threshold", "threshold_metrics", "subgroup_reports",
    "clinical_subgroups", "delong_test", "pairwise_delong", "DeLongResult", "auc_score",
    "CI_METHODS", "binomial_auc_ci",
]

NAN = float("nan")


def _bootstrap_ci(y: np.ndarray, s: np.ndarray, n_bootstrap: int, seed: int
                  ) -> tuple[tuple[float, float], dict | None]:
    aucs = bootstrap_aucs(y, s, n_bootstrap=n_bootstrap, seed=seed)
    if aucs.ndim == 1:
        return percentile_ci(aucs), None
    per_class = {c: percentile_ci(aucs[:, c]) for c in range(aucs.shape[1])}
    return percentile_ci(np.nanmean(aucs, axis=1)), per_class


def _delong_ci(y: np.ndarray, s: np.ndarray, n_bootstrap: int, seed: int
               ) -> tuple[tuple[float, float], dict | None]:
    if s.ndim == 1:
        return delong_ci(y, s), None
    # DeLong is defined for one binary AUC: per-class one-vs-rest CIs, macro CI by bootstrap.
    per_class = {c: _safe(lambda c=c: delong_ci(y == c, s[:, c]), (NAN, NAN))
                 for c in range(s.shape[1])}
    macro, _ = _bootstrap_ci(y, s, n_bootstrap, seed)
    return macro, per_class


def _binomial_ci(y: np.ndarray, s: np.ndarray, n_bootstrap: int, seed: int
                 ) -> tuple[tuple[float, float], dict | None]:
    """The paper's interval: Clopper–Pearson on AUC × n (macro AUC and each class's AUC)."""
    if s.ndim == 1:
        return binomial_auc_ci(auc_score(y, s), y.size), None
    aucs = {c: (auc_score(y == c, s[:, c]) if 0 < (y == c).sum() < y.size else NAN)
            for c in range(s.shape[1])}
    macro = float(np.nanmean(list(aucs.values())))
    return binomial_auc_ci(macro, y.size), {c: binomial_auc_ci(a, y.size) for c, a in aucs.items()}


CIMethod = Callable[[np.ndarray, np.ndarray, int, int],
                    tuple[tuple[float, float], dict[int, tuple[float, float]] | None]]
CI_METHODS: Registry[CIMethod] = Registry("CI method", "--ci")
CI_METHODS.register("bootstrap", _bootstrap_ci)
CI_METHODS.register("delong", _delong_ci)
CI_METHODS.register("binomial", _binomial_ci)


def _safe(fn: Callable, default):
    try:
        return fn()
    except ValueError:
        return default


def _clean(value):
    """NaN/inf -> None and numpy scalars -> Python, recursively (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Report:
    """Evaluation of one set of patient-level scores (see module docstring)."""

    auc: float
    auc_ci: tuple[float, float]
    accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    threshold: float | None
    n: int
    n_pos: int
    confusion: list[list[int]]
    per_class_auc: dict[str, float] | None
    ci_method: str
    class_names: list[str] | None = None
    per_class_ci: dict[str, tuple[float, float]] | None = None
    n_bootstrap: int | None = None
    seed: int | None = None
    # 95 % intervals of the threshold metrics, as the paper computes them (`intervals`):
    # Clopper–Pearson for ACC/SENS/SPEC, logit for PPV/NPV; multi-class: accuracy only.
    accuracy_ci: tuple[float, float] | None = None
    sensitivity_ci: tuple[float, float] | None = None
    specificity_ci: tuple[float, float] | None = None
    ppv_ci: tuple[float, float] | None = None
    npv_ci: tuple[float, float] | None = None
    # Where `threshold` comes from: "fixed" (given by the caller), "youden (own ROC)" (this
    # cohort's ROC cut-off), or what the caller says (e.g. "youden (val ROC)").
    threshold_source: str | None = None

    def to_dict(self) -> dict:
        """JSON-able dict: NaN becomes None, tuples become lists."""
        return _clean(asdict(self))

    def summary(self) -> str:
        """One line like 'AUC 0.812 [0.741, 0.873]  ACC 0.750 ...' (NaN shown as 'n/a')."""
        def f(v):
            return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"
        lo, hi = self.auc_ci
        return (f"AUC {f(self.auc)} [{f(lo)}, {f(hi)}]  ACC {f(self.accuracy)}  "
                f"SENS {f(self.sensitivity)}  SPEC {f(self.specificity)}  PPV {f(self.ppv)}  "
                f"NPV {f(self.npv)}  F1 {f(self.f1)}  (n={self.n})")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _validate(y_true, scores) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels as int64 (n,), scores as (n,) binary or (n, C) multi-class; returns C."""
    y = _to_numpy(y_true).ravel()
    s = _to_numpy(scores).astype(np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim not in (1, 2) or s.shape[0] != y.size:
        raise EvaluationError(f"scores have shape {s.shape} but there are {y.size} labels; pass "
                              "(n,) positive-class scores or (n, n_classes) probabilities")
    if not np.all(np.isfinite(s)):
        bad = np.flatnonzero(~np.isfinite(s).reshape(s.shape[0], -1).all(axis=1))
        raise EvaluationError(f"scores contain NaN/inf for patients at positions {bad[:10].tolist()}")
    if y.size and not np.all(np.equal(np.mod(y.astype(np.float64), 1), 0)):
        raise EvaluationError("labels must be integer class indices (0, 1, ...)")
    y = y.astype(np.int64)
    n_classes = 2 if s.ndim == 1 else s.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise EvaluationError(f"labels must lie in 0..{n_classes - 1} for scores of shape {s.shape}, "
                              f"got values {sorted(set(y.tolist()))}")
    return y, s, n_classes


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


class ThresholdMetrics(TypedDict):
    """What `threshold_metrics` returns (the ratios are NaN when undefined)."""

    accuracy: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    confusion: list[list[int]]


def threshold_metrics(y_true, scores, threshold: float = 0.5) -> ThresholdMetrics:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1 and the confusion matrix.

    Binary: positive when score >= threshold. Multi-class: prediction = argmax, and
    sensitivity / specificity / PPV / NPV / F1 are macro-averaged one-vs-rest.
    Confusion rows are true classes, columns predicted classes.
    """
    y, s, n_classes = _validate(y_true, scores)
    pred = (s >= threshold).astype(np.int64) if s.ndim == 1 else s.argmax(axis=1)
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    per = []
    for c in [1] if n_classes == 2 else range(n_classes):
        tp = conf[c, c]
        fn = conf[c].sum() - tp
        fp = conf[:, c].sum() - tp
        tn = conf.sum() - tp - fn - fp
        per.append({"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
                    "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
                    "f1": _ratio(2 * tp, 2 * tp + fp + fn)})
    mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    return ThresholdMetrics(accuracy=_ratio(np.trace(conf), conf.sum()),
                            sensitivity=mean["sensitivity"], specificity=mean["specificity"],
                            ppv=mean["ppv"], npv=mean["npv"], f1=mean["f1"],
                            confusion=conf.tolist())


def _threshold_cis(conf: list[list[int]]) -> dict[str, tuple[float, float] | None]:
    """The paper's intervals from a confusion matrix (binary: all five; else accuracy)."""
    c = np.asarray(conf)
    if c.shape == (2, 2):
        (tn, fp), (fn, tp) = c.tolist()
        return dict(count_cis(tp, fp, fn, tn))
    empty: dict[str, tuple[float, float] | None] = dict.fromkeys(
        ("sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci"))
    return {"accuracy_ci": clopper_pearson(int(np.trace(c)), int(c.sum())), **empty}


def _resolve_threshold(y: np.ndarray, s: np.ndarray, threshold: float | str,
                       source: str | None) -> tuple[float, str | None]:
    """(threshold, its source); "youden" is the evaluated cohort's own ROC cut-off."""
    if isinstance(threshold, str):
        if threshold != "youden":
            raise EvaluationError(f"threshold {threshold!r}: give a number or 'youden' (the "
                                  "cut-off of this cohort's own ROC)")
        return youden_threshold(y, s), source or "youden (own ROC)"
    return float(threshold), (source or "fixed") if s.ndim == 1 else None


def evaluate(y_true, scores, threshold: float | str = 0.5, ci: str = "bootstrap",
             n_bootstrap: int = 1000, seed: int = 0,
             class_names: Sequence[str] | None = None,
             threshold_source: str | None = None) -> Report:
    """Evaluate patient-level scores: AUC [95 % CI] and metrics at `threshold`.

    scores: (n,) positive-class probabilities, (n, 2) or (n, C) class probabilities.
    ci: "bootstrap" (seeded, stratified, percentile; identical for the same seed), "delong",
    or "binomial" (the paper's: Clopper–Pearson on AUC × n).
    threshold: a number, or "youden" for the cut-off of these patients' own ROC (binary);
    threshold_source says where a given number comes from (e.g. "youden (val ROC)").
    An AUC on a single class is NaN (so is its CI); threshold metrics are still reported.
    """
    if ci not in CI_METHODS:
        raise EvaluationError(CI_METHODS.unknown(ci))
    if n_bootstrap < 1:
        raise EvaluationError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
    y, s, n_classes = _validate(y_true, scores)
    if y.size == 0:
        raise EvaluationError("evaluate needs at least one patient")
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != n_classes:
        raise EvaluationError(f"{len(names)} class names {names} for {n_classes} classes")
    cut, source = _resolve_threshold(y, s, threshold, threshold_source)
    tm = threshold_metrics(y, s, cut)
    present = np.unique(y)
    auc, auc_ci, per_auc, per_ci = NAN, (NAN, NAN), None, None
    if s.ndim == 1 and present.size == 2:
        auc = auc_score(y, s)
        auc_ci, _ = CI_METHODS.get(ci)(y, s, n_bootstrap, seed)
    elif s.ndim == 2:
        label = (lambda c: names[c]) if names else str
        per_auc = {label(c): (auc_score(y == c, s[:, c]) if 0 < (y == c).sum() < y.size
                              else NAN) for c in range(n_classes)}
        if present.size >= 2:
            auc = float(np.nanmean(list(per_auc.values())))
            auc_ci, ci_c = CI_METHODS.get(ci)(y, s, n_bootstrap, seed)
            per_ci = ({label(c): v for c, v in ci_c.items()} if ci_c is not None else None)
    used = "bootstrap (macro; DeLong per class)" if (ci == "delong" and s.ndim == 2) else ci
    return Report(
        auc=float(auc), auc_ci=(float(auc_ci[0]), float(auc_ci[1])),
        accuracy=tm["accuracy"], sensitivity=tm["sensitivity"], specificity=tm["specificity"],
        ppv=tm["ppv"], npv=tm["npv"], f1=tm["f1"],
        threshold=cut if s.ndim == 1 else None,
        n=int(y.size), n_pos=int((y != 0).sum()), confusion=tm["confusion"],
        per_class_auc=per_auc, ci_method=used, class_names=names, per_class_ci=per_ci,
        n_bootstrap=int(n_bootstrap) if "bootstrap" in used else None, seed=int(seed),
        threshold_source=source, **_threshold_cis(tm["confusion"]),
    )


def youden_threshold(y_true, scores) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (rule: score >= t).

    Choose it on the validation split and pass it to `evaluate` on the test split. The
    returned value is one of the observed scores; among equal J the highest threshold (the
    more specific rule) wins. Needs binary labels with both classes present.
    """
    y, s, n_classes = _validate(y_true, scores)
    if s.ndim != 1:
        raise EvaluationError("youden_threshold needs binary scores ((n,) or (n, 2)); got "
                              f"{n_classes} classes")
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise EvaluationError(f"youden_threshold needs both classes; got {m} positive and {n} "
                              "negative patients (is the validation split too small?)")
    order = np.argsort(-s, kind="mergesort")
    ss, pp = s[order], pos[order]
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])  # last index of each tie group
    tpr = np.cumsum(pp)[last] / m
    fpr = np.cumsum(~pp)[last] / n
    j = tpr - fpr
    return float(ss[last][int(np.argmax(j))])  # argmax takes the first = highest threshold


def subgroup_reports(y_true, scores, groups: Mapping[str, np.ndarray], **evaluate_kwargs
                     ) -> dict[str, Report | None]:
    """`evaluate` on each subgroup (boolean mask over the patients).

    A group with one class gets AUC NaN (null in JSON) but its threshold metrics; an empty
    group maps to None. Keyword arguments go to `evaluate` (threshold, ci, seed, ...).
    """
    y, s, _ = _validate(y_true, scores)
    out: dict[str, Report | None] = {}
    for name, mask in groups.items():
        m = _to_numpy(mask).astype(bool).ravel()
        if m.size != y.size:
            raise EvaluationError(f"subgroup {name!r} mask has {m.size} entries for {y.size} patients")
        out[name] = evaluate(y[m], s[m], **evaluate_kwargs) if m.any() else None
    return out


def clinical_subgroups(table, age_cutoff: float = 50.0) -> dict[str, np.ndarray]:
    """Masks for the paper's subgroups from a clinical table (one row per patient, in order).

    Age <= cutoff / > cutoff and ER, PR, HER2 positive / negative, for whichever of these
    columns the table has (found like ClinicalEncoder does). Missing values fall in no group.
    """
    from balnmp_mil.data.clinical_fields import parse_status, resolve_columns

    cols = resolve_columns(table, required=False)
    groups: dict[str, np.ndarray] = {}
    if "age" in cols:
        import pandas as pd

        age = pd.to_numeric(table[cols["age"]], errors="coerce").to_numpy(dtype=float)
        groups[f"age <= {age_cutoff:g}"] = age <= age_cutoff
        groups[f"age > {age_cutoff:g}"] = age > age_cutoff
    for key in ("er", "pr", "her2"):
        if key in cols:
            status = np.array([parse_status(v) for v in table[cols[key]]], dtype=object)
            groups[f"{key.upper()}+"] = status == 1
            groups[f"{key.upper()}-"] = status == 0
    return groups

"""Markdown reports of a run, with tables laid out like Table 2 of Xu et al. 2021.

Rows are splits (or models), columns AUC [95 % CI], ACC, SENS, SPEC, PPV, NPV, F1; the
cross-validation table shows mean ± sd over folds. Inputs are `metrics.Report` objects or
their `to_dict()` form (so a saved `metrics.json` can be re-rendered without the model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from balnmp_mil.evaluation.metrics import Report

    ReportLike = Report | Mapping[str, Any]  # a Report or its to_dict() (metrics.json)

# (column header, Report field); order is the paper's.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("ACC", "accuracy"),
    ("SENS", "sensitivity"),
    ("SPEC", "specificity"),
    ("PPV", "ppv"),
    ("NPV", "npv"),
    ("F1", "f1"),
)


def _get(report: ReportLike | None, key: str) -> Any:
    if isinstance(report, Mapping):
        return report.get(key)
    return getattr(report, key, None)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with fixed digits; missing or NaN values show as an em dash."""
    if value is None:
        return "—"
    value = float(value)
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_auc(report: ReportLike) -> str:
    """`0.812 [0.701, 0.905]`: AUC with its 95 % confidence interval."""
    auc, ci = _get(report, "auc"), _get(report, "auc_ci")
    if ci is None or len(ci) != 2:
        return fmt(auc)
    return f"{fmt(auc)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt_ci(report: ReportLike, key: str) -> str:
    """`0.750 [0.690, 0.803]`: a threshold metric with its 95 % CI, if the report has one."""
    ci = _get(report, f"{key}_ci")
    value = fmt(_get(report, key))
    return value if not ci or len(ci) != 2 else f"{value} [{fmt(ci[0])}, {fmt(ci[1])}]"


def metrics_table(reports: Mapping[str, ReportLike], first: str = "Split",
                  cis: bool = False) -> str:
    """One row per entry (split or model): n, AUC [95 % CI], ACC, SENS, SPEC, PPV, NPV, F1.

    cis=True adds the 95 % CIs of ACC, SENS, SPEC, PPV and NPV (`Report.accuracy_ci`, ...).
    """
    with_ci = {key for _, key in COLUMNS if cis and key != "f1"}
    header = [first, "n (pos)", "AUC [95% CI]",
              *(f"{name} [95% CI]" if key in with_ci else name for name, key in COLUMNS)]
    rows = []
    for label, rep in reports.items():
        n, n_pos = _get(rep, "n"), _get(rep, "n_pos")
        count = "—" if n is None else (f"{n} ({n_pos})" if n_pos is not None else f"{n}")
        rows.append([label, count, fmt_auc(rep),
                     *(fmt_ci(rep, key) if key in with_ci else fmt(_get(rep, key))
                       for _, key in COLUMNS)])
    return _markdown(header, rows)


def confusion_table(confusion: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Confusion matrix, rows = true class, columns = predicted class."""
    header = ["true \\ predicted", *class_names]
    rows = [[class_names[i], *(str(int(v)) for v in row)] for i, row in enumerate(confusion)]
    return _markdown(header, rows)


def mean_sd(values: Sequence[float | None]) -> str:
    """`0.812 ± 0.034` over folds (sample sd; NaN folds ignored, count shown if any)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return "—"
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return f"{arr.mean():.3f} ± {sd:.3f}"


def cv_table(folds: Sequence[Mapping[str, Any]], group_key: str = "setting") -> str:
    """Mean ± sd per setting over fold rows (each row: setting, auc, accuracy, ...)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in folds:
        groups.setdefault(str(row[group_key]), []).append(row)
    header = ["Setting", "folds", "AUC", *(name for name, _ in COLUMNS)]
    rows = []
    for name, items in groups.items():
        cells = [mean_sd([r.get(key) for r in items]) for key in ("auc", *(k for _, k in COLUMNS))]
        rows.append([name, str(len(items)), *cells])
    return _markdown(header, rows)


def train_report(
    metrics: Mapping[str, Any], config: Mapping[str, Any], splits: Sequence[str] = ("train", "val", "test")
) -> str:
    """The text of a training run's `report.md`."""
    present = [s for s in splits if s in metrics]
    names = list(metrics.get("class_names") or [])
    parts = [
        f"# balnmp-mil run: {metrics.get('model') or config.get('model')} on "
        f"{config.get('task') or 'label'}\n",
        f"Features: `{config.get('features')}`  \nLabels: `{config.get('labels')}`  \n"
        f"Clinical: `{config.get('clinical') or 'none'}`"
        + (f" ({config.get('clinical_variant')})" if config.get("clinical") else "")
        + f"  \nClasses: {', '.join(names)}{_positive(names)}  \nSeed: {config.get('seed')}\n",
        "## Threshold 0.5\n" if len(names) <= 2 else "## Predicted class = argmax\n",
        metrics_table({s: metrics[s] for s in present}, cis=True),
    ]
    youden = {s: metrics[s]["at_youden"] for s in present if metrics[s].get("at_youden")}
    if youden:
        parts += [
            f"\n## Youden threshold chosen on {metrics.get('youden_split') or 'val'} "
            f"({fmt(metrics.get('youden_threshold'))})\n",
            metrics_table(youden, cis=True),
        ]
    own = {f"{s} (cut-off {fmt(metrics[s]['at_roc_cutoff'].get('threshold'))})":
           metrics[s]["at_roc_cutoff"] for s in present if metrics[s].get("at_roc_cutoff")}
    if own:
        parts += ["\n## ROC cut-off of each split's own ROC (Youden; the paper's Table 2)\n",
                  metrics_table(own, cis=True)]
    test = metrics.get("test")
    if test and _get(test, "confusion") and names:
        parts += ["\n## Confusion matrix (test, threshold 0.5)\n", confusion_table(test["confusion"], names)]
    ci = _get(test, "ci_method") if test else None
    if len(names) > 2:
        how = ("AUC is the macro one-vs-rest AUC; SENS, SPEC, PPV, NPV and F1 are macro-averaged "
               "one-vs-rest.")
    else:
        how = f"Binary metrics count `{names[-1] if names else 1}` as positive."
    parts.append(f"\nAUC 95% CI: {ci or 'bootstrap'}. {how} Other 95% CIs: Clopper–Pearson "
                 "(ACC, SENS, SPEC), logit (PPV, NPV). "
                 "Files: predictions.csv, metrics.json, roc.png, history.csv.\n")
    return "\n".join(parts)


def _positive(names: Sequence[str]) -> str:
    """' (positive class: N+)' for two classes; nothing for more."""
    return f" (positive class: {names[1]})" if len(names) == 2 else ""


def cv_report(folds: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
              class_names: Sequence[str] = ()) -> str:
    """The text of a cross-validation run's `report.md` (mean ± sd plus per-fold rows)."""
    per_fold = {f"{r['setting']} · fold {r['fold']}": r for r in folds}
    classes = (f"Classes: {', '.join(class_names)}{_positive(class_names)}  \n"
               if class_names else "")
    return "\n".join(
        [
            f"# balnmp-mil cross-validation: {config.get('folds')} folds, task "
            f"{config.get('task') or 'label'}\n",
            f"Features: `{config.get('features')}`  \nLabels: `{config.get('labels')}`  \n"
            f"Clinical: `{config.get('clinical') or 'none'}`  \n{classes}"
            f"Seed: {config.get('seed')}\n",
            "## Test AUC and metrics over folds (mean ± sd, threshold 0.5)\n",
            cv_table(folds),
            "\n## Per fold (test split)\n",
            metrics_table(per_fold, first="Setting · fold", cis=True),
            "\nFiles: cv.csv (one row per fold and setting), predictions.csv, roc.png.\n",
        ]
    )


def write_text(path: str | Path, text: str) -> Path:
    Path(path).write_text(text)
    return Path(path)

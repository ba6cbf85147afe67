"""report.md tables: the paper's Table 2 columns, AUC [95 % CI], mean ± sd over folds."""

from __future__ import annotations

import numpy as np

from balnmp_mil.evaluation import report
from balnmp_mil.evaluation.metrics import evaluate


def _report(seed: int):
    rng = np.random.default_rng(seed)
    y = np.array([0] * 10 + [1] * 10)
    return evaluate(y, y * 0.4 + rng.uniform(size=20) * 0.8, n_bootstrap=100, seed=seed)


def test_metrics_table_has_paper_columns_and_values():
    reps = {"val": _report(0), "test": _report(1)}
    text = report.metrics_table(reps)
    lines = text.strip().splitlines()
    assert lines[0] == "| Split | n (pos) | AUC [95% CI] | ACC | SENS | SPEC | PPV | NPV | F1 |"
    test = reps["test"]
    expected = (f"| test | 20 (10) | {test.auc:.3f} [{test.auc_ci[0]:.3f}, {test.auc_ci[1]:.3f}]"
                f" | {test.accuracy:.3f} | {test.sensitivity:.3f} | {test.specificity:.3f} | "
                f"{test.ppv:.3f} | {test.npv:.3f} | {test.f1:.3f} |")
    assert lines[3] == expected
    # the to_dict form (metrics.json) renders identically
    assert report.metrics_table({k: r.to_dict() for k, r in reps.items()}) == text


def test_undefined_values_show_a_dash():
    assert report.fmt(None) == "—"
    assert report.fmt(float("nan")) == "—"
    assert report.fmt_auc({"auc": None, "auc_ci": [None, None]}) == "— [—, —]"


def test_cv_table_mean_and_sd():
    folds = [{"setting": "abmil · image", "auc": a, "accuracy": 0.5} for a in (0.7, 0.8, 0.9)]
    folds += [{"setting": "clinical", "auc": 0.6, "accuracy": float("nan")}]
    text = report.cv_table(folds)
    assert "| abmil · image | 3 | 0.800 ± 0.100 | 0.500 ± 0.000 |" in text
    assert "| clinical | 1 | 0.600 ± 0.000 | — |" in text


def test_train_report_sections():
    rep = _report(2).to_dict()
    metrics = {"train": dict(rep), "val": dict(rep), "test": dict(rep, at_youden=rep),
               "youden_threshold": 0.42, "class_names": ["N0", "N+"]}
    text = report.train_report(metrics, {"model": "abmil", "task": "n0_vs_n+", "seed": 3})
    assert text.startswith("# balnmp-mil run: abmil on n0_vs_n+")
    assert "## Youden threshold chosen on val (0.420)" in text
    assert "| true \\ predicted | N0 | N+ |" in text
    assert "count `N+` as positive" in text


def test_confusion_table():
    text = report.confusion_table([[3, 1], [0, 4]], ["N0", "N+"])
    assert "| N0 | 3 | 1 |" in text and "| N+ | 0 | 4 |" in text


def test_metrics_table_with_cis_and_the_own_roc_cutoff_section():
    rep = _report(3)
    text = report.metrics_table({"test": rep}, cis=True)
    assert "| ACC [95% CI] | SENS [95% CI] |" in text and "| F1 |" in text
    lo, hi = rep.accuracy_ci
    assert f"| {rep.accuracy:.3f} [{lo:.3f}, {hi:.3f}] |" in text
    d = rep.to_dict()
    own = evaluate(np.array([0] * 10 + [1] * 10), np.linspace(0, 1, 20), threshold="youden",
                   n_bootstrap=10).to_dict()
    metrics = {"test": dict(d, at_roc_cutoff=own), "class_names": ["N0", "N+"],
               "youden_threshold": None}
    text = report.train_report(metrics, {"model": "abmil", "seed": 0})
    assert "## ROC cut-off of each split's own ROC (Youden; the paper's Table 2)" in text
    assert f"| test (cut-off {own['threshold']:.3f}) | 20 (10) |" in text
    assert "Clopper–Pearson (ACC, SENS, SPEC), logit (PPV, NPV)" in text


def test_cv_report_per_fold_rows_carry_the_threshold_cis():
    rows = [{"setting": "abmil · image", "fold": k, **_report(k).to_dict()} for k in range(2)]
    text = report.cv_report(rows, {"folds": 2, "task": "n0_vs_n+", "seed": 0}, ["N0", "N+"])
    lo, hi = rows[1]["sensitivity_ci"]
    assert "| Setting · fold | n (pos) | AUC [95% CI] | ACC [95% CI] |" in text
    assert f"{rows[1]['sensitivity']:.3f} [{lo:.3f}, {hi:.3f}]" in text

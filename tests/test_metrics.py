"""evaluate / bootstrap / thresholds / subgroups against scikit-learn and brute force."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score, roc_curve

from balnmp_mil.evaluation.bootstrap import _TieGroups, bootstrap_aucs, resample_counts
from balnmp_mil.evaluation.metrics import (
    clinical_subgroups,
    evaluate,
    subgroup_reports,
    threshold_metrics,
    youden_threshold,
)


def data(n=120, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.random(n) * 0.8 + 0.3 * y
    return y, (np.round(s, 1) if ties else s)


def test_auc_matches_sklearn_on_random_data_with_ties():
    for seed in range(5):
        y, s = data(seed=seed)
        assert evaluate(y, s, n_bootstrap=10).auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_threshold_metrics_match_sklearn():
    y, s = data(ties=False)
    rep = evaluate(y, s, threshold=0.6, n_bootstrap=10)
    pred = (s >= 0.6).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert rep.confusion == confusion_matrix(y, pred).tolist()
    assert rep.sensitivity == pytest.approx(tp / (tp + fn))
    assert rep.specificity == pytest.approx(tn / (tn + fp))
    assert rep.ppv == pytest.approx(tp / (tp + fp))
    assert rep.npv == pytest.approx(tn / (tn + fn))
    assert rep.f1 == pytest.approx(f1_score(y, pred))
    assert rep.accuracy == pytest.approx((tp + tn) / len(y))
    assert rep.threshold == 0.6 and rep.n == len(y) and rep.n_pos == int(y.sum())


def test_weighted_bootstrap_auc_equals_sklearn_with_sample_weights():
    y, s = data(n=50)
    counts = resample_counts(y, 7, np.random.default_rng(1)).astype(float)
    aucs = _TieGroups(s).weighted_auc(counts * (y == 1), counts * (y == 0))
    for row, auc in zip(counts, aucs):
        assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=row), abs=1e-12)


def test_resampling_is_stratified():
    y, _ = data(n=40)
    counts = resample_counts(y, 20, np.random.default_rng(0))
    assert (counts[:, y == 1].sum(axis=1) == y.sum()).all()
    assert (counts[:, y == 0].sum(axis=1) == (y == 0).sum()).all()


def test_bootstrap_ci_is_reproducible_and_seed_dependent():
    y, s = data()
    a = evaluate(y, s, n_bootstrap=500, seed=7).auc_ci
    b = evaluate(y, s, n_bootstrap=500, seed=7).auc_ci
    c = evaluate(y, s, n_bootstrap=500, seed=8).auc_ci
    assert a == b and a != c
    assert a[0] < evaluate(y, s, n_bootstrap=10).auc < a[1]
    # chunked computation (many resamples) gives the same numbers as one chunk
    assert np.array_equal(bootstrap_aucs(y, s, 300, seed=1), bootstrap_aucs(y, s, 300, seed=1))


def test_bootstrap_and_delong_cis_agree_roughly():
    y, s = data(n=300, ties=False)
    boot = evaluate(y, s, ci="bootstrap", n_bootstrap=2000).auc_ci
    dl = evaluate(y, s, ci="delong").auc_ci
    assert evaluate(y, s, ci="delong").ci_method == "delong"
    assert abs(boot[0] - dl[0]) < 0.02 and abs(boot[1] - dl[1]) < 0.02


def test_multiclass_macro_ovr_auc_and_confusion():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90)
    p[np.arange(90), y] += 0.3
    p /= p.sum(axis=1, keepdims=True)
    rep = evaluate(y, p, class_names=["N0", "N+(1-2)", "N+(>2)"], n_bootstrap=200)
    assert rep.auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    for c, name in enumerate(["N0", "N+(1-2)", "N+(>2)"]):
        assert rep.per_class_auc[name] == pytest.approx(roc_auc_score(y == c, p[:, c]))
    assert rep.confusion == confusion_matrix(y, p.argmax(1)).tolist()
    assert rep.threshold is None and rep.auc_ci[0] < rep.auc < rep.auc_ci[1]
    assert rep.f1 == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    json.dumps(rep.to_dict())
    assert set(evaluate(y, p, ci="delong").per_class_ci) == {"0", "1", "2"}


def test_two_column_probabilities_are_binary():
    y, s = data()
    two = np.stack([1 - s, s], axis=1)
    assert evaluate(y, two, n_bootstrap=50).auc == evaluate(y, s, n_bootstrap=50).auc


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    y, s = data()
    assert evaluate(torch.tensor(y), torch.tensor(s), n_bootstrap=10).auc == pytest.approx(
        roc_auc_score(y, s))


def test_single_class_gives_nan_auc_and_null_json():
    rep = evaluate(np.zeros(5, int), np.linspace(0, 1, 5))
    assert math.isnan(rep.auc) and all(math.isnan(v) for v in rep.auc_ci)
    d = rep.to_dict()
    assert d["auc"] is None and d["auc_ci"] == [None, None] and d["sensitivity"] is None
    assert d["specificity"] == pytest.approx(2 / 5)  # only 0.0 and 0.25 fall below 0.5
    json.dumps(d)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="(?i)unknown ci method"):
        evaluate([0, 1], [0.1, 0.9], ci="wald")
    with pytest.raises(ValueError, match="shape"):
        evaluate([0, 1, 1], [0.1, 0.9])
    with pytest.raises(ValueError, match="NaN"):
        evaluate([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        evaluate([0, 2], [0.1, 0.9])
    with pytest.raises(ValueError, match="class names"):
        evaluate([0, 1], [0.1, 0.9], class_names=["a"])


def brute_youden(y, s):
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    keep = np.isfinite(thr)  # sklearn prepends an infinite threshold (nothing positive)
    j = (tpr - fpr)[keep]
    return thr[keep][np.flatnonzero(j == j.max())].max()


def test_youden_matches_brute_force():
    for seed in range(5):
        y, s = data(seed=seed)
        t = youden_threshold(y, s)
        assert t == pytest.approx(brute_youden(y, s))
        tm = threshold_metrics(y, s, t)
        best = max(threshold_metrics(y, s, v)["sensitivity"] + threshold_metrics(y, s, v)[
            "specificity"] for v in np.unique(s))
        assert tm["sensitivity"] + tm["specificity"] == pytest.approx(best)


def test_youden_perfect_separation_and_errors():
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]) == 0.7
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="binary"):
        youden_threshold([0, 1, 2], np.eye(3))


def test_subgroups_with_empty_and_one_class_groups():
    y, s = data(n=60)
    age = np.linspace(30, 80, 60)
    groups = {"young": age <= 50, "old": age > 50, "none": np.zeros(60, bool),
              "negatives": y == 0}
    reps = subgroup_reports(y, s, groups, n_bootstrap=100)
    assert reps["none"] is None and math.isnan(reps["negatives"].auc)
    assert reps["young"].n + reps["old"].n == 60
    assert reps["young"].auc == pytest.approx(roc_auc_score(y[age <= 50], s[age <= 50]))
    with pytest.raises(ValueError, match="mask"):
        subgroup_reports(y, s, {"bad": np.ones(3, bool)})


def test_clinical_subgroups_from_bcnb_columns():
    table = pd.DataFrame({"Age(years)": [45, 50, 51, None], "ER": ["Positive", "Negative",
                          "positive", None], "her2 ": ["Negative"] * 4})
    g = clinical_subgroups(table)
    assert g["age <= 50"].tolist() == [True, True, False, False]
    assert g["age > 50"].tolist() == [False, False, True, False]
    assert g["ER+"].tolist() == [True, False, True, False]
    assert g["HER2-"].all() and "PR+" not in g

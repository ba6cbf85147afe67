"""The paper's intervals (exact binomial AUC, Clopper–Pearson, logit PPV/NPV) and their use.

The expected numbers are printed in Table 2 of Xu et al. 2021 (task N0 vs N+, independent
test cohort of 218 patients: 84 N+, 134 N0); the confusion counts follow from its SENS/SPEC.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from balnmp_mil.errors import EvaluationError
from balnmp_mil.evaluation.intervals import (
    binomial_auc_ci,
    clopper_pearson,
    count_cis,
    predictive_value_cis,
)
from balnmp_mil.evaluation.metrics import CI_METHODS, evaluate, youden_threshold


def r3(interval):
    return [round(v, 3) for v in interval]


@pytest.mark.parametrize("auc, expected", [
    (0.816, [0.758, 0.865]),  # DL-CNB
    (0.831, [0.775, 0.878]),  # DL-CNB+C
    (0.613, [0.545, 0.678]),  # clinical data only
])
def test_binomial_auc_ci_reproduces_table2(auc, expected):
    assert r3(binomial_auc_ci(auc, 218)) == expected


def test_clopper_pearson_matches_scipy_binomtest_and_edges():
    for k, n in [(3, 10), (163, 218), (1, 1000)]:
        ref = binomtest(k, n).proportion_ci(method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert clopper_pearson(0, 5)[0] == 0.0 and clopper_pearson(5, 5)[1] == 1.0
    assert all(np.isnan(clopper_pearson(0, 0)))


@pytest.mark.parametrize("tp, fp, fn, tn, expected", [
    # DL-CNB, test cohort: ACC 74.77 [68.46, 80.39], SENS 80.95 [70.92, 88.70],
    # SPEC 70.90 [62.43, 78.42], PPV 63.55 [56.76, 69.84], NPV 85.59 [79.04, 90.34]
    (68, 39, 16, 95, [[68.46, 80.39], [70.92, 88.70], [62.43, 78.42], [56.76, 69.84],
                      [79.04, 90.34]]),
    # DL-CNB+C, test cohort: SENS 89.29, SPEC 67.16
    (75, 44, 9, 90, [[69.44, 81.23], [80.63, 94.98], [58.53, 75.03], [56.96, 68.71],
                     [84.21, 94.94]]),
])
def test_count_cis_reproduce_table2(tp, fp, fn, tn, expected):
    cis = count_cis(tp, fp, fn, tn)
    keys = ["accuracy_ci", "sensitivity_ci", "specificity_ci", "ppv_ci", "npv_ci"]
    assert [[round(100 * v, 2) for v in cis[k]] for k in keys] == expected


def test_predictive_values_at_0_or_1_fall_back_to_exact_and_empty_is_nan():
    ppv, npv = predictive_value_cis(tp=5, fp=0, fn=3, tn=7)  # PPV = 1
    assert ppv == clopper_pearson(5, 5) and ppv[1] == 1.0
    assert 0 < npv[0] < 7 / 10 < npv[1] < 1
    ppv, _ = predictive_value_cis(tp=0, fp=0, fn=4, tn=6)  # nothing called positive
    assert all(np.isnan(ppv))


def _scores(n=80, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.random(n) * 0.7 + 0.3 * y


def test_evaluate_binomial_ci_and_threshold_cis():
    assert "binomial" in CI_METHODS
    y, s = _scores()
    rep = evaluate(y, s, ci="binomial")
    assert rep.ci_method == "binomial" and rep.n_bootstrap is None
    assert rep.auc_ci == binomial_auc_ci(rep.auc, y.size)
    (tn, fp), (fn, tp) = rep.confusion
    assert rep.sensitivity_ci == count_cis(tp, fp, fn, tn)["sensitivity_ci"]
    assert rep.ppv_ci[0] < rep.ppv < rep.ppv_ci[1]
    out = json.loads(json.dumps(rep.to_dict()))
    assert len(out["npv_ci"]) == 2 and out["threshold_source"] == "fixed"
    assert out["auc"] == rep.auc  # the existing keys stay


def test_evaluate_at_own_roc_cutoff_and_named_source():
    y, s = _scores()
    own = evaluate(y, s, threshold="youden", n_bootstrap=10)
    assert own.threshold == youden_threshold(y, s)
    assert own.threshold_source == "youden (own ROC)"
    given = evaluate(y, s, threshold=0.4, threshold_source="youden (val ROC)", n_bootstrap=10)
    assert given.threshold == 0.4 and given.threshold_source == "youden (val ROC)"
    with pytest.raises(EvaluationError, match="youden"):
        evaluate(y, s, threshold="roc")


def test_multiclass_binomial_ci_and_accuracy_ci_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    p[np.arange(90), y] += 0.5
    p /= p.sum(1, keepdims=True)
    rep = evaluate(y, p, ci="binomial")
    assert rep.auc_ci == binomial_auc_ci(rep.auc, 90)
    assert set(rep.per_class_ci) == {"0", "1", "2"}
    assert rep.accuracy_ci[0] < rep.accuracy < rep.accuracy_ci[1]
    assert rep.sensitivity_ci is None and rep.threshold_source is None

"""DeLong AUC variance and paired test vs a slow, explicit double-loop implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from balnmp_mil.evaluation.delong import (
    auc_score,
    delong_ci,
    delong_components,
    delong_test,
    midrank,
    pairwise_delong,
)

# Fixed data with ties inside and across classes (10 positives, 8 negatives).
Y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1])
S1 = np.array([.9, .3, .8, .55, .55, .1, .7, .4, .3, .95, .2, .6, .65, .8, .3, .45, .5, .9])
S2 = np.array([.6, .5, .7, .4, .2, .3, .9, .6, .5, .7, .1, .3, .8, .6, .4, .5, .5, .85])


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def slow_delong(y, scores_list):
    """DeLong et al. (1988) written out: V10/V01 by double loops, S10/S01, covariance."""
    pos = [i for i in range(len(y)) if y[i] == 1]
    neg = [j for j in range(len(y)) if y[j] == 0]
    m, n = len(pos), len(neg)
    aucs, v10s, v01s = [], [], []
    for s in scores_list:
        v10 = [sum(psi(s[i], s[j]) for j in neg) / n for i in pos]
        v01 = [sum(psi(s[i], s[j]) for i in pos) / m for j in neg]
        aucs.append(sum(v10) / m)
        v10s.append(v10)
        v01s.append(v01)
    k = len(scores_list)
    cov = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10 = sum((v10s[a][i] - aucs[a]) * (v10s[b][i] - aucs[b]) for i in range(m)) / (m - 1)
            s01 = sum((v01s[a][j] - aucs[a]) * (v01s[b][j] - aucs[b]) for j in range(n)) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return np.array(aucs), cov


def test_midrank_matches_average_ranks():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_allclose(midrank(x), rankdata(x, method="average"))
    x2 = np.stack([x, x[::-1]])
    np.testing.assert_allclose(midrank(x2), rankdata(x2, method="average", axis=1))


def test_components_match_slow_implementation():
    comp = delong_components(Y, np.stack([S1, S2]))
    aucs, cov = slow_delong(Y.tolist(), [S1.tolist(), S2.tolist()])
    np.testing.assert_allclose(comp.aucs, aucs, atol=1e-12)
    np.testing.assert_allclose(comp.cov, cov, atol=1e-12)
    assert comp.cov[0, 1] != 0.0  # the paired covariance is actually exercised


def test_paired_test_matches_slow_implementation():
    aucs, cov = slow_delong(Y.tolist(), [S1.tolist(), S2.tolist()])
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    p = 2 * norm.sf(abs(z))
    res = delong_test(Y, S1, S2)
    assert res.auc1 == pytest.approx(aucs[0], abs=1e-12)
    assert res.auc2 == pytest.approx(aucs[1], abs=1e-12)
    assert res.z == pytest.approx(z, rel=1e-10)
    assert res.p == pytest.approx(p, rel=1e-10)
    assert 0 < res.p < 1
    # antisymmetric in the two models
    swapped = delong_test(Y, S2, S1)
    assert swapped.z == pytest.approx(-res.z) and swapped.p == pytest.approx(res.p)


def test_delong_ci_matches_slow_variance():
    aucs, cov = slow_delong(Y.tolist(), [S1.tolist()])
    half = norm.ppf(0.975) * math.sqrt(cov[0, 0])
    lo, hi = delong_ci(Y, S1)
    assert lo == pytest.approx(max(0.0, aucs[0] - half)) and hi == pytest.approx(
        min(1.0, aucs[0] + half))


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        s = np.round(rng.random(60), 1)  # heavy ties
        assert auc_score(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_identical_models_give_p_one_and_separation_is_significant():
    assert delong_test(Y, S1, S1).p == 1.0
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    good = y + rng.normal(0, 0.5, 200)
    noise = rng.normal(0, 1, 200)
    assert delong_test(y, good, noise).p < 1e-6


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="both classes"):
        delong_components(np.ones(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="binary"):
        delong_components(np.array([0, 1, 2]), np.arange(3.0))
    with pytest.raises(ValueError, match="equal length"):
        delong_test(Y, S1, S2[:-1])
    # one positive: variance undefined -> NaN CI rather than a made-up number
    lo, hi = delong_ci(np.array([1, 0, 0, 0]), np.array([.9, .1, .2, .3]))
    assert math.isnan(lo) and math.isnan(hi)


def test_pairwise_delong_covers_every_pair_once():
    s3 = np.linspace(0, 1, Y.size)
    res = pairwise_delong(Y, {"a": S1, "b": S2, "c": s3})
    assert list(res) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert res[("a", "b")].p == pytest.approx(delong_test(Y, S1, S2).p)
    assert res[("b", "c")].to_dict()["auc2"] == pytest.approx(auc_score(Y, s3))

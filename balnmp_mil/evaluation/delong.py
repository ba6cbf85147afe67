"""Exact AUC and its DeLong variance, with the paired DeLong test between two models.

Implements the fast algorithm of Sun & Xu (2014, IEEE SPL 21:1389): every structural
component of DeLong et al. (1988) comes from three midrankings (positives alone, negatives
alone, all scores), so the cost is O(k·n log n) instead of the O(k·m·n) double loop.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from balnmp_mil.errors import EvaluationError

Z95 = float(norm.ppf(0.975))


def midrank(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based; tied values share the mean of their ranks) along the last axis."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="mergesort")
    xs = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    ranks = np.empty_like(xs)
    for row_idx in np.ndindex(xs.shape[:-1]):
        row = xs[row_idx]
        # start of each run of equal values, and its length
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        lengths = np.diff(np.r_[starts, n])
        ranks[row_idx] = np.repeat(starts + (lengths + 1) / 2.0, lengths)
    out = np.empty_like(ranks)
    np.put_along_axis(out, order, ranks, axis=-1)
    return out


@dataclass
class DeLongComponents:
    """AUCs of k score vectors on the same patients and their DeLong covariance (k, k)."""

    aucs: np.ndarray
    cov: np.ndarray
    v10: np.ndarray  # (k, m) structural components of the positives
    v01: np.ndarray  # (k, n) structural components of the negatives


def _as_binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).ravel()
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise EvaluationError(f"DeLong needs binary labels 0/1, got values {sorted(values)}")
    return y.astype(bool)


def delong_components(y_true: np.ndarray, scores: np.ndarray) -> DeLongComponents:
    """AUC and DeLong covariance for scores (n,) or (k, n) against binary labels (n,).

    V10 (per positive) is the fraction of negatives it outranks (ties count 1/2); V01 (per
    negative) is the fraction of positives that outrank it. cov = S10/m + S01/n. With fewer
    than two positives or negatives the variance is undefined and returned as NaN.
    """
    pos = _as_binary(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != pos.size:
        raise EvaluationError(f"scores have {s.shape[1]} patients but labels have {pos.size}")
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        raise EvaluationError(f"AUC needs both classes; got {m} positive and {n} negative patients")
    x, yneg = s[:, pos], s[:, ~pos]
    tx, ty, tz = midrank(x), midrank(yneg), midrank(np.concatenate([x, yneg], axis=1))
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    k = s.shape[0]
    if m < 2 or n < 2:
        cov = np.full((k, k), np.nan)
    else:
        cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return DeLongComponents(aucs=aucs, cov=cov, v10=v10, v01=v01)


def auc_score(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (Mann-Whitney with midranks; ties count 1/2)."""
    return float(delong_components(y_true, scores).aucs[0])


def delong_ci(y_true: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation CI of the AUC from the DeLong variance, clipped to [0, 1]."""
    comp = delong_components(y_true, scores)
    auc, var = float(comp.aucs[0]), float(comp.cov[0, 0])
    if not math.isfinite(var):
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + level / 2.0))
    half = z * math.sqrt(max(var, 0.0))
    return (max(0.0, auc - half), min(1.0, auc + half))


@dataclass
class DeLongResult:
    """Paired DeLong test of AUC1 == AUC2 on the same patients (two-sided p)."""

    auc1: float
    auc2: float
    z: float
    p: float
    auc_diff: float
    se_diff: float
    n: int
    n_pos: int

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def delong_test(y_true: np.ndarray, scores1: np.ndarray, scores2: np.ndarray) -> DeLongResult:
    """Compare two models' AUCs on the same patients with the paired DeLong test.

    z = (AUC1 - AUC2) / sqrt(var1 + var2 - 2 cov12); p = 2 * (1 - Phi(|z|)). Identical
    rankings give se 0: then z = 0 and p = 1.
    """
    s1, s2 = np.asarray(scores1, dtype=np.float64), np.asarray(scores2, dtype=np.float64)
    if s1.shape != s2.shape or s1.ndim != 1:
        raise EvaluationError(
            f"delong_test needs two 1-D score vectors of equal length, got {s1.shape} and "
            f"{s2.shape} (pass the positive-class probability of each model)"
        )
    comp = delong_components(y_true, np.stack([s1, s2]))
    a1, a2 = (float(a) for a in comp.aucs)
    var = float(comp.cov[0, 0] + comp.cov[1, 1] - 2.0 * comp.cov[0, 1])
    diff = a1 - a2
    se = math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan
    if not math.isfinite(se):
        z = p = math.nan
    elif se <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) <= 1e-15 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / se
        p = float(2.0 * norm.sf(abs(z)))
    pos = _as_binary(y_true)
    return DeLongResult(auc1=a1, auc2=a2, z=float(z), p=float(p), auc_diff=diff, se_diff=se,
                        n=int(pos.size), n_pos=int(pos.sum()))


def pairwise_delong(y_true: np.ndarray, scores: dict[str, np.ndarray]
                    ) -> dict[tuple[str, str], DeLongResult]:
    """Paired DeLong test for every pair of models scored on the same patients.

    Keys are (first, second) in the dict's order, e.g. ('image-only', 'image + clinical').
    """
    names = list(scores)
    return {(a, b): delong_test(y_true, scores[a], scores[b])
            for i, a in enumerate(names) for b in names[i + 1:]}

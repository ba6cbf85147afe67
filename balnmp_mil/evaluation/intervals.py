"""Exact and logit 95 % intervals for the paper's statistics (Xu et al. 2021, Table 2).

Recomputed from Table 2 of the BALNMP paper, its intervals are:

- AUC: the exact binomial (Clopper–Pearson) interval on AUC × n "successes" out of n
  patients (`binomial_auc_ci`; AUC 0.816 with n = 218 gives [0.758, 0.865]). This treats the
  AUC as a proportion of patients, which it is not; it is here to reproduce the paper, and
  the bootstrap or DeLong intervals are the better-founded ones.
- ACC, SENS, SPEC: Clopper–Pearson on the counts (`clopper_pearson`).
- PPV, NPV: the "standard logit" interval of Mercaldo et al. (2007, Stat Med 26:2170), with
  the prevalence of the evaluated patients (`predictive_value_cis`); when the value is 0 or 1
  the logit is infinite and the Clopper–Pearson interval on the counts is used instead.
"""

from __future__ import annotations

import math

from scipy.stats import beta, norm

NAN = float("nan")
Interval = tuple[float, float]

__all__ = ["clopper_pearson", "binomial_auc_ci", "predictive_value_cis", "count_cis"]


def clopper_pearson(k: float, n: float, level: float = 0.95) -> Interval:
    """Exact binomial interval for k successes out of n (k may be fractional: AUC × n).

    Lower bound `Beta(α/2; k, n − k + 1)`, upper bound `Beta(1 − α/2; k + 1, n − k)`, with 0
    and 1 at the edges; NaN when n is 0.
    """
    if n <= 0 or not math.isfinite(k):
        return (NAN, NAN)
    alpha = 1.0 - level
    k = min(max(float(k), 0.0), float(n))
    lo = 0.0 if k <= 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (lo, hi)


def binomial_auc_ci(auc: float, n: int, level: float = 0.95) -> Interval:
    """The paper's AUC interval: Clopper–Pearson on AUC × n of n patients (NaN AUC: NaN)."""
    if not math.isfinite(auc):
        return (NAN, NAN)
    return clopper_pearson(auc * n, n, level)


def _logit_ci(p: float, var: float, z: float) -> Interval:
    centre, half = math.log(p / (1 - p)), z * math.sqrt(var)
    return (1 / (1 + math.exp(-(centre - half))), 1 / (1 + math.exp(-(centre + half))))


def predictive_value_cis(tp: int, fp: int, fn: int, tn: int, level: float = 0.95
                         ) -> tuple[Interval, Interval]:
    """(PPV CI, NPV CI): Mercaldo's standard logit intervals.

    With n1 = TP + FN patients with the condition and n0 = FP + TN without,
    Var(logit PPV) = (1 − SENS)/(n1·SENS) + SPEC/(n0·(1 − SPEC)) and
    Var(logit NPV) = SENS/(n1·(1 − SENS)) + (1 − SPEC)/(n0·SPEC). A value of exactly 0 or 1
    falls back to Clopper–Pearson on the counts;
    a value with a zero denominator is NaN.
    """
    z = float(norm.ppf(0.5 + level / 2))
    n1, n0 = tp + fn, fp + tn

    def one(hit: int, miss: int, var: float) -> Interval:
        if hit + miss == 0:
            return (NAN, NAN)
        if hit == 0 or miss == 0:
            return clopper_pearson(hit, hit + miss, level)
        return _logit_ci(hit / (hit + miss), var, z)

    # The variances above in counts: (1 - SENS)/(n1 SENS) = FN/(n1 TP), and so on; each is
    # finite whenever its value lies strictly between 0 and 1.
    var_ppv = fn / (n1 * tp) + tn / (n0 * fp) if tp and fp else NAN
    var_npv = tp / (n1 * fn) + fp / (n0 * tn) if tn and fn else NAN
    return one(tp, fp, var_ppv), one(tn, fn, var_npv)


def count_cis(tp: int, fp: int, fn: int, tn: int, level: float = 0.95) -> dict[str, Interval]:
    """The paper's intervals for the binary threshold metrics from the confusion counts.

    Keys `accuracy_ci`, `sensitivity_ci`, `specificity_ci` (Clopper–Pearson) and `ppv_ci`,
    `npv_ci` (logit, see `predictive_value_cis`).
    """
    ppv, npv = predictive_value_cis(tp, fp, fn, tn, level)
    n = tp + fp + fn + tn
    return {"accuracy_ci": clopper_pearson(tp + tn, n, level),
            "sensitivity_ci": clopper_pearson(tp, tp + fn, level),
            "specificity_ci": clopper_pearson(tn, tn + fp, level),
            "ppv_ci": ppv, "npv_ci": npv}

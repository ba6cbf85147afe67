"""Tiny random cohorts with a planted signal for the MIL tests."""

from __future__ import annotations

import numpy as np

from balnmp_mil.data.cohort import Cohort, cohort_from_bags


def planted_bags(
    n_bags: int = 40, dim: int = 8, seed: int = 0, n_classes: int = 2, lo: int = 3, hi: int = 20
) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags whose label c > 0 plants a few instances shifted along feature c."""
    rng = np.random.default_rng(seed)
    bags, labels = [], []
    for i in range(n_bags):
        y = i % n_classes
        x = rng.normal(size=(int(rng.integers(lo, hi)), dim)).astype(np.float32)
        if y:
            x[: max(1, len(x) // 4), y - 1] += 2.5
        bags.append(x)
        labels.append(y)
    return bags, np.array(labels)


def planted_cohort(**kw) -> Cohort:
    bags, labels = planted_bags(**kw)
    return cohort_from_bags(bags, labels)

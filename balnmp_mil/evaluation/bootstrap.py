"""Seeded, vectorised bootstrap of the ROC AUC (binary and one-vs-rest macro).

A bootstrap resample is represented by how many times each patient is drawn (a count matrix
(B, n)); the AUC of every resample then follows from cumulative sums over the tie groups of
the sorted scores, so 1000 resamples cost a few array operations instead of 1000 sklearn
calls. Resampling is stratified by class (as pROC does), which keeps every resample's class
counts equal to the original and avoids resamples with one class.
"""

from __future__ import annotations

import numpy as np

_MAX_CELLS = 4_000_000  # rows * patients per chunk (keeps memory ~ 100 MB at most)


def resample_counts(labels: np.ndarray, n_bootstrap: int, rng: np.random.Generator
                    ) -> np.ndarray:
    """Count matrix (B, n): how often each patient is drawn, resampled within each class."""
    labels = np.asarray(labels).ravel()
    counts = np.zeros((n_bootstrap, labels.size), dtype=np.int32)
    rows = np.arange(n_bootstrap)[:, None]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        draws = rng.integers(0, idx.size, size=(n_bootstrap, idx.size))
        flat = (draws + rows * idx.size).ravel()
        counts[:, idx] = np.bincount(flat, minlength=n_bootstrap * idx.size).reshape(
            n_bootstrap, idx.size)
    return counts


class _TieGroups:
    """Scores sorted ascending and split into runs of equal value (computed once)."""

    def __init__(self, scores: np.ndarray):
        scores = np.asarray(scores, dtype=np.float64).ravel()
        self.order = np.argsort(scores, kind="mergesort")
        sorted_scores = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])

    def weighted_auc(self, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
        """AUC per row for patient weights (B, n) of the positive and negative class."""
        pu = np.add.reduceat(w_pos[:, self.order], self.starts, axis=1)
        nu = np.add.reduceat(w_neg[:, self.order], self.starts, axis=1)
        below = np.cumsum(nu, axis=1) - nu
        num = (pu * (below + 0.5 * nu)).sum(axis=1)
        den = pu.sum(axis=1) * nu.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def bootstrap_aucs(y_true: np.ndarray, scores: np.ndarray, n_bootstrap: int = 1000,
                   seed: int = 0) -> np.ndarray:
    """AUC of each stratified bootstrap resample: (B,) for binary, (B, C) one-vs-rest.

    scores (n,) are positive-class scores for binary labels; scores (n, C) give one column
    per class (labels 0..C-1) and yield one-vs-rest AUCs per class.
    """
    y = np.asarray(y_true).ravel().astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    columns = [(1, s)] if s.ndim == 1 else [(c, s[:, c]) for c in range(s.shape[1])]
    groups = [(_TieGroups(col), (y == c).astype(np.float64)) for c, col in columns]
    chunk = max(1, _MAX_CELLS // max(1, y.size))
    out = []
    for start in range(0, n_bootstrap, chunk):
        counts = resample_counts(y, min(chunk, n_bootstrap - start), rng).astype(np.float64)
        per_col = [g.weighted_auc(counts * is_pos, counts * (1.0 - is_pos))
                   for g, is_pos in groups]
        out.append(np.stack(per_col, axis=1))
    aucs = np.concatenate(out, axis=0)
    return aucs[:, 0] if s.ndim == 1 else aucs


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite values (NaN, NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))

"""Evaluation: AUC with confidence intervals, DeLong tests, thresholds, reports and plots.

`metrics.evaluate` is the one report (AUC [95 % CI], accuracy, sensitivity, specificity, PPV,
NPV, F1 at a threshold); `delong` and `bootstrap` give the intervals and tests; `report` writes
the Markdown tables; `plots` draws ROC curves, training curves and attention heatmaps.
"""

from __future__ import annotations

from balnmp_mil.evaluation.delong import DeLongResult, delong_test, pairwise_delong
from balnmp_mil.evaluation.metrics import Report, evaluate, youden_threshold

__all__ = ["DeLongResult", "Report", "delong_test", "evaluate", "pairwise_delong",
           "youden_threshold"]

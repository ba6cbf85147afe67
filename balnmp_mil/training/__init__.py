"""Training: `fit` one model on a cohort, `predict` with it, `sweep` many fits at once.

`config.FitConfig` declares the training options; `fit` trains on packed bags (many bags per
step, no padding) with early stopping on a validation cohort (`monitor`); `optim` registers the
optimisers and learning-rate schedules; `predict` merges bag probabilities into patients;
`sweep` vectorises fits over seeds, splits and learning rates; `estimator.MILClassifier` wraps
`fit`/`predict` as a scikit-learn estimator; `baseline` is the paper's clinical-only logistic
regression.
"""

from __future__ import annotations

from balnmp_mil.training.config import FitConfig
from balnmp_mil.training.estimator import MILClassifier
from balnmp_mil.training.fit import FitResult, fit
from balnmp_mil.training.inference import predict
from balnmp_mil.training.sweep import SweepResult, SweepSpec, sweep

__all__ = ["FitConfig", "FitResult", "MILClassifier", "SweepResult", "SweepSpec", "fit",
           "predict", "sweep"]

"""A scikit-learn estimator over bags: `fit(X_bags, y)`, `predict_proba`, `predict`.

`X_bags` is a list of (n_i, D) arrays, one per bag; labels may be any hashable class values.
Works with `clone`, `GridSearchCV` and `cross_val_score` (they index the list of bags). The
parameters are `model`, `model_kwargs` and `FitConfig`'s fields with its defaults (scikit-learn
needs them spelled out in `__init__`; a test keeps the two equal), less `NOT_PARAMETERS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted

from balnmp_mil.data.cohort import Cohort, cohort_from_bags
from balnmp_mil.errors import InputError
from balnmp_mil.models import build_model
from balnmp_mil.training.config import FitConfig
from balnmp_mil.training.fit import fit
from balnmp_mil.training.inference import predict

__all__ = ["FIT_PARAMETERS", "NOT_PARAMETERS", "MILClassifier"]

# FitConfig fields that mean nothing here, with the reason.
NOT_PARAMETERS = {
    "patience": "early stopping needs a validation cohort, which fit(X, y) does not take",
    "monitor": "early stopping needs a validation cohort, which fit(X, y) does not take",
    "merge": "every bag is its own sample: there are no slide bags to merge",
}
FIT_PARAMETERS = [f.name for f in fields(FitConfig) if f.name not in NOT_PARAMETERS]
_D = FitConfig()  # the declared defaults
Bags = Sequence[ArrayLike] | np.ndarray  # (n_i, D) arrays, or one (B, n, D) array


class MILClassifier(ClassifierMixin, BaseEstimator):
    """Attention-MIL classifier (any registered model) trained with `balnmp_mil.fit`."""

    def __init__(
        self,
        model: str = "abmil",
        model_kwargs: dict[str, Any] | None = None,
        seed: int = _D.seed,
        epochs: int = _D.epochs,
        lr: float = _D.lr,
        weight_decay: float = _D.weight_decay,
        optimizer: str = _D.optimizer,
        momentum: float = _D.momentum,
        schedule: str = _D.schedule,
        bags_per_step: int | str = _D.bags_per_step,
        instances_per_bag: int | None = _D.instances_per_bag,
        class_weights: str | Sequence[float] | None = _D.class_weights,
        train_stop_auc: float | None = _D.train_stop_auc,
        standardize: bool | None = _D.standardize,
        amp: bool = _D.amp,
        device: str | None = _D.device,
        progress: bool | None = _D.progress,
        protocol: str | None = _D.protocol,
    ) -> None:
        self.model = model
        self.model_kwargs = model_kwargs
        self.seed = seed
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.momentum = momentum
        self.schedule = schedule
        self.bags_per_step = bags_per_step
        self.instances_per_bag = instances_per_bag
        self.class_weights = class_weights
        self.train_stop_auc = train_stop_auc
        self.standardize = standardize
        self.amp = amp
        self.device = device
        self.progress = progress
        self.protocol = protocol

    def _check_bags(self, X: Bags, reset: bool) -> list[np.ndarray]:
        if isinstance(X, np.ndarray) and X.ndim == 3:
            X = list(X)
        if not isinstance(X, (list, tuple)) or not X:
            raise InputError("X must be a non-empty list of (n_i, D) arrays, one per bag")
        bags = [np.asarray(b, dtype=np.float32) for b in X]
        for i, b in enumerate(bags):
            if b.ndim != 2 or b.shape[0] == 0:
                raise InputError(f"bag {i} has shape {b.shape}; each bag must be (n_i >= 1, D)")
            if not np.isfinite(b).all():
                raise InputError(f"bag {i} contains NaN or Inf")
        dims = {b.shape[1] for b in bags}
        if len(dims) != 1:
            raise InputError(f"bags have different feature dims {sorted(dims)}")
        dim = dims.pop()
        if reset:
            self.n_features_in_ = dim
        elif dim != self.n_features_in_:
            raise InputError(f"X has {dim} features per instance; the estimator was fitted "
                             f"with {self.n_features_in_}")
        return bags

    def fit(self, X: Bags, y: ArrayLike) -> MILClassifier:
        """Train on bags `X` with one label per bag `y`."""
        bags = self._check_bags(X, reset=True)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(bags):
            raise InputError(f"y must be 1-D with one label per bag ({len(bags)}); got {y.shape}")
        self._encoder = LabelEncoder().fit(y)
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise InputError(f"need at least 2 classes; y has only {list(self.classes_)}")
        cohort = cohort_from_bags(bags, self._encoder.transform(y), device=self.device,
                                  class_names=[str(c) for c in self.classes_])
        net = build_model(self.model, self.n_features_in_, len(self.classes_), seed=self.seed,
                          **(self.model_kwargs or {}))
        result = fit(net, cohort, **{name: getattr(self, name) for name in FIT_PARAMETERS})
        self.model_ = result.model
        self.history_ = result.history
        return self

    def predict_proba(self, X: Bags) -> np.ndarray:
        """Class probabilities (n_bags, n_classes), columns ordered as `classes_`."""
        cohort = self._unlabelled(X)[1]
        return predict(self.model_, cohort)

    def _unlabelled(self, X: Bags) -> tuple[list[np.ndarray], Cohort]:
        """The checked bags of `X` and a cohort of them (labels unused) for the fitted model."""
        check_is_fitted(self, "model_")
        bags = self._check_bags(X, reset=False)
        cohort = cohort_from_bags(bags, np.zeros(len(bags), dtype=np.int64), device=self.device,
                                  class_names=[str(c) for c in self.classes_])
        return bags, cohort

    def predict(self, X: Bags) -> np.ndarray:
        """Most probable class of each bag."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def attention(self, X: Bags) -> list[np.ndarray]:
        """Per-instance attention of each bag (for models that have attention)."""
        bags, cohort = self._unlabelled(X)
        _, att = predict(self.model_, cohort, return_attention=True)
        if att is None:
            raise InputError(f"model {self.model!r} has no attention")
        return np.split(att, np.cumsum([len(b) for b in bags])[:-1])

"""The BALNMP paper's "clinical data only" model: logistic regression on encoded clinical data.

Input is the matrix of a fitted `ClinicalEncoder` (already z-scored / one-hot), so the model
is a plain L2-regularised logistic regression with balanced class weights, seeded.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from balnmp_mil.errors import ClinicalError


def fit_clinical_baseline(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0,
                          c: float = 1.0) -> LogisticRegression:
    """Fit on training rows; the result has `predict_proba(x) -> (n, n_classes)`."""
    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train).ravel()
    if x.ndim != 2 or x.shape[0] != y.size:
        raise ClinicalError(f"clinical baseline needs X (n, K) and y (n,); got {x.shape} and "
                            f"{y.shape}")
    if np.unique(y).size < 2:
        raise ClinicalError("clinical baseline needs at least two classes in the training rows; "
                            f"got only {np.unique(y).tolist()}")
    if not np.all(np.isfinite(x)):
        raise ClinicalError("clinical matrix contains NaN/inf; encode it with ClinicalEncoder "
                            "(--clinical-impute fills missing values)")
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    return model.fit(x, y)

"""MILClassifier follows scikit-learn conventions on lists of bags."""

from __future__ import annotations

import numpy as np
import pytest
from _data import planted_bags
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from balnmp_mil.training.estimator import MILClassifier


def test_fit_predict_proba_with_string_labels():
    bags, y = planted_bags(n_bags=30, dim=6)
    names = np.where(y == 1, "N+", "N0")
    est = MILClassifier(epochs=12, lr=5e-3, bags_per_step=5, model_kwargs={"dropout": 0.0})
    assert est.fit(bags[:24], names[:24]) is est
    assert list(est.classes_) == ["N+", "N0"] and est.n_features_in_ == 6
    proba = est.predict_proba(bags[24:])
    assert proba.shape == (6, 2) and np.allclose(proba.sum(1), 1)
    assert set(est.predict(bags[24:])) <= {"N0", "N+"}
    assert est.score(bags[:24], names[:24]) > 0.8
    att = est.attention(bags[24:26])
    assert [len(a) for a in att] == [len(b) for b in bags[24:26]]
    np.testing.assert_allclose([a.sum() for a in att], 1, rtol=1e-5)


def test_clone_params_and_input_validation():
    est = MILClassifier(model="mean", epochs=1, model_kwargs={"embed_dim": 8})
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    with pytest.raises(NotFittedError):
        est.predict([np.zeros((2, 3))])
    with pytest.raises(ValueError, match="bag 1"):
        est.fit([np.zeros((2, 3)), np.zeros((0, 3))], [0, 1])
    with pytest.raises(ValueError, match="2 classes"):
        est.fit([np.zeros((2, 3)), np.ones((2, 3))], [1, 1])
    est.fit([np.zeros((2, 3)), np.ones((2, 3))], [0, 1])
    with pytest.raises(ValueError, match="fitted with 3"):
        est.predict_proba([np.zeros((2, 4))])

"""Vectorised sweeps equal M separate fits with the same seeds (up to float rounding)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from _data import planted_cohort

from balnmp_mil.models import MODELS, list_models
from balnmp_mil.training.fit import predict
from balnmp_mil.training.sweep import sweep


def _splits(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    idx = np.arange(n)
    return [(idx[idx % 3 != k], idx[idx % 3 == k]) for k in (0, 1)]


@pytest.mark.parametrize(("name", "opts"), [
    ("abmil", {"instances_per_bag": 5}),
    ("clam_sb", {"optimizer": "adamw", "patience": 0, "monitor": "loss"}),
])
def test_sweep_equals_separate_fits(name, opts):
    cohort = planted_cohort(n_bags=18, hi=12)
    common = dict(seeds=(0, 1), lrs=(5e-3,), model_kwargs={"dropout": 0.0}, epochs=2,
                  bags_per_step=4)
    vec = sweep(name, cohort, _splits(18), vectorise=True, **common, **opts)
    seq = sweep(name, cohort, _splits(18), vectorise=False, **common, **opts)
    assert vec.vectorised and not seq.vectorised and len(vec.results) == 4
    assert [(s.split, s.seed, s.lr) for s in vec.specs] == [(s.split, s.seed, s.lr)
                                                          for s in seq.specs]
    for a, b in zip(vec.results, seq.results, strict=True):
        assert a.best_epoch == b.best_epoch and len(a.history) == len(b.history)
        for ha, hb in zip(a.history, b.history, strict=True):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-5)
            assert ha["val_loss"] == pytest.approx(hb["val_loss"], abs=1e-5)
        np.testing.assert_allclose(predict(a.model, cohort), predict(b.model, cohort),
                                   atol=1e-5)
    # different seeds/lrs really give different models
    p0, p1 = (predict(r.model, cohort) for r in vec.results[:2])
    assert not np.allclose(p0, p1)


@pytest.mark.parametrize("name", list_models())
def test_every_model_sweeps_as_its_class_declares(name):
    """The model class's `vmappable` decides: batched fits equal separate ones, or the sweep
    falls back to separate fits (a registered model is covered without editing a list)."""
    cls = MODELS.get(name)
    kwargs = {"dim": 16, "heads": 2} if name == "transmil" else {}
    for param in inspect.signature(cls).parameters:  # dropout, embed_dropout, ...
        if param.endswith("dropout"):
            kwargs[param] = 0.0  # masks differ between batched and separate fits
    cohort = planted_cohort(n_bags=12, hi=8)
    common = dict(seeds=(0, 1), lrs=(5e-3,), model_kwargs=kwargs, epochs=2, bags_per_step=4)
    vec = sweep(name, cohort, _splits(12), vectorise=True, **common)
    assert vec.vectorised is cls.vmappable and len(vec.results) == 4
    if cls.vmappable:
        seq = sweep(name, cohort, _splits(12), vectorise=False, **common)
        for a, b in zip(vec.results, seq.results, strict=True):
            np.testing.assert_allclose(predict(a.model, cohort), predict(b.model, cohort),
                                       atol=1e-5)


@dataclass
class _Split:
    train: list[str]
    val: list[str]


def test_split_objects_and_transmil_fallback():
    cohort = planted_cohort(n_bags=12)
    ids = cohort.patient_ids
    split = _Split(train=ids[:8], val=ids[8:])
    res = sweep("transmil", cohort, [split], model_kwargs={"dim": 16, "heads": 2},
                epochs=1, bags_per_step=4)
    assert not res.vectorised and len(res.results[0].history) == 1
    auto = sweep("mean", cohort, [split], epochs=1)  # auto: sequential on CPU
    assert not auto.vectorised
    res = sweep("dsmil", cohort, [split, (np.arange(6), None)], epochs=2, optimizer="sgd",
                vectorise=True)
    assert res.vectorised and res.results[1].best_score is None
    assert res.results[1].best_epoch == 1 and "val_auc" in res.results[0].history[0]
    with pytest.raises(TypeError, match="unknown sweep options"):
        sweep("mean", cohort, [split], epoch=2)
    with pytest.raises(ValueError, match="not in the cohort"):
        sweep("mean", cohort, [_Split(train=["nope"], val=[])], epochs=1)
    assert torch.is_tensor(cohort.features)


def test_vectorised_sweep_trains_with_dropout_on():
    # Dropout draws its CPU mask from torch.randint inside vmap (randomness="different"): each
    # model gets its own masks, and training still runs and learns the planted signal.
    cohort = planted_cohort(n_bags=18, hi=12)
    res = sweep("abmil", cohort, _splits(18), seeds=(0,), lrs=(5e-3,), epochs=3,
                bags_per_step=4, vectorise=True, model_kwargs={"dropout": 0.25})
    assert res.vectorised and len(res.results) == 2
    for r in res.results:
        losses = [h["train_loss"] for h in r.history]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]

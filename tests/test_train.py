"""fit / predict: learning a planted signal, bit-identical reruns, early stopping, merging."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _data import planted_bags, planted_cohort

from balnmp_mil.data.cohort import Cohort, cohort_from_bags
from balnmp_mil.models import build_model
from balnmp_mil.training.fit import FitConfig, auc_score, class_weight_vector, fit, predict


def _split(c: Cohort) -> tuple[Cohort, Cohort]:
    idx = np.arange(len(c))
    return c.subset(idx[idx % 5 != 0]), c.subset(idx[idx % 5 == 0])


def test_fit_learns_planted_signal_and_predicts():
    tr, va = _split(planted_cohort(n_bags=48))
    model = build_model("abmil", tr.feature_dim, 2, seed=0, dropout=0.0)
    res = fit(model, tr, va, epochs=15, lr=3e-3, bags_per_step=6, seed=0)
    assert len(res.history) == 15 and {"train_loss", "val_auc", "val_loss"} <= set(res.history[0])
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    probs, att = predict(res.model, va, return_attention=True)
    assert probs.shape == (len(va), 2) and np.allclose(probs.sum(1), 1)
    assert auc_score(va.labels.numpy(), probs) > 0.8
    assert att.shape == (va.n_instances,)
    assert res.best_score == max(h["val_auc"] for h in res.history)
    assert res.history[res.best_epoch]["val_auc"] == res.best_score


def _params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


@pytest.mark.parametrize("opts", [
    {"instances_per_bag": 4},
    {"optimizer": "sgd", "schedule": "constant", "class_weights": None},
])
def test_reruns_are_bit_identical_and_leave_global_rng_alone(opts):
    tr, _ = _split(planted_cohort(n_bags=24))
    runs = []
    for _ in range(2):
        m = build_model("abmil", tr.feature_dim, 2, seed=3)  # dropout on: uses the seeded stream
        torch.manual_seed(123)
        before = torch.rand(1)
        torch.manual_seed(123)
        fit(m, tr, epochs=3, lr=1e-3, seed=7, **opts)
        assert torch.equal(torch.rand(1), before)  # caller's RNG untouched
        runs.append(_params(m))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    m = build_model("abmil", tr.feature_dim, 2, seed=3)
    fit(m, tr, epochs=3, lr=1e-3, seed=8, **opts)
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], _params(m), strict=True))


def test_early_stopping_restores_best_epoch():
    tr, va = _split(planted_cohort(n_bags=32))
    m = build_model("mean", tr.feature_dim, 2, seed=0)
    res = fit(m, tr, va, epochs=40, lr=5e-2, patience=2, monitor="loss", seed=0)
    losses = [h["val_loss"] for h in res.history]
    assert len(res.history) <= 40
    assert res.best_epoch == int(np.argmin(losses)) and res.best_score == pytest.approx(min(losses))
    if len(res.history) < 40:
        assert len(res.history) - 1 - res.best_epoch == 3  # patience 2 exceeded
    probs = predict(res.model, va)
    from balnmp_mil.training.fit import bag_logits
    logits, _ = bag_logits(res.model, va)
    val_loss = torch.nn.functional.cross_entropy(logits, va.bag_labels).item()
    assert val_loss == pytest.approx(min(losses), rel=1e-5)
    assert probs.shape == (len(va), 2)


def test_slide_level_predictions_merge_per_patient():
    c = planted_cohort(n_bags=6)
    # turn 6 bags into 3 patients with 2 slides each
    slides = c
    slides.bag_patient = torch.tensor([0, 0, 1, 1, 2, 2])
    slides.labels = torch.tensor([0, 1, 0])
    slides.patient_ids = ["a", "b", "c"]
    slides.bag_level = "slide"
    m = build_model("abmil", c.feature_dim, 2, seed=0)
    from balnmp_mil.training.fit import bag_logits
    bag_probs = torch.softmax(bag_logits(m, slides)[0], 1).double().numpy()
    mean = predict(m, slides, merge="mean")
    np.testing.assert_allclose(mean, bag_probs.reshape(3, 2, 2).mean(1), rtol=1e-6)
    mx = predict(m, slides, merge="max")
    expect = bag_probs.reshape(3, 2, 2).max(1)
    np.testing.assert_allclose(mx, expect / expect.sum(1, keepdims=True), rtol=1e-6)


def test_class_weights_and_config_validation():
    w = class_weight_vector("balanced", torch.tensor([0, 0, 0, 1]), 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))
    with pytest.raises(ValueError, match="optimizer"):
        FitConfig(optimizer="lbfgs")
    with pytest.raises(TypeError, match="unknown fit options"):
        fit(build_model("mean", 8, 2), planted_cohort(n_bags=4), epoch=3)
    assert isinstance(pd.DataFrame(fit(build_model("max", 8, 2), planted_cohort(n_bags=4),
                                       epochs=1).history), pd.DataFrame)


@pytest.mark.gpu
def test_fit_on_gpu_with_amp_learns_and_matches_packed_reference():
    tr, va = _split(planted_cohort(n_bags=48))
    model = build_model("abmil", tr.feature_dim, 2, seed=0, dropout=0.0)
    res = fit(model, tr.to("cuda"), va.to("cuda"), epochs=15, lr=3e-3, bags_per_step=6, amp=True)
    assert next(res.model.parameters()).is_cuda
    probs = predict(res.model, va.to("cuda"))
    assert auc_score(va.labels.numpy(), probs) > 0.8
    cpu_probs = predict(res.model.float().cpu(), va)
    np.testing.assert_allclose(probs, cpu_probs, atol=3e-2)  # bf16 autocast


def test_optimizer_is_fused_only_on_cuda():
    from balnmp_mil.training.fit import make_optimizer

    cpu = make_optimizer(build_model("abmil", 8, 2), FitConfig(optimizer="adamw"))
    assert not cpu.defaults.get("fused")  # CPU: the default implementation, as CLAM uses
    if torch.cuda.is_available():
        gpu = make_optimizer(build_model("abmil", 8, 2).cuda(), FitConfig(optimizer="adam"))
        assert gpu.defaults["fused"]


def test_saturated_val_auc_ties_are_broken_by_val_loss():
    # A strong signal saturates validation AUC at 1.0 from the first epoch; the kept epoch
    # must be the tied epoch with the lowest validation loss, not the untrained epoch 0.
    bags, labels = planted_bags(n_bags=40, dim=4, seed=3)
    for b, y in zip(bags, labels):
        b[:, 0] += 6.0 * y
    c = cohort_from_bags(bags, labels)
    tr, va = _split(c)
    m = build_model("mean", tr.feature_dim, 2, seed=0)
    res = fit(m, tr, va, epochs=12, lr=5e-2, monitor="auc", seed=0)
    aucs = [h["val_auc"] for h in res.history]
    assert aucs[0] == 1.0  # the situation this test is about
    tied = [h for h in res.history if h["val_auc"] == 1.0]
    assert res.best_epoch == min(tied, key=lambda h: h["val_loss"])["epoch"]
    assert res.best_epoch > 0


def test_fit_standardises_inputs_with_training_statistics_and_saves_them():
    tr, va = _split(planted_cohort(n_bags=24))
    m = build_model("abmil", tr.feature_dim, 2, seed=0)
    fit(m, tr, va, epochs=1, seed=0)
    x = tr.features.float()
    assert torch.allclose(m.input_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(m.input_std, x.std(0, correction=0), atol=1e-5)
    state = m.state_dict()
    assert "input_mean" in state and "input_std" in state
    off = build_model("abmil", tr.feature_dim, 2, seed=0)
    fit(off, tr, va, epochs=1, seed=0, standardize=False)
    assert torch.equal(off.input_mean, torch.zeros(tr.feature_dim))


def test_device_steps_lay_out_the_same_batches_as_batch_rows():
    from balnmp_mil.training.fit import batch_rows, device_steps, epoch_plan

    offsets = torch.tensor([0, 5, 6, 14, 14, 20, 31, 33])  # one empty bag
    for ipb in (None, 3):
        cfg = FitConfig(bags_per_step=3, instances_per_bag=ipb)
        plan = epoch_plan(offsets, cfg, torch.Generator().manual_seed(2))
        steps = list(device_steps(plan, torch.device("cpu")))
        assert len(steps) == len(plan.batches)
        for (rows, offs, bags), want_bags in zip(steps, plan.batches, strict=True):
            want_rows, want_offs = batch_rows(plan, want_bags)
            assert torch.equal(bags, want_bags)
            assert torch.equal(rows, want_rows) and torch.equal(offs, want_offs)

"""Bags per optimiser step: the "auto" rule (training bags -> bags per step), an explicit value
winning, and the resolved value recorded by `fit`, `train` and `cv`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from _data import fast_args, make_tiny_cohort, planted_cohort
from click.testing import CliRunner

from balnmp_mil.cli.group import main
from balnmp_mil.models import build_model
from balnmp_mil.training import FitConfig, fit
from balnmp_mil.training.config import (
    AUTO,
    AUTO_MAX_BAGS_PER_STEP,
    AUTO_MIN_STEPS,
    resolve_bags_per_step,
)
from balnmp_mil.training.plan import epoch_plan
from balnmp_mil.workflow.config import TrainConfig


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.mark.parametrize("n_bags,expected", [
    (1, 1), (50, 1), (100, 1), (127, 1), (128, 2), (200, 3), (255, 3), (256, 4), (511, 7),
    (512, 8), (846, 8), (1058, 8), (100_000, 8),
])
def test_auto_keeps_an_epoch_at_least_min_steps_long_and_packs_at_most_the_cap(n_bags, expected):
    assert (AUTO_MIN_STEPS, AUTO_MAX_BAGS_PER_STEP) == (64, 8)  # the table below is for these
    per_step = resolve_bags_per_step(AUTO, n_bags)
    assert per_step == expected
    assert per_step == 1 or math.ceil(n_bags / per_step) >= AUTO_MIN_STEPS


def test_auto_never_packs_fewer_bags_for_a_larger_cohort():
    values = [resolve_bags_per_step(AUTO, n) for n in range(1, 2000)]
    assert values == sorted(values) and min(values) == 1 and max(values) == AUTO_MAX_BAGS_PER_STEP


@pytest.mark.parametrize("given", [1, 3, 8, 32])
def test_an_explicit_value_wins_whatever_the_cohort(given):
    assert all(resolve_bags_per_step(given, n) == given for n in (1, 50, 1000, 100_000))


def test_the_default_is_auto_and_the_option_takes_auto_or_a_positive_integer():
    assert FitConfig().bags_per_step == AUTO
    assert FitConfig(bags_per_step="AUTO").bags_per_step == AUTO
    assert FitConfig(bags_per_step="4").bags_per_step == 4
    assert FitConfig(bags_per_step=2.0).bags_per_step == 2  # type: ignore[arg-type]
    for bad in (0, -1, "some", 1.5, True):
        with pytest.raises(ValueError, match=r"bags_per_step .* \(--bags-per-step\): must be "
                                             r"auto or an integer >= 1"):
            FitConfig(bags_per_step=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [AUTO, 5])
def test_config_round_trip_keeps_the_given_value(value):
    cfg = TrainConfig(features="f", labels="l", bags_per_step=value)
    data = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert data["bags_per_step"] == value
    assert TrainConfig.from_dict(data).bags_per_step == value


def test_an_epoch_plan_batches_by_the_resolved_value():
    offsets = torch.arange(0, 3 * 200 + 1, 3)  # 200 bags of 3 instances
    gen = torch.Generator().manual_seed(0)
    auto = epoch_plan(offsets, FitConfig(), gen)
    assert [len(b) for b in auto.batches[:-1]] == [3] * (len(auto.batches) - 1)
    assert len(auto.batches) == math.ceil(200 / 3) >= AUTO_MIN_STEPS
    explicit = epoch_plan(offsets, FitConfig(bags_per_step=8), gen)
    assert len(explicit.batches) == 25


def test_fit_records_the_bags_per_step_it_used():
    cohort = planted_cohort(n_bags=40)
    model = build_model("abmil", cohort.feature_dim, 2, seed=0, embed_dim=8, attention_dim=4)
    assert fit(model, cohort, epochs=1).config.bags_per_step == 1
    assert fit(model, cohort, epochs=1, bags_per_step=6).config.bags_per_step == 6
    base = FitConfig(epochs=1, bags_per_step=4)
    assert fit(model, cohort, config=base).config.bags_per_step == 4
    assert base.bags_per_step == 4 and FitConfig(epochs=1).bags_per_step == AUTO


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_patients=30)


def test_train_records_and_prints_the_resolved_value(cohort, tmp_path):
    common = [cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+", *fast_args(1)]
    res = invoke("train", *common, "--out", tmp_path / "auto")
    assert res.exit_code == 0, res.output
    assert "bags per optimiser step: 1 (auto)" in res.output
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["bags_per_step"] == AUTO and saved["meta"]["bags_per_step"] == 1
    res = invoke("train", *common, "--bags-per-step", "3", "--out", tmp_path / "three")
    assert res.exit_code == 0, res.output
    assert "bags per optimiser step: 3\n" in res.output
    saved = yaml.safe_load((tmp_path / "three" / "config.yaml").read_text())
    assert saved["bags_per_step"] == 3 and saved["meta"]["bags_per_step"] == 3
    res = invoke("train", *common, "--bags-per-step", "0", "--out", tmp_path / "zero")
    assert res.exit_code == 2
    assert "bags_per_step 0 (--bags-per-step): must be auto or an integer >= 1" in res.output


def test_cv_records_the_resolved_value_of_each_fold(cohort, tmp_path):
    res = invoke("cv", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--folds", "3", *fast_args(1), "--out", tmp_path / "cv")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "cv" / "config.yaml").read_text())
    assert saved["meta"]["bags_per_step"] == [1, 1, 1]
    assert "bags per optimiser step: 1 (auto)" in res.output


@pytest.mark.parametrize("vectorise", [True, False])
def test_a_sweep_records_the_value_each_fit_used(vectorise):
    from balnmp_mil.training.sweep import sweep

    cohort = planted_cohort(n_bags=18, hi=12)
    idx = np.arange(18)
    splits = [(idx[idx % 3 != 0], idx[idx % 3 == 0])]
    res = sweep("abmil", cohort, splits, seeds=(0,), lrs=(5e-3,), epochs=1, vectorise=vectorise,
                model_kwargs={"dropout": 0.0, "embed_dim": 8, "attention_dim": 4})
    assert [r.config.bags_per_step for r in res.results] == [1]

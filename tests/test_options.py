"""One declaration per option: the FitConfig / TrainConfig fields are the command line, the
config.yaml keys, the Python keywords and the scikit-learn parameters, with one check each;
choices follow the registries, so a newly registered model or optimiser is accepted as is."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml
from _data import fast_args, make_tiny_cohort
from click.testing import CliRunner

from balnmp_mil.cli.group import main
from balnmp_mil.training.config import FitConfig
from balnmp_mil.workflow.config import CVConfig, TrainConfig

FIT_FIELDS = [f.name for f in dataclasses.fields(FitConfig)]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("options"), n_patients=24)


@pytest.fixture(scope="module")
def run(cohort):
    out = cohort.features.parent / "run"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--out", out, *fast_args(1))
    assert res.exit_code == 0, res.output
    return out


def test_every_training_option_is_a_flag_of_train_and_cv_and_a_config_key(run):
    from balnmp_mil.cli.train import cv_cmd, train_cmd

    for command, cls in ((train_cmd, TrainConfig), (cv_cmd, CVConfig)):
        params = {p.name for p in command.params}
        assert set(FIT_FIELDS) <= params, set(FIT_FIELDS) - params
        own = {"config", "out", "overwrite", "help"}
        assert params - own <= {f.name for f in dataclasses.fields(cls)}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert set(FIT_FIELDS) <= set(saved)
    assert saved["momentum"] == FitConfig().momentum and saved["epochs"] == 1


def test_the_estimator_takes_fitconfigs_fields_with_its_defaults():
    from balnmp_mil.training.estimator import NOT_PARAMETERS, MILClassifier

    params = inspect.signature(MILClassifier.__init__).parameters
    names = [n for n in params if n != "self"]
    assert names == ["model", "model_kwargs", *[f for f in FIT_FIELDS if f not in NOT_PARAMETERS]]
    defaults = FitConfig()
    for name in names[2:]:
        assert params[name].default == getattr(defaults, name), name
    assert set(NOT_PARAMETERS) <= set(FIT_FIELDS)


def test_sgd_momentum_is_reachable_from_the_command_line_and_config_yaml(cohort, tmp_path,
                                                                        monkeypatch):
    from balnmp_mil.training import optim

    seen: list[float] = []
    build = optim.SGD.build

    def spy(params, lr, weight_decay, momentum):
        seen.append(momentum)
        return build(params, lr, weight_decay, momentum)

    monkeypatch.setattr(optim.SGD, "build", staticmethod(spy))
    out = tmp_path / "sgd"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--optimizer", "sgd", "--momentum", "0.5", "--out", out, *fast_args(1))
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["momentum"] == 0.5
    res = invoke("train", "--config", out / "config.yaml", "--out", tmp_path / "again")
    assert res.exit_code == 0, res.output
    assert seen == [0.5, 0.5]


CHECKS = [
    ("epochs", 0, r"epochs 0 \(--epochs\): must be an integer >= 1"),
    ("lr", -1, r"lr -1(\.0)? \(--lr\): must be a number > 0"),
    ("momentum", 1.5, r"momentum 1\.5 \(--momentum\): must be a number in \[0, 1\)"),
    ("optimizer", "lbfgs", r"unknown optimizer 'lbfgs' \(--optimizer\); choose one of adam"),
    ("schedule", "step", r"unknown learning-rate schedule 'step' \(--schedule\)"),
    ("monitor", "acc", r"unknown monitor 'acc' \(--monitor\); choose one of auc, loss"),
    ("bag_level", "tile", r"unknown bag level 'tile' \(--bag-level\)"),
    ("ci", "wald", r"unknown CI method 'wald' \(--ci\)"),
    ("model", "nosuch", r"unknown model 'nosuch' \(--model\); choose one of .*abmil"),
]


@pytest.mark.parametrize("key,value,pattern", CHECKS, ids=[c[0] for c in CHECKS])
def test_one_check_for_the_command_line_and_config_yaml(run, tmp_path, key, value, pattern):
    res = invoke("train", "--config", run / "config.yaml", f"--{key.replace('_', '-')}", value,
                 "--out", tmp_path / "cli")
    assert res.exit_code == 2 and re.search(pattern, res.output), res.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    res = invoke("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "yaml")
    assert res.exit_code == 2 and re.search(pattern, res.output), res.output
    assert "c.yaml" in res.output and "Traceback" not in res.output
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(features="f", labels="l", **{key: value})
    assert not (tmp_path / "cli").exists() and not (tmp_path / "yaml").exists()


def test_values_are_normalised_the_same_way_everywhere():
    cfg = TrainConfig(features=Path("f"), labels="l", lr="1e-3", epochs=3.0,  # type: ignore[arg-type]
                      class_weights=(1, 2))
    assert cfg.features == "f" and cfg.lr == 1e-3 and isinstance(cfg.epochs, int)
    assert cfg.class_weights == [1.0, 2.0]
    with pytest.raises(ValueError, match=r"class_weights .*--class-weights"):
        FitConfig(class_weights="heavy")
    with pytest.raises(ValueError, match=r"amp yes \(--amp\): must be true or false"):
        FitConfig(amp="yes")  # type: ignore[arg-type]


@pytest.fixture
def dummy_plugins():
    """A model and an optimiser registered the way a plugin would, removed afterwards."""
    from balnmp_mil.models import MODELS, register_model
    from balnmp_mil.models.pool import MeanPool
    from balnmp_mil.training.optim import OPTIMIZERS, SGD

    @register_model("dummy_mean")
    class DummyMean(MeanPool):
        pass

    @OPTIMIZERS.register("dummy_sgd")
    class DummySGD(SGD):
        stackable = False

    yield DummyMean, DummySGD
    # A Registry has no unregister: drop the test's entries so other tests never see them.
    MODELS._entries.pop("dummy_mean")
    OPTIMIZERS._entries.pop("dummy_sgd")


def test_a_newly_registered_model_and_optimiser_are_command_line_choices(cohort, tmp_path,
                                                                          dummy_plugins):
    import json

    from balnmp_mil.cli.train import train_cmd

    res = CliRunner().invoke(main, ["train", "--help"])
    assert "dummy_mean" in res.output and "dummy_sgd" in res.output
    out = tmp_path / "plugin"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--model", "dummy_mean", "--optimizer", "dummy_sgd", "--epochs", "1",
                 "--device", "cpu", "--n-bootstrap", "20", "--model-arg", "embed_dim=8",
                 "--out", out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "model.json").read_text())["name"] == "dummy_mean"
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"] == "dummy_sgd"
    assert train_cmd.name == "train"


def test_model_arguments_the_model_does_not_take_are_refused_by_name(cohort, tmp_path):
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--model", "mean", "--model-arg", "hidden=128", "--epochs", "1",
                 "--out", tmp_path / "r")
    assert res.exit_code == 2, res.output
    assert "model 'mean' takes no 'hidden' (--model-arg); it takes embed_dim, dropout" in res.output


def test_the_training_options_table_of_models_md_lists_every_field_with_its_default():
    import ast

    text = (Path(__file__).parents[1] / "docs" / "models.md").read_text()
    section = text.split("## Training options", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip(" `") for n in cells[0].split(",")]
        defaults = [d.strip() for d in cells[1].split(",")]
        documented.update(zip(names, defaults, strict=True))
    assert set(documented) == set(FIT_FIELDS)
    defaults = FitConfig()
    for name, shown in documented.items():
        try:
            value = ast.literal_eval(shown.strip("`"))
        except (ValueError, SyntaxError):
            continue  # prose, e.g. the device: "cohort's"
        assert value == getattr(defaults, name), name

"""`--protocol paper`: the BALNMP code's training schedule as one option, each piece also its
own option; the warm restarts stepped as the official script steps them; the train-AUC stop."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from _data import planted_cohort
from _docs_helpers import ROOT
from click.testing import CliRunner

from balnmp_cache.cli import main as extract_main
from balnmp_mil import build_model, fit
from balnmp_mil.cli import main
from balnmp_mil.training import FitConfig
from balnmp_mil.training.optim import SCHEDULES


def test_warm_restarts_equal_torch_stepped_at_the_start_of_each_epoch() -> None:
    """`code/train.py`: `CosineAnnealingWarmRestarts(T_0=20, T_mult=2)`, `scheduler.step()`
    before each epoch's training: epoch e (1-based) trains at the lr after e steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-4, momentum=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=20, T_mult=2)
    official = []
    for _epoch in range(1, 201):
        sched.step()
        official.append(opt.param_groups[0]["lr"])
    ours = [SCHEDULES.get("warm_restarts")(1e-4, e, 200) for e in range(200)]
    assert ours == pytest.approx(official, rel=1e-9, abs=1e-15)
    assert ours[18] < ours[19] == pytest.approx(1e-4)  # the restart after 20 epochs


def test_protocol_sets_the_defaults_and_yields_to_explicit_options() -> None:
    cfg = FitConfig(protocol="paper")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.schedule) == (
        "sgd", 1e-4, 0.3, 1e-3, "warm_restarts")
    assert (cfg.epochs, cfg.train_stop_auc, cfg.class_weights, cfg.bags_per_step) == (
        200, 0.98, None, 1)
    mine = FitConfig(protocol="paper", lr=1e-3, epochs=5, bags_per_step=4)
    assert (mine.lr, mine.epochs, mine.bags_per_step, mine.momentum) == (1e-3, 5, 4, 0.3)
    assert FitConfig(optimizer="sgd").momentum == 0.0  # no hidden 0.9
    with pytest.raises(ValueError, match="--protocol"):
        FitConfig(protocol="nope")


def test_training_stops_after_an_epoch_above_the_train_auc() -> None:
    cohort = planted_cohort(n_bags=24, hi=8)
    model = build_model("abmil", cohort.feature_dim, 2, seed=0)
    run = fit(model, cohort, epochs=30, lr=5e-3, train_stop_auc=0.9, seed=0)
    aucs = [row["train_auc"] for row in run.history]
    assert len(aucs) < 30 and aucs[-1] > 0.9 and all(a <= 0.9 for a in aucs[:-1])


@pytest.fixture(scope="module")
def standin_features(tmp_path_factory):
    """The BCNB stand-in (examples/bcnb/make_standin.py), its paper_patches extracted small."""
    root = tmp_path_factory.mktemp("standin")
    subprocess.run([sys.executable, str(ROOT / "examples" / "bcnb" / "make_standin.py"),
                    "--out", str(root / "BCNB"), "--patients", "10"], check=True)
    res = CliRunner().invoke(extract_main, [
        str(root / "BCNB" / "paper_patches" / "patches"), "--backend", "patches", "--level", "0",
        "--patch-size", "256", "--encoder", "resnet18", "--weights", "none", "--input-size",
        "32", "--device", "cpu", "--out", str(root / "features"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root


def test_protocol_paper_trains_on_the_bcnb_standin(standin_features) -> None:
    root = standin_features
    out = root / "run"
    res = CliRunner().invoke(main, [
        "train", str(root / "features"), "--labels",
        str(root / "BCNB" / "patient-clinical-data.xlsx"), "--task", "n0_vs_n+",
        "--model", "balnmp", "--instances-per-bag", "10", "--protocol", "paper",
        "--epochs", "3", "--val", "0.3", "--test", "0.3", "--device", "cpu",
        "--n-bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["protocol"] == "paper" and saved["epochs"] == 3
    assert (saved["optimizer"], saved["momentum"], saved["schedule"], saved["lr"]) == (
        "sgd", 0.3, "warm_restarts", 1e-4)
    assert saved["class_weights"] is None and saved["bags_per_step"] == 1
    history = (out / "history.csv").read_text().splitlines()
    assert "train_auc" in history[0] and len(history) in (2, 3, 4)
    first_lr = float(history[1].split(",")[history[0].split(",").index("lr")])
    assert first_lr == pytest.approx(SCHEDULES.get("warm_restarts")(1e-4, 0, 3))


def test_recipe_with_the_paper_protocol_and_official_splits(standin_features, tmp_path,
                                                            capsys) -> None:
    """`run_recipe.py --protocol paper --official-splits DIR`: the published split files (here
    generated for the stand-in's patients, bags of 4 of their patch files) become every run's
    patients, and their fixed bags (`--bags`) the image models' bags."""
    import json

    import pandas as pd
    from _docs_helpers import import_script

    run_recipe = import_script(ROOT / "examples" / "bcnb" / "run_recipe.py")
    standin = standin_features / "BCNB"
    patches = standin / "paper_patches" / "patches"
    table = pd.read_excel(standin / "patient-clinical-data.xlsx", dtype={"Patient ID": str})
    ids = table["Patient ID"].tolist()
    labels = [0 if s == "N0" else 1 for s in table["ALN status"]]
    order = sorted(range(len(ids)), key=lambda i: labels[i])  # both classes in every part
    parts = {"train": order[2:-2], "val": [order[0], order[-1]], "test": [order[1], order[-2]]}
    official = tmp_path / "json"
    official.mkdir()
    n_bags = 0
    for part, rows in parts.items():
        entries = []
        for i in rows:
            files = sorted(f.name for f in (patches / ids[i]).iterdir())
            entries += [{"id": ids[i], "label": str(labels[i]),
                         "patch_paths": [f"patches/{ids[i]}/{f}" for f in files[b : b + 4]]}
                        for b in range(0, len(files) - 3, 4)]  # leftovers dropped
        n_bags += len(entries)
        (official / f"{part}-type-0.json").write_text(json.dumps(entries))
    out = tmp_path / "out"
    status = run_recipe.main([str(standin), str(out), "--encoder", "resnet18", "--weights",
                              "none", "--input-size", "32", "--epochs", "2", "--device", "cpu",
                              "--n-bootstrap", "20", "--experiments", "n0_vs_n+",
                              "--settings", "image", "--protocol", "paper",
                              "--official-splits", str(official)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "$ balnmp-mil paper splits" in printed and "--protocol paper" in printed
    run = out / "runs" / "n0_vs_n+" / "image"
    split = json.loads((run / "splits.json").read_text())["splits"][0]
    assert split["test"] == [ids[i] for i in parts["test"]]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["bags"] == str(out.resolve() / "paper-splits" / "n0_vs_n+.bags.json")
    assert saved["meta"]["n_bags"] == n_bags and saved["instances_per_bag"] is None
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"] == "warm_restarts"

"""`balnmp-mil` end to end on a tiny random-feature store: run directories, reproduction from
config.yaml, evaluate / predict, cross-validation, and the wording + exit status 2 of every
input error a user can trigger."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _data import DIM, fast_args, make_tiny_cohort, write_store
from click.testing import CliRunner

from balnmp_mil.cli.group import main
from balnmp_mil.workflow import rundir

RUN_FILES = {"config.yaml", "model.pt", "model.json", "splits.json", "predictions.csv",
             "metrics.json", "report.md", "roc.png", "history.csv"}


def invoke(*args: object) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_patients=30)


@pytest.fixture(scope="module")
def run(cohort):
    out = cohort.features.parent / "run"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--model", "abmil", "--out", out, "--lr", "0.01", *fast_args(4))
    assert res.exit_code == 0, res.output
    return out, res.output


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_train_writes_the_run_directory(run, cohort):
    out, output = run
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert _hidden(out.parent) == []
    preds = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert list(preds.columns) == ["patient_id", "split", "label", "prob_N0", "prob_N+"]
    assert sorted(preds["patient_id"], key=int) == [str(i) for i in range(1, 31)]
    np.testing.assert_allclose(preds[["prob_N0", "prob_N+"]].sum(axis=1), 1.0, atol=1e-5)
    truth = cohort.table.set_index(cohort.table["Patient ID"].astype(str))["ALN status"]
    assert (preds["label"] == (truth.loc[preds["patient_id"]] != "N0").astype(int).values).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["class_names"] == ["N0", "N+"]
    assert 0 <= metrics["test"]["auc"] <= 1 and len(metrics["test"]["auc_ci"]) == 2
    assert "at_youden" in metrics["test"] and metrics["youden_split"] == "val"
    assert metrics["test"]["at_youden"]["threshold_source"] == "youden (val ROC)"
    own = metrics["test"]["at_roc_cutoff"]  # the paper's operating point: the cohort's own ROC
    assert own["threshold_source"] == "youden (own ROC)" and len(own["ppv_ci"]) == 2
    splits = json.loads((out / "splits.json").read_text())["splits"][0]
    assert sorted(preds.loc[preds["split"] == "test", "patient_id"]) == sorted(splits["test"])
    assert "test  AUC" in output and str(out) in output
    assert "| test |" in (out / "report.md").read_text()


def test_without_val_the_last_epoch_is_kept_and_the_signal_learned(cohort, tmp_path):
    out = tmp_path / "noval"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--val", "0", "--lr", "0.01", "--out", out, *fast_args(15))
    assert res.exit_code == 0, res.output
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["split"]) == {"train", "test"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["youden_split"] == "train" and "val" not in metrics
    # the planted signal is learned: patients, labels and predictions are aligned
    train = preds[preds["split"] == "train"]
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(train["label"], train["prob_N+"]) > 0.85


@pytest.mark.gpu
def test_train_on_cuda_then_apply_on_cpu(cohort, tmp_path):
    out = tmp_path / "cuda"
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--clinical", cohort.labels, "--out", out, "--n-bootstrap", "50",
                 "--epochs", "3", "--device", "cuda")
    assert res.exit_code == 0, res.output
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["meta"]["device"] == "cuda"
    res = invoke("predict", out, cohort.features, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert res.exit_code == 0, res.output
    new = pd.read_csv(tmp_path / "p.csv", dtype={"patient_id": str}).set_index("patient_id")
    old = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}).set_index("patient_id")
    np.testing.assert_allclose(new.loc[old.index, "prob_N+"], old["prob_N+"], atol=2e-2)


def test_config_reproduces_the_run(run, tmp_path):
    out, _ = run
    res = invoke("train", "--config", out / "config.yaml", "--out", tmp_path / "again")
    assert res.exit_code == 0, res.output
    a = pd.read_csv(out / "predictions.csv")
    b = pd.read_csv(tmp_path / "again" / "predictions.csv")
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    assert (out / "splits.json").read_text() == (tmp_path / "again" / "splits.json").read_text()


def test_options_override_config_and_splits_are_reused(run, tmp_path):
    out, _ = run
    res = invoke("train", "--config", out / "config.yaml", "--seed", "7", "--epochs", "1",
                 "--splits", out / "splits.json", "--out", tmp_path / "seed7")
    assert res.exit_code == 0, res.output
    import yaml

    cfg = yaml.safe_load((tmp_path / "seed7" / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["epochs"] == 1 and cfg["lr"] == 0.01
    assert (json.loads((tmp_path / "seed7" / "splits.json").read_text())
            == json.loads((out / "splits.json").read_text()))


def test_evaluate_recomputes_saved_metrics(run, tmp_path):
    out, _ = run
    res = invoke("evaluate", out, "--out", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "metrics.json").read_text())
    again = json.loads((tmp_path / "m.json").read_text())
    for part in ("train", "val", "test"):
        assert again[part]["auc"] == pytest.approx(saved[part]["auc"])
        assert again[part]["auc_ci"] == pytest.approx(saved[part]["auc_ci"])
    assert "| test |" in res.output and "Youden threshold" in res.output


def test_predict_and_evaluate_on_new_data(run, cohort, tmp_path):
    out, _ = run
    res = invoke("predict", out, cohort.features, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    new = pd.read_csv(tmp_path / "p.csv", dtype={"patient_id": str}).set_index("patient_id")
    old = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert list(new.columns) == ["prob_N0", "prob_N+", "prediction"]
    np.testing.assert_allclose(new.loc[old.index, "prob_N+"], old["prob_N+"], atol=1e-5)
    res = invoke("evaluate", out, "--features", cohort.features, "--labels", cohort.labels)
    assert res.exit_code == 0, res.output
    assert "| new | 30 (" in res.output


def test_clinical_runs(cohort, tmp_path):
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--clinical", cohort.labels, "--clinical-variant", "paper5",
                 "--out", tmp_path / "clin", *fast_args(2))
    assert res.exit_code == 0, res.output
    enc = json.loads((tmp_path / "clin" / "clinical_encoder.json").read_text())
    assert enc["variant"] == "paper5"
    assert json.loads((tmp_path / "clin" / "model.json").read_text())["clinical_dim"] == 5
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--clinical", cohort.labels, "--clinical-only", "--out", tmp_path / "lr",
                 "--n-bootstrap", "50")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "lr" / "model.json").read_text())["kind"] == "clinical_logreg"
    assert not (tmp_path / "lr" / "model.pt").exists()
    res = invoke("predict", tmp_path / "lr", cohort.features, "--out", tmp_path / "lr.csv")
    assert res.exit_code == 0, res.output
    new = pd.read_csv(tmp_path / "lr.csv", dtype={"patient_id": str}).set_index("patient_id")
    old = pd.read_csv(tmp_path / "lr" / "predictions.csv",
                      dtype={"patient_id": str}).set_index("patient_id")
    np.testing.assert_allclose(new.loc[old.index, "prob_N+"], old["prob_N+"], atol=1e-6)


def test_three_class_run(cohort, tmp_path):
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "three_class",
                 "--clinical", cohort.labels, "--clinical-only", "--out", tmp_path / "three",
                 "--n-bootstrap", "50")
    assert res.exit_code == 0, res.output
    preds = pd.read_csv(tmp_path / "three" / "predictions.csv")
    assert [c for c in preds.columns if c.startswith("prob_")] == [
        "prob_N0", "prob_N+(1-2)", "prob_N+(>2)"]
    metrics = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert set(metrics["test"]["per_class_auc"]) == {"N0", "N+(1-2)", "N+(>2)"}
    assert metrics["youden_threshold"] is None and "at_youden" not in metrics["test"]
    assert len(metrics["test"]["confusion"]) == 3
    assert (tmp_path / "three" / "roc.png").is_file()


def test_cv_prints_mean_sd_table_for_three_settings(cohort, tmp_path):
    res = invoke("cv", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--folds", "3", "--clinical", cohort.labels, "--out", tmp_path / "cv",
                 *fast_args(2))
    assert res.exit_code == 0, res.output
    for setting in ("abmil · image", "abmil · image+clinical", "clinical (logistic regression)"):
        assert f"| {setting} | 3 | " in res.output
    assert "±" in res.output
    rows = pd.read_csv(tmp_path / "cv" / "cv.csv")
    assert len(rows) == 9 and set(rows["fold"]) == {0, 1, 2}
    preds = pd.read_csv(tmp_path / "cv" / "predictions.csv")
    per_setting = preds.groupby("setting")["patient_id"].apply(lambda s: sorted(s))
    assert all(ids == list(range(1, 31)) for ids in per_setting), "each patient tested once"
    assert {"report.md", "roc.png", "metrics.json", "splits.json"} <= {
        p.name for p in (tmp_path / "cv").iterdir()}


def test_heatmap_draws_attention_on_the_slide(run, tmp_path):
    from PIL import Image

    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    out, _ = run
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    write_store(store, {"hm": rng.normal(size=(20, DIM))}, dtype="float32", grid=64)
    image = np.full((512, 512, 3), 235, np.uint8)
    image[64:448, 64:448] = (200, 120, 170)
    slide = write_pyramidal_tiff(tmp_path / "hm.tiff", image, mpp=0.5, levels=2, tile=256)
    png = tmp_path / "hm.png"
    res = invoke("heatmap", out, slide, "--out", png, "--features", store, "--top-k", "4",
                 "--thumbnail-size", "256")
    assert res.exit_code == 0, res.output
    assert "hm: 20 patches" in res.output and "p(N+)=" in res.output
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    res = invoke("heatmap", out, tmp_path / "other.tiff", "--out", png, "--features", store)
    assert res.exit_code == 2 and "slide" in res.output and "other.tiff" in res.output
    write_pyramidal_tiff(tmp_path / "absent.tiff", image, mpp=0.5, levels=1, tile=256)
    res = invoke("heatmap", out, tmp_path / "absent.tiff", "--out", png, "--features", store)
    assert res.exit_code == 2 and "absent" in res.output, res.output


@pytest.mark.parametrize("suffix", [".ome.tiff", ".ome.tif", ".bmp"])
def test_heatmap_finds_the_bag_extraction_stored(run, tmp_path, suffix):
    """Extraction stores `x.ome.tiff` as bag `x`; heatmap used its own suffix list and looked
    for `x.ome` (one slide-id rule now serves both stages)."""
    import tifffile
    from PIL import Image

    from balnmp_cache.slides.ids import slide_id_from_path

    out, _ = run
    store = tmp_path / "store"
    write_store(store, {"x": np.random.default_rng(1).normal(size=(6, DIM))}, dtype="float32",
                grid=64)
    image = np.full((256, 256, 3), 200, np.uint8)
    slide = tmp_path / f"x{suffix}"
    if suffix == ".bmp":
        Image.fromarray(image).save(slide)
    else:
        tifffile.imwrite(slide, image, photometric="rgb", tile=(64, 64))
    assert slide_id_from_path(slide) == "x"
    res = invoke("heatmap", out, slide, "--out", tmp_path / "x.png", "--features", store,
                 "--mpp", "0.5", "--thumbnail-size", "128", "--top-k", "2")
    assert res.exit_code == 0, res.output
    assert "x: 6 patches" in res.output


def test_heatmap_never_draws_a_guessed_footprint(run, tmp_path):
    """CLAM's h5_files carry no attributes and its pt_files no coordinates: heatmap refuses,
    naming the option that supplies what is missing, instead of drawing 256 px squares (or
    every patch at (-1, -1)); CLAM's patches/ beside them gives the true footprint."""
    import torch
    from _data import clam_features, clam_patches_h5

    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    out, _ = run
    image = np.full((512, 512, 3), 235, np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "hm.tiff", image, mpp=0.5, levels=2, tile=256)
    cells = np.random.default_rng(0).permutation(16)[:10]
    coords = np.stack([cells % 4, cells // 4], axis=1) * 128
    feats = np.random.default_rng(1).normal(size=(10, DIM))
    clam = tmp_path / "clam"
    clam_features(clam, "hm", feats, coords)
    args = ["heatmap", out, slide, "--out", tmp_path / "hm.png", "--features", clam,
            "--thumbnail-size", "256", "--top-k", "2",
            "--allow-store-mismatch"]  # a CLAM cache is not what the run was trained on
    res = invoke(*args)
    assert res.exit_code == 2 and "--patch-size-level0" in res.output, res.output
    assert "patches/" in res.output and not (tmp_path / "hm.png").exists()
    assert invoke(*args, "--patch-size-level0", "128").exit_code == 0
    (clam / "patches").mkdir()
    clam_patches_h5(clam / "patches" / "hm.h5", coords, patch_size=64, patch_level=1,
                    downsample=(2.0, 2.0), level_dim=(256, 256))  # fmt: skip
    res = invoke(*args)
    assert res.exit_code == 0 and "hm: 10 patches" in res.output, res.output
    pt_only = tmp_path / "pt" / "pt_files"
    pt_only.mkdir(parents=True)
    torch.save(torch.from_numpy(feats.astype(np.float32)), pt_only / "hm.pt")
    res = invoke(*args[:5], "--features", pt_only.parent, "--patch-size-level0", "128")
    assert res.exit_code == 2 and "has no patch coordinates" in res.output, res.output
    assert "--features" in res.output


# ------------------------------------------------------------------------------ input errors
def _tables(cohort, tmp_path):
    t = cohort.table
    t[["Patient ID", "Age(years)"]].to_csv(tmp_path / "nocol.csv", index=False)
    pd.concat([t, t.iloc[[0]].assign(**{"Patient ID": 999})]).to_csv(tmp_path / "extra.csv",
                                                                     index=False)
    (tmp_path / "bad.yaml").write_text(f"features: {cohort.features}\nlabels: x\nfoo: 1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "exists").mkdir()


ERRORS = [
    ("missing labels", ["--labels", "{tmp}/nope.csv"], r"labels file .*nope\.csv does not exist"),
    ("missing column", ["--labels", "{tmp}/nocol.csv"],
     r"labels file .*nocol\.csv: .*needs an 'ALN status' column"),
    ("unknown task", ["--task", "n0_vs_n9"], r"unknown task 'n0_vs_n9' \(--task\); choose one of .*n0_vs_n\+"),
    ("unknown model", ["--model", "nosuch"], r"unknown model 'nosuch' \(--model\); choose one of .*abmil"),
    ("patient not in store", ["--labels", "{tmp}/extra.csv"],
     r"not in the feature store .*features: \['999'\]"),
    ("run dir exists", ["--out", "{tmp}/exists"],
     r"exists: already exists; choose another --out or pass --overwrite"),
    ("unknown config key", ["--config", "{tmp}/bad.yaml"],
     r"config file .*bad\.yaml: unknown option\(s\) foo"),
    ("config not a mapping", ["--config", "{tmp}/list.yaml"],
     r"config file .*list\.yaml must hold a mapping"),
    ("missing config", ["--config", "{tmp}/none.yaml"], r"config file .*none\.yaml does not exist"),
    ("missing store", ["--features-override", "{tmp}/nostore"],
     r"feature store .*nostore does not exist"),
    ("bad model arg", ["--model-arg", "hidden"], r"--model-arg 'hidden': expected KEY=VALUE"),
    ("clinical column", ["--clinical", "{tmp}/nocol.csv"],
     r"clinical table .*nocol\.csv: .*no column for 'tumour_size'"),
    ("splits of another cohort", ["--splits", "{tmp}/splits.json"],
     r"splits file .*splits\.json: patient 77 \(train split\) is not in the cohort"),
]


@pytest.mark.parametrize("name,extra,pattern", ERRORS, ids=[e[0] for e in ERRORS])
def test_input_errors_exit_2_and_name_the_culprit(cohort, tmp_path, name, extra, pattern):
    import re

    from balnmp_mil.data.splits import Split, save_splits

    _tables(cohort, tmp_path)
    save_splits(Split(train=["77"], val=["1"], test=["2"]), tmp_path / "splits.json")
    opts = {"--labels": str(cohort.labels), "--task": "n0_vs_n+", "--out": str(tmp_path / "r")}
    features = str(cohort.features)
    extra = [e.format(tmp=tmp_path) for e in extra]
    if extra[0] == "--features-override":
        features, extra = extra[1], []
    if extra[0:1] == ["--config"]:
        args = ["train", *extra, "--out", opts["--out"]]
    else:
        for key, value in zip(extra[::2], extra[1::2]):
            opts[key] = value
        args = ["train", features, *[x for kv in opts.items() for x in kv], *fast_args(1)]
        if extra[0:1] == ["--model-arg"]:
            args += extra
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert re.search(pattern, res.output), res.output
    assert not (tmp_path / "r").exists()
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("stage", ["balnmp_mil.training.fit.fit", "balnmp_mil.evaluation.plots.plot_roc"])
def test_failure_mid_way_leaves_no_half_written_run(cohort, tmp_path, monkeypatch, stage):
    module, attr = stage.rsplit(".", 1)

    def boom(*args, **kwargs):
        raise RuntimeError(f"{attr} failed")

    monkeypatch.setattr(importlib.import_module(module), attr, boom)
    target = tmp_path / "run"
    target.mkdir()
    rundir.write_config(target / rundir.CONFIG, {"meta": {"balnmp_version": "0"}})
    (target / "keep.txt").write_text("previous run")
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--out", target, "--overwrite", *fast_args(1))
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)
    assert sorted(p.name for p in target.iterdir()) == [rundir.CONFIG, "keep.txt"]
    assert _hidden(tmp_path) == []
    if attr != "fit":
        return
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--out", tmp_path / "fresh", *fast_args(1))
    assert res.exit_code == 1 and not (tmp_path / "fresh").exists()
    assert _hidden(tmp_path) == []


OTHER_ERRORS = [
    ("cv clinical setting without table",
     ["cv", "{features}", "--labels", "{labels}", "--task", "n0_vs_n+", "--compare",
      "image+clinical", "--out", "{tmp}/cv"], r"--compare image\+clinical needs --clinical TABLE"),
    ("cv unknown setting",
     ["cv", "{features}", "--labels", "{labels}", "--compare", "pixels", "--out", "{tmp}/cv"],
     r"unknown setting 'pixels' \(--compare\); choose one of image, image\+clinical, clinical"),
    ("cv one fold", ["cv", "{features}", "--labels", "{labels}", "--folds", "1", "--out",
                     "{tmp}/cv"], r"folds 1 \(--folds\): must be an integer >= 2"),
    ("cv unknown model", ["cv", "{features}", "--labels", "{labels}", "--models", "abmil,nope",
                          "--out", "{tmp}/cv"], r"unknown model 'nope'"),
    ("evaluate features without labels", ["evaluate", "{run}", "--features", "{features}"],
     r"needs both --features and --labels"),
    ("predict missing store", ["predict", "{run}", "{tmp}/nostore", "--out", "{tmp}/p.csv"],
     r"feature store .*nostore does not exist"),
    ("predict missing labels", ["predict", "{run}", "{features}", "--labels", "{tmp}/no.csv",
                                "--out", "{tmp}/p.csv"], r"labels file .*no\.csv does not exist"),
    ("train without labels", ["train", "{features}", "--out", "{tmp}/r"],
     r"missing --labels CSV"),
]


@pytest.mark.parametrize("name,args,pattern", OTHER_ERRORS, ids=[e[0] for e in OTHER_ERRORS])
def test_other_command_errors(run, cohort, tmp_path, name, args, pattern):
    import re

    values = {"features": cohort.features, "labels": cohort.labels, "tmp": tmp_path,
              "run": run[0]}
    res = invoke(*[a.format(**values) for a in args])
    assert res.exit_code == 2, res.output
    assert re.search(pattern, res.output), res.output
    assert not (tmp_path / "cv").exists() and not (tmp_path / "p.csv").exists()


def test_run_errors_for_apply_commands(tmp_path):
    res = invoke("evaluate", tmp_path / "nope")
    assert res.exit_code == 2 and "run directory" in res.output and "nope" in res.output
    res = invoke("predict", tmp_path, tmp_path / "f", "--out", tmp_path / "p.csv")
    assert res.exit_code == 2 and "has no config.yaml" in res.output


def test_cli_imports_no_slide_reader():
    code = ("import sys, balnmp_mil.cli.group, balnmp_mil.workflow.apply, balnmp_mil.workflow.heatmap;"
            "bad = [m for m in ('balnmp_cache.slides.base', 'balnmp_cache.slides.registry', 'openslide', 'cucim') if m in sys.modules];"
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_docs_cli_md_is_up_to_date():
    from _docs_helpers import ROOT, import_script

    render = import_script(ROOT / "docs" / "gen_cli_docs.py").render
    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `python docs/gen_cli_docs.py`")

"""Fault suite, stores and runs: a run is applied only to features like those it was trained
on, and a damaged, partial or newer run is a message naming the file, never a traceback.

A run records the encoder, weights, feature dimension, µm/px and patch size of the store it
was trained on (`config.yaml`'s `meta.store`); `predict`, `evaluate --features`, `heatmap` and
`train`/`cv --config RUN/config.yaml` compare a store with that record and refuse a difference
(exit 2, both values named) unless `--allow-store-mismatch` is given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from _data import DIM, fast_args, make_tiny_cohort, write_store
from _faults import assert_refused, mil, train_tiny_run

from balnmp_mil.workflow import rundir


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("runs"), n_patients=20)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    return train_tiny_run(cohort.features, cohort.labels, out)


def other_store(root: Path, dim: int = DIM, grid: int = 448, **attrs: object) -> Path:
    """The cohort's slide ids (1..20) extracted with other settings (`attrs`)."""
    rng = np.random.default_rng(3)
    write_store(root, {str(i): rng.normal(size=(8, dim)) for i in range(1, 21)},
                dtype="float32", grid=grid, attrs=attrs)
    return root


def test_a_run_records_the_store_it_was_trained_on(run):
    meta = yaml.safe_load((run / rundir.CONFIG).read_text())["meta"]
    assert meta["store"] == {"encoder": "resnet50", "weights": "imagenet", "feature_dim": DIM,
                             "target_mpp": 0.5, "patch_size": 224}
    assert meta["run_format"] == rundir.RUN_FORMAT


MISMATCHES = [
    ({"encoder": "uni_v1"}, "encoder 'uni_v1' in FEATURES", "'resnet50' in the run"),
    ({"weights": "sha256:0123abcd"}, "weights 'sha256:0123abcd' in FEATURES",
     "'imagenet' in the run"),
    ({"target_mpp": 1.0}, "µm/px 1.0 in FEATURES", "0.5 in the run"),
    ({"patch_size": 256}, "patch size 256 in FEATURES", "224 in the run"),
]


def _apply(command: str, run: Path, store: Path, cohort, tmp: Path, *extra: object):
    if command == "predict":
        return mil("predict", run, store, "--out", tmp / "p.csv", "--device", "cpu", *extra)
    if command == "evaluate":
        return mil("evaluate", run, "--features", store, "--labels", cohort.labels,
                   "--device", "cpu", *extra)
    return mil(command, store, "--config", run / rundir.CONFIG, "--out", tmp / "again",
               *(["--folds", "2"] if command == "cv" else []), *fast_args(1), *extra)


@pytest.mark.parametrize("command", ["predict", "evaluate", "train", "cv"])
@pytest.mark.parametrize("attrs,found,recorded", MISMATCHES,
                         ids=[next(iter(m[0])) for m in MISMATCHES])
def test_a_store_unlike_the_runs_is_refused(run, cohort, tmp_path, command, attrs, found,
                                             recorded):
    store = other_store(tmp_path / "other", **attrs)
    res = _apply(command, run, store, cohort, tmp_path)
    assert_refused(res, found, recorded, str(run), "--allow-store-mismatch")
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "again").exists()
    res = _apply(command, run, store, cohort, tmp_path, "--allow-store-mismatch")
    assert res.exit_code == 0, res.output


def test_the_consent_is_asked_again_each_time(run, cohort, tmp_path):
    """`--allow-store-mismatch` is not saved in the new run: applying it asks again."""
    store = other_store(tmp_path / "other", encoder="uni_v1")
    res = _apply("train", run, store, cohort, tmp_path, "--allow-store-mismatch")
    assert res.exit_code == 0, res.output
    assert "allow_store_mismatch" not in (tmp_path / "again" / rundir.CONFIG).read_text()
    res = mil("predict", tmp_path / "again", cohort.features, "--out", tmp_path / "p.csv")
    assert_refused(res, "encoder 'resnet50' in FEATURES", "'uni_v1' in the run")


def test_features_of_another_dimension_are_refused_even_when_allowed(run, tmp_path):
    store = other_store(tmp_path / "d32", dim=32)
    for extra in ([], ["--allow-store-mismatch"]):
        res = mil("predict", run, store, "--out", tmp_path / "p.csv", *extra)
        assert_refused(res, "feature dimension 32 in FEATURES", f"{DIM} in the run")
    assert not (tmp_path / "p.csv").exists()


def test_a_hand_written_config_is_not_a_run(cohort, tmp_path):
    """A `--config` without a run's record (written by hand) is checked for nothing."""
    config = tmp_path / "mine.yaml"
    config.write_text(f"labels: {cohort.labels}\ntask: n0_vs_n+\n")
    store = other_store(tmp_path / "other", encoder="uni_v1")
    res = mil("train", store, "--config", config, "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 0, res.output


def _heatmap_inputs(tmp: Path, encoder: str) -> tuple[Path, Path]:
    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    store = other_store(tmp / f"store-{encoder}", grid=64, encoder=encoder)
    image = np.full((512, 512, 3), 230, np.uint8)
    image[64:448, 64:448] = (200, 120, 170)
    slide = write_pyramidal_tiff(tmp / "1.tiff", image, mpp=0.5, levels=2, tile=256)
    return store, slide


def test_heatmap_refuses_a_store_unlike_the_runs(run, tmp_path):
    store, slide = _heatmap_inputs(tmp_path, "uni_v1")
    png = tmp_path / "h.png"
    args = ["heatmap", run, slide, "--out", png, "--features", store, "--thumbnail-size", "128",
            "--top-k", "2"]
    assert_refused(mil(*args), "encoder 'uni_v1' in FEATURES", "--allow-store-mismatch")
    assert not png.exists()
    res = mil(*args, "--allow-store-mismatch")
    assert res.exit_code == 0, res.output


def _old_run(run: Path, root: Path) -> Path:
    """`run` as balnmp 0.1.0 wrote it: no store record, no run format."""
    old = root / "old"
    shutil.copytree(run, old)
    config = yaml.safe_load((old / rundir.CONFIG).read_text())
    config["meta"] = {k: v for k, v in config["meta"].items()
                      if k not in ("store", "run_format")}
    (old / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return old


def test_an_old_run_still_loads_with_a_warning_that_the_check_cannot_be_made(run, tmp_path):
    old = _old_run(run, tmp_path)
    store = other_store(tmp_path / "other", encoder="uni_v1")
    res = mil("predict", old, store, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "records no store settings" in res.output and "cannot be checked" in res.output
    res = mil("predict", old, other_store(tmp_path / "d32", dim=32), "--out", tmp_path / "q.csv")
    assert_refused(res, "feature dimension 32 in FEATURES")  # model.json still says 16


# ------------------------------------------------------------------- damaged or partial runs
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) // 3)])


DAMAGE = [
    ("model.pt", "missing", None),
    ("model.pt", "truncated", _truncate),
    ("model.pt", "garbage", lambda p: p.write_bytes(b"\x00not a torch file" * 10)),
    ("model.json", "missing", None),
    ("model.json", "truncated", _truncate),
    ("model.json", "a list", lambda p: p.write_text("[1, 2]")),
    ("model.json", "unknown model", lambda p: p.write_text('{"name": "nosuch", "in_dim": 16}')),
    ("model.json", "bad keyword", lambda p: p.write_text(
        '{"name": "abmil", "in_dim": 16, "n_classes": 2, "colour": 1}')),
    ("config.yaml", "missing", None),
    ("config.yaml", "garbled", lambda p: p.write_text("features: [\n  - x\n")),
    ("config.yaml", "a list", lambda p: p.write_text("- 1\n- 2\n")),
    ("config.yaml", "bad value", lambda p: p.write_text(
        p.read_text().replace("epochs: 1", "epochs: -3"))),
    ("config.yaml", "binary", lambda p: p.write_bytes(b"\xff\xfe\x00\x01" * 50)),
    ("metrics.json", "truncated", _truncate),
    ("metrics.json", "a list", lambda p: p.write_text("[]")),
    ("metrics.json", "missing", None),
    ("splits.json", "truncated", _truncate),
    ("predictions.csv", "missing", None),
    ("predictions.csv", "truncated", lambda p: p.write_text("patient_id,spl")),
    ("predictions.csv", "no probabilities", lambda p: p.write_text(
        "patient_id,split,label\n1,test,0\n")),
]


@pytest.fixture
def damaged(run, tmp_path, request):
    name, _, damage = request.param
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    if damage is None:
        (copy / name).unlink()
    else:
        damage(copy / name)
    return copy, name


@pytest.mark.parametrize("damaged", DAMAGE, ids=[f"{n} {w}" for n, w, _ in DAMAGE],
                         indirect=True)
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_damaged_run_is_a_message_naming_the_file(damaged, cohort, tmp_path, command):
    copy, name = damaged
    if command == "evaluate":
        res = mil("evaluate", copy)
    else:
        if name == "predictions.csv":
            pytest.skip("predict does not read predictions.csv")
        res = mil("predict", copy, cohort.features, "--out", tmp_path / "p.csv")
    assert_refused(res, name)
    assert not (tmp_path / "p.csv").exists()


def test_a_partial_run_says_what_is_missing(run, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run / rundir.CONFIG, partial / rundir.CONFIG)
    res = mil("evaluate", partial)
    assert_refused(res, f"{partial}", "model.json", "incomplete")


def test_a_run_of_a_newer_balnmp_is_refused_by_version(run, cohort, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    config = yaml.safe_load((newer / rundir.CONFIG).read_text())
    config["meta"].update(balnmp_version="9.0.0", run_format=rundir.RUN_FORMAT + 1)
    (newer / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    for args in (["evaluate", newer], ["predict", newer, cohort.features, "--out", tmp_path / "p.csv"],
                 ["train", "--config", newer / rundir.CONFIG, "--out", tmp_path / "r"]):
        res = mil(*args)
        assert_refused(res, "balnmp 9.0.0", f"run format {rundir.RUN_FORMAT + 1}",
                       "upgrade balnmp")


def test_a_newer_run_with_options_this_balnmp_lacks_asks_for_an_upgrade(run, tmp_path):
    """Same run format, but an option added by a later balnmp: not 'unknown option' alone."""
    newer = tmp_path / "newer"
    shutil.copytree(run, newer)
    config = yaml.safe_load((newer / rundir.CONFIG).read_text())
    config["meta"]["balnmp_version"] = "9.0.0"
    config["focal_gamma"] = 2.0
    (newer / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    res = mil("evaluate", newer)
    assert_refused(res, "focal_gamma", "balnmp 9.0.0", "upgrade balnmp")
    config["meta"]["balnmp_version"] = "0.0.1"  # older: a plain unknown option
    (newer / rundir.CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    res = mil("evaluate", newer)
    assert_refused(res, "unknown option(s) focal_gamma")
    assert "upgrade" not in res.output


@pytest.mark.parametrize("damage", ["truncated", "no stats", "missing"])
def test_a_damaged_clinical_encoder_is_a_message(cohort, tmp_path, damage):
    out = tmp_path / "clinical"
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--clinical", cohort.labels, "--clinical-impute", "--out", out, *fast_args(1))
    assert res.exit_code == 0, res.output
    path = out / rundir.CLINICAL_ENCODER
    if damage == "truncated":
        _truncate(path)
    elif damage == "no stats":
        path.write_text('{"variant": "full", "impute": true}')
    else:
        path.unlink()
    res = mil("predict", out, cohort.features, "--out", tmp_path / "p.csv")
    assert_refused(res, rundir.CLINICAL_ENCODER)

"""Fault suite, labels and tables: a binary task says which class is positive, a label that
cannot mean what it seems (0.5 among 0/1, names mixed with numbers) is refused naming the rows,
cohorts too small for the split are refused with the numbers, and every unreadable table or
splits file is a message naming the file and the command-line fix (exit 2), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from _data import fast_args, make_tiny_cohort
from _faults import assert_refused, mil, train_tiny_run

from balnmp_mil.data.labels import LabelError, resolve_labels


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("labels"), n_patients=24)


def table(cohort, labels: list, tmp: Path, name: str = "labels.csv", **columns) -> Path:
    """The cohort's patients (1..24) with the given `label` values."""
    ids = list(range(1, 25))
    frame = pd.DataFrame({"patient_id": ids[: len(labels)], "label": labels, **columns})
    path = tmp / name
    frame.to_csv(path, index=False)
    return path


def train(cohort, labels: Path, out: Path, *extra: object):
    return mil("train", cohort.features, "--labels", labels, "--out", out, *fast_args(1), *extra)


# -------------------------------------------------------------------- which class is positive
def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_bcnb_tasks_count_n_plus_as_positive(cohort, tmp_path):
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 0, res.output
    assert "positive class: N+" in res.output
    assert _metrics(tmp_path / "r")["positive_class"] == "N+"
    assert "positive class: N+" in (tmp_path / "r" / "report.md").read_text()
    res = mil("evaluate", tmp_path / "r")
    assert res.exit_code == 0 and "positive class: N+" in res.output, res.output


@pytest.mark.parametrize("values,positive", [
    ([0, 1], "1"), ([False, True], "True"), (["neg", "pos"], "pos"), (["no", "yes"], "yes"),
    (["N0", "N+"], "N+"), (["Negative", "Positive"], "Positive"),
    (["benign", "malignant"], "malignant"),
])
def test_a_recognised_positive_needs_no_option(cohort, tmp_path, values, positive):
    labels = table(cohort, [values[i % 2] for i in range(24)], tmp_path)
    res = train(cohort, labels, tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert f"positive class: {positive}" in res.output
    metrics = _metrics(tmp_path / "r")
    assert metrics["positive_class"] == positive and metrics["class_names"][1] == positive


def test_other_names_ask_for_positive(cohort, tmp_path):
    labels = table(cohort, [["low", "high"][i % 2] for i in range(24)], tmp_path)
    res = train(cohort, labels, tmp_path / "r")
    assert_refused(res, "'high'", "'low'", "--positive high", str(labels))
    assert not (tmp_path / "r").exists()
    res = train(cohort, labels, tmp_path / "r", "--positive", "low")
    assert res.exit_code == 0, res.output
    assert _metrics(tmp_path / "r")["class_names"] == ["high", "low"]
    assert "positive class: low" in res.output


def test_positive_flips_integer_labels_and_is_checked(cohort, tmp_path):
    labels = table(cohort, [i % 2 for i in range(24)], tmp_path)
    res = train(cohort, labels, tmp_path / "r", "--positive", "0")
    assert res.exit_code == 0, res.output
    assert _metrics(tmp_path / "r")["class_names"] == ["1", "0"]
    res = train(cohort, labels, tmp_path / "r2", "--positive", "2")
    assert_refused(res, "--positive 2", "'0', '1'")
    three = table(cohort, [i % 3 for i in range(24)], tmp_path, "three.csv")
    assert_refused(train(cohort, three, tmp_path / "r3", "--positive", "1"),
                   "--positive", "two classes", "3")
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--positive", "N0", "--out", tmp_path / "r4", *fast_args(1))
    assert_refused(res, "n0_vs_n+", "N+", "--positive")


def test_new_patients_are_labelled_by_the_runs_classes(cohort, tmp_path):
    """Evaluating on new patients of one class keeps the run's class order (not a refusal
    because the new table has fewer names)."""
    labels = table(cohort, [["neg", "pos"][i % 2] for i in range(24)], tmp_path)
    assert train(cohort, labels, tmp_path / "r").exit_code == 0
    only_pos = table(cohort, ["pos"] * 24, tmp_path, "pos.csv")
    res = mil("evaluate", tmp_path / "r", "--features", cohort.features, "--labels", only_pos)
    assert res.exit_code == 0, res.output
    unknown = table(cohort, ["pos"] * 23 + ["maybe"], tmp_path, "unknown.csv")
    res = mil("evaluate", tmp_path / "r", "--features", cohort.features, "--labels", unknown)
    assert_refused(res, "'maybe'", "24", "neg, pos")


# ----------------------------------------------------------------- labels that mean nothing
def test_a_fraction_among_integers_is_refused_naming_the_rows(cohort, tmp_path):
    values = [i % 2 for i in range(24)]
    values[6] = 0.5
    values[10] = 0.25
    labels = table(cohort, values, tmp_path)
    res = train(cohort, labels, tmp_path / "r")
    assert_refused(res, str(labels), "0.5", "patient 7", "row 8", "0.25", "patient 11")
    assert not (tmp_path / "r").exists()


def test_numbers_mixed_with_names_are_refused(cohort, tmp_path):
    values: list = [i % 2 for i in range(24)]
    values[3] = "unsure"
    res = train(cohort, table(cohort, values, tmp_path), tmp_path / "r")
    assert_refused(res, "'unsure'", "patient 4", "numbers")


def test_integer_labels_with_an_empty_class_are_refused(cohort, tmp_path):
    res = train(cohort, table(cohort, [1 + i % 2 for i in range(24)], tmp_path), tmp_path / "r")
    assert_refused(res, "class 0", "no patient")


def test_single_class_cohorts_are_refused(cohort, tmp_path):
    labels = table(cohort, [1] * 24, tmp_path)
    res = train(cohort, labels, tmp_path / "r")
    assert_refused(res, f"labels file {labels}", "24 patients", "one class")
    statuses = pd.read_csv(cohort.labels).assign(**{"ALN status": "N0"})
    statuses.to_csv(tmp_path / "n0.csv", index=False)
    res = mil("train", cohort.features, "--labels", tmp_path / "n0.csv", "--task", "n0_vs_n+",
              "--out", tmp_path / "r", *fast_args(1))
    assert_refused(res, "N0", "one class")


def test_a_class_too_small_for_any_split_is_refused(cohort, tmp_path):
    values = [0] * 23 + [1]
    res = train(cohort, table(cohort, values, tmp_path), tmp_path / "r")
    assert_refused(res, "class 1 has 1 patient;", "at least 2 per class")
    res = mil("cv", cohort.features, "--labels", table(cohort, values, tmp_path, "cv.csv"),
              "--folds", "2", "--out", tmp_path / "cv", *fast_args(1))
    assert_refused(res, "class 1 has 1 patient;", "at least 2 per class")


def test_a_class_smaller_than_the_split_is_warned_about_with_the_numbers(cohort, tmp_path):
    values = [0] * 22 + [1, 1]
    res = train(cohort, table(cohort, values, tmp_path), tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert "Warning: the test part has no patient of class 1 (5 patients: 0 5, 1 0)" in (
        res.output)
    res = mil("cv", cohort.features, "--labels", table(cohort, values, tmp_path, "cv.csv"),
              "--folds", "3", "--out", tmp_path / "cv", *fast_args(1))
    assert res.exit_code == 0, res.output
    assert "Warning: class 1 has 2 patients, fewer than --folds 3: 1 of the folds" in res.output
    assert "pass --folds 2 or fewer" in res.output


def test_a_part_without_a_class_is_warned_about(cohort, tmp_path):
    values = [0] * 21 + [1, 1, 1]
    res = train(cohort, table(cohort, values, tmp_path), tmp_path / "r", "--val", "0.1")
    assert res.exit_code == 0, res.output
    assert "Warning: the val part has no patient of class 1" in res.output
    assert "Youden threshold is chosen on train" in res.output


# --------------------------------------------------------------------------- bad tables
def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


TABLES = [
    ("empty file", "empty.csv", b"", ["is empty"]),
    ("header only", "header.csv", b"patient_id,label\n", ["has no rows"]),
    ("latin-1", "latin.csv", "patient_id,label,note\n1,0,caf\xe9\n".encode("latin-1"),
     ["not UTF-8", "UTF-8"]),
    ("utf-16", "utf16.csv", "patient_id,label\n1,0\n".encode("utf-16"), ["not UTF-8"]),
    ("no id column", "noid.csv", b"name,label\n1,0\n2,1\n", ["patient_id", "'name'"]),
    ("duplicate patients", "dup.csv",
     b"patient_id,label,ALN status\n1,0,N0\n1,0,N0\n2,1,N+(>2)\n",
     ["patient 1", "one row per patient", "slide_id"]),
    ("conflicting labels", "conflict.csv",
     b"patient_id,slide_id,label,ALN status\n1,a,0,N0\n1,b,1,N+(>2)\n",
     ["conflicting labels", "1"]),
    ("binary junk", "junk.csv", bytes(range(256)) * 4, ["not UTF-8"]),
]


@pytest.mark.parametrize("name,file,content,patterns", TABLES, ids=[t[0] for t in TABLES])
@pytest.mark.parametrize("command", ["train", "evaluate", "clinical"])
def test_a_bad_table_is_a_message_naming_it(cohort, tmp_path, run_dir, name, file, content,
                                            patterns, command):
    path = _write(tmp_path / file, content)
    if command == "train":
        res = train(cohort, path, tmp_path / "r")
    elif command == "evaluate":
        res = mil("evaluate", run_dir, "--features", cohort.features, "--labels", path)
    else:
        if name in ("conflicting labels", "duplicate patients", "header only"):
            pytest.skip("a label-table rule")
        res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                  "--clinical", path, "--out", tmp_path / "r", *fast_args(1))
    assert_refused(res, str(path), *patterns)
    assert path.read_bytes() == content
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def run_dir(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("label-run") / "run"
    return train_tiny_run(cohort.features, cohort.labels, out)


def test_a_utf8_bom_is_read(cohort, tmp_path):
    text = pd.read_csv(cohort.labels).to_csv(index=False)
    path = _write(tmp_path / "bom.csv", text.encode("utf-8-sig"))
    res = mil("train", cohort.features, "--labels", path, "--task", "n0_vs_n+",
              "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 0, res.output


def test_a_workbook_with_several_sheets_is_refused(cohort, tmp_path):
    frame = pd.read_csv(cohort.labels)
    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as book:
        frame.to_excel(book, sheet_name="Labels", index=False)
        frame.head(3).to_excel(book, sheet_name="Old labels", index=False)
        pd.DataFrame().to_excel(book, sheet_name="Empty", index=False)
    res = mil("train", cohort.features, "--labels", path, "--task", "n0_vs_n+",
              "--out", tmp_path / "r", *fast_args(1))
    assert_refused(res, str(path), "'Labels'", "'Old labels'", "save")
    single = tmp_path / "single.xlsx"
    with pd.ExcelWriter(single) as book:  # empty sheets beside it are no ambiguity
        frame.to_excel(book, sheet_name="Labels", index=False)
        pd.DataFrame().to_excel(book, sheet_name="Sheet2", index=False)
    res = mil("train", cohort.features, "--labels", single, "--task", "n0_vs_n+",
              "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 0, res.output


# -------------------------------------------------------------------------- splits files
SPLITS = [
    ("not json", b"train: [1, 2]", ["cannot read splits file"]),
    ("binary", bytes(range(256)), ["cannot read splits file"]),
    ("a list", b"[1, 2]", ["not a balnmp splits file"]),
    ("parts not lists", json.dumps({"format": "balnmp-splits", "kind": "single",
                                    "splits": [{"train": 5}]}).encode(),
     ["not a balnmp splits file"]),
    ("splits not a list", json.dumps({"format": "balnmp-splits", "kind": "single",
                                      "splits": "x"}).encode(), ["not a balnmp splits file"]),
    ("no training patients", json.dumps({"format": "balnmp-splits", "kind": "single",
                                         "splits": [{"train": [], "test": ["1", "2"]}]}
                                        ).encode(), ["no training patients"]),
    ("train lacks a class", "N0 only", ["train part", "no patient of class N+"]),
]


@pytest.mark.parametrize("name,content,patterns", SPLITS, ids=[s[0] for s in SPLITS])
def test_a_bad_splits_file_is_a_message_naming_it(cohort, tmp_path, name, content, patterns):
    if content == "N0 only":  # a training part of N0 patients only
        status = pd.read_csv(cohort.labels)["ALN status"]
        n0 = [str(i + 1) for i, s in enumerate(status) if s == "N0"]
        rest = [str(i + 1) for i, s in enumerate(status) if s != "N0"]
        content = json.dumps({"format": "balnmp-splits", "kind": "single",
                              "splits": [{"train": n0[:-1], "test": [n0[-1], *rest]}]}).encode()
    path = _write(tmp_path / "splits.json", content)
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--splits", path, "--out", tmp_path / "r", *fast_args(1))
    assert_refused(res, str(path), *patterns)
    assert not (tmp_path / "r").exists()


def test_a_splits_directory_is_a_message(cohort, tmp_path):
    (tmp_path / "splits").mkdir()
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--splits", tmp_path / "splits", "--out", tmp_path / "r", *fast_args(1))
    assert_refused(res, "splits file", str(tmp_path / "splits"))


def test_patients_left_out_of_a_split_are_warned_about(cohort, tmp_path):
    from balnmp_mil.data.splits import Split, save_splits

    pids = [str(i) for i in range(1, 25)]
    status = pd.read_csv(cohort.labels)["ALN status"].tolist()
    n0 = [p for p, s in zip(pids, status) if s == "N0"]
    pos = [p for p, s in zip(pids, status) if s != "N0"]
    split = Split(train=n0[:4] + pos[:6], val=[n0[4], pos[6]], test=[n0[5], pos[7]])
    path = save_splits(split, tmp_path / "splits.json")
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--splits", path, "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 0, res.output
    assert f"Warning: 10 patients of the cohort are in no part of splits file {path}" in res.output


def test_a_cv_splits_file_given_to_train_says_which_fold_it_uses(cohort, tmp_path):
    res = mil("cv", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--folds", "2", "--out", tmp_path / "cv", *fast_args(1))
    assert res.exit_code == 0, res.output
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--splits", tmp_path / "cv" / "splits.json", "--out", tmp_path / "r",
              *fast_args(1))
    assert res.exit_code == 0, res.output
    assert "holds 2 folds" in res.output and "fold 0" in res.output


# --------------------------------------------------------------------------- library level
def test_the_library_refuses_the_same_labels():
    frame = pd.DataFrame({"patient_id": ["a", "b", "c"], "label": [0, 0.5, 1]})
    with pytest.raises(LabelError, match=r"0\.5.*patient b"):
        resolve_labels(frame)
    names = pd.DataFrame({"patient_id": ["a", "b"], "label": ["low", "high"]})
    with pytest.raises(LabelError, match="--positive"):
        resolve_labels(names)
    assert resolve_labels(names, positive="high").class_names == ["low", "high"]


def test_positive_in_a_config_file_may_be_a_yaml_number(cohort, tmp_path):
    labels = table(cohort, [i % 2 for i in range(24)], tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"labels: {labels}\npositive: 0\n")
    res = mil("train", cohort.features, "--config", config, "--out", tmp_path / "r",
              *fast_args(1))
    assert res.exit_code == 0, res.output
    assert _metrics(tmp_path / "r")["positive_class"] == "0"

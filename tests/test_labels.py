"""Label tables: BCNB ALN status -> the paper's five tasks, id normalisation, clear errors."""

from __future__ import annotations

import pandas as pd
import pytest
from _data import bcnb_table

from balnmp_mil.data.labels import TASKS, LabelError, find_column, read_table, resolve_labels

STATUSES = ["N0", "N+(1-2)", "N+(>2)", "N0", "N+ (1-2)", "n0"]


def bcnb() -> pd.DataFrame:
    return bcnb_table(STATUSES)


@pytest.mark.parametrize(
    ("task", "labels", "dropped"),
    [
        ("n0_vs_n+", [0, 1, 1, 0, 1, 0], []),
        ("n12_vs_n3", [0, 1, 0], ["1", "4", "6"]),
        ("three_class", [0, 1, 2, 0, 1, 0], []),
        ("n0_vs_n12", [0, 1, 0, 1, 0], ["3"]),
        ("n0_vs_n3", [0, 1, 0, 0], ["2", "5"]),
    ],
)
def test_tasks_map_aln_status_and_count_dropped(task, labels, dropped):
    table = resolve_labels(bcnb(), task=task)
    assert table.frame["label"].tolist() == labels
    assert table.dropped == dropped and table.n_dropped == len(dropped)
    assert table.class_names == TASKS.get(task).class_names
    assert all(isinstance(p, str) for p in table.frame["patient_id"])
    kept = [p for p in ["1", "2", "3", "4", "5", "6"] if p not in dropped]
    assert table.patient_ids == kept


def test_label_column_ints_and_names():
    t = resolve_labels(pd.DataFrame({"patient_id": ["a", "b", "c"], "label": [1, 0, 2]}))
    assert t.frame["label"].tolist() == [1, 0, 2] and t.class_names == ["0", "1", "2"]
    t = resolve_labels(pd.DataFrame({"slide_id": ["s1", "s2"], "Label": ["pos", "neg"]}))
    assert t.frame["label"].tolist() == [1, 0] and t.class_names == ["neg", "pos"]
    assert t.frame["patient_id"].tolist() == ["s1", "s2"]  # slide id is the patient id


def test_slides_map_to_patients_and_conflicts_fail():
    df = pd.DataFrame({"slide_id": ["a1", "a2", "b1"], "patient_id": [7, 7, 8], "label": [1, 1, 0]})
    t = resolve_labels(df)
    assert t.has_slides and t.patient_labels() == {"7": 1, "8": 0}
    df.loc[1, "label"] = 0
    with pytest.raises(LabelError, match="conflicting labels.*7"):
        resolve_labels(df)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(LabelError, match="ALN status"):
        resolve_labels(pd.DataFrame({"patient_id": [1], "grade": [2]}), task="n0_vs_n+")
    with pytest.raises(LabelError, match="pass --task"):
        resolve_labels(bcnb())
    with pytest.raises(LabelError, match="unknown task"):
        resolve_labels(bcnb(), task="n9")
    bad = bcnb()
    bad.loc[2, "ALN status"] = "N7"
    with pytest.raises(LabelError, match="patient 3.*N7"):
        resolve_labels(bad, task="three_class")
    with pytest.raises(LabelError, match="patient_id or slide_id"):
        resolve_labels(pd.DataFrame({"x": [1], "label": [0]}))
    with pytest.raises(LabelError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_read_table_csv_and_xlsx(tmp_path):
    df = bcnb()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_excel(tmp_path / "t.xlsx", index=False)
    for name in ("t.csv", "t.xlsx"):
        t = resolve_labels(read_table(tmp_path / name), task="n0_vs_n+")
        assert t.frame["patient_id"].tolist() == ["1", "2", "3", "4", "5", "6"]


def test_find_column_is_case_space_punctuation_insensitive():
    df = pd.DataFrame(columns=["Patient ID", "ALN  Status"])
    assert find_column(df, "patient_id") == "Patient ID"
    assert find_column(df, "aln_status") == "ALN  Status"
    assert find_column(df, "label", required=False) is None
    with pytest.raises(LabelError, match="Patient ID"):
        find_column(df, "label")


def test_aln_status_spellings_one_rule_for_train_and_check_data():
    from balnmp_mil.data.labels import aln_status

    # BCNB writes N+(＞2) with a full-width ＞ (U+FF1E); case and spaces do not matter either.
    assert aln_status("N+(\uff1e2)") == aln_status(" n+ (>2) ") == "N+(>2)"
    assert aln_status("N+(1-2)") == "N+(1-2)" and aln_status("n0") == "N0"
    assert aln_status("N1") is None and aln_status(float("nan")) is None
    df = bcnb()
    df["ALN status"] = df["ALN status"].str.replace(">", "\uff1e")
    assert resolve_labels(df, task="n0_vs_n3").frame["label"].tolist() == [0, 1, 0, 0]

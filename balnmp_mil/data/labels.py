"""Label tables: find id/label columns, map BCNB ALN status to the paper's tasks, and say which
class of a binary task is positive.

Ids are always `str` (BCNB's integer patient ids become `"1"`, `"2"`, ...). A binary task's
positive class is always its second (`class_names[1]`): the later class of a BCNB task (N+);
what a `label` column's values mean, and its positive class, is `label_values`' rule.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from balnmp_cache._registry import Registry
from balnmp_mil.data.label_values import label_classes
from balnmp_mil.data.tables import read_table
from balnmp_mil.errors import ClinicalError, LabelError

__all__ = [
    "ALN_STATUSES",
    "LabelError",
    "Task",
    "aln_status",
    "TASKS",
    "LabelTable",
    "read_table",
    "find_column",
    "normalize_id",
    "patient_rows",
    "resolve_labels",
]

PATIENT_COLUMNS = ("patient_id", "Patient ID", "patient", "case_id")
SLIDE_COLUMNS = ("slide_id", "slide", "wsi")
LABEL_COLUMNS = ("label", "target", "y")
ALN_COLUMNS = ("ALN status", "aln_status", "aln")


@dataclass(frozen=True)
class Task:
    """A classification task over BCNB ALN status: which statuses map to which class."""

    name: str
    classes: dict[str, int]
    class_names: list[str]


N0, N12, N3 = "N0", "N+(1-2)", "N+(>2)"
ALN_STATUSES = (N0, N12, N3)

TASKS: Registry[Task] = Registry("task", "--task")
for _task in (
    Task("n0_vs_n+", {N0: 0, N12: 1, N3: 1}, ["N0", "N+"]),
    Task("n12_vs_n3", {N12: 0, N3: 1}, [N12, N3]),
    Task("three_class", {N0: 0, N12: 1, N3: 2}, [N0, N12, N3]),
    Task("n0_vs_n12", {N0: 0, N12: 1}, [N0, N12]),
    Task("n0_vs_n3", {N0: 0, N3: 1}, [N0, N3]),
):
    TASKS.register(_task.name, _task)


@dataclass
class LabelTable:
    """Resolved labels: one row per (patient, slide) or per patient.

    `frame` has columns `patient_id` (str), `slide_id` (str, or None when the table has
    no slide column: the slide id is then the patient id) and `label` (int in [0, C)).
    """

    frame: pd.DataFrame
    class_names: list[str]
    n_dropped: int = 0
    dropped: list[str] = field(default_factory=list)
    task: str | None = None
    has_slides: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def patient_ids(self) -> list[str]:
        """Unique patient ids in table order."""
        return list(dict.fromkeys(self.frame["patient_id"]))

    def patient_labels(self) -> dict[str, int]:
        """Patient id -> label."""
        return dict(zip(self.frame["patient_id"], self.frame["label"].astype(int), strict=True))


def _norm(name: object) -> str:
    return re.sub(r"[^0-9a-z+]", "", str(name).lower())


def find_column(df: pd.DataFrame, *names: str, required: bool = True) -> str | None:
    """Actual name of the first column matching one of `names`, ignoring case/space/punctuation.

    Raises `LabelError` listing the available columns when none matches and `required`.
    """
    lookup = {_norm(c): c for c in df.columns}
    for name in names:
        hit = lookup.get(_norm(name))
        if hit is not None:
            return hit
    if required:
        raise LabelError(
            f"no column named {' / '.join(repr(n) for n in names)}; "
            f"the table has {list(map(str, df.columns))}"
        )
    return None


def normalize_id(value: object) -> str:
    """An id as a stripped str; integral numbers lose their '.0' (BCNB ids are ints)."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            raise LabelError("an id cell is empty; fill in every patient/slide id")
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


def _norm_status(value: object) -> str:
    # NFKC folds full-width forms: BCNB writes "N+(＞2)" with a full-width ＞ (U+FF1E).
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", str(value))).upper()


_STATUS_LOOKUP = {_norm_status(s): s for s in ALN_STATUSES}


def aln_status(value: object) -> str | None:
    """The canonical spelling (`ALN_STATUSES`) of an ALN status cell, or None if it is not one.

    The one rule for reading ALN statuses: case, spaces and full-width characters are
    ignored, so "n+(1-2)", "N+ (>2)" and BCNB's "N+(＞2)" are read; an empty cell is None.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return _STATUS_LOOKUP.get(_norm_status(value))


def _aln_labels(values: pd.Series, ids: pd.Series, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Map ALN status strings to task labels; returns (labels, keep mask)."""
    labels = np.full(len(values), -1, dtype=np.int64)
    for i, (v, pid) in enumerate(zip(values, ids, strict=True)):
        status = aln_status(v)
        if status is None:
            raise LabelError(
                f"patient {pid}: ALN status {v!r} is not one of {list(ALN_STATUSES)}; "
                "fix the label table"
            )
        labels[i] = task.classes.get(status, -1)
    return labels, labels >= 0


def resolve_labels(df: pd.DataFrame, task: str | None = None, positive: str | None = None,
                   classes: Sequence[str] | None = None) -> LabelTable:
    """Ids and integer labels from a table.

    `task` None: the `label` column (class indices, or class names sorted alphabetically; of
    two classes the positive one second: `positive`, else a recognised name, see
    `label_values`). `task` in `TASKS`: the BCNB `ALN status` column (or a `label` column
    holding statuses) mapped to the task's classes (positive: the later); rows outside the
    task are dropped and counted. `classes`: the class names of a trained run, onto which the
    `label` column's values are mapped (new patients of a run).
    """
    pcol = find_column(df, *PATIENT_COLUMNS, required=False)
    scol = find_column(df, *SLIDE_COLUMNS, required=False)
    if scol is None and pcol is None:
        raise LabelError(
            "the label table needs a patient_id or slide_id column; it has "
            f"{list(map(str, df.columns))}: name the id column patient_id"
        )
    sids = None if scol is None else df[scol].map(normalize_id)
    pids = df[pcol].map(normalize_id) if pcol is not None else df[scol].map(normalize_id)
    if task is None:
        labels, class_names = _plain_labels(df, pids, positive, classes)
        keep = np.ones(len(df), dtype=bool)
    else:
        labels, keep, class_names = _task_labels(df, pids, task, positive)
    frame = pd.DataFrame(
        {
            "patient_id": pids.to_numpy()[keep],
            "slide_id": sids.to_numpy()[keep] if sids is not None else None,
            "label": labels[keep],
        }
    )
    _check_consistent(frame, has_slides=scol is not None)
    dropped = list(dict.fromkeys(pids.to_numpy()[~keep]))
    return LabelTable(
        frame=frame.reset_index(drop=True),
        class_names=class_names,
        n_dropped=len(dropped),
        dropped=dropped,
        task=task,
        has_slides=scol is not None,
    )


def _task_labels(df: pd.DataFrame, pids: pd.Series, task: str, positive: str | None
                 ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, rows kept, class names) of a BCNB task from the ALN status column."""
    if task not in TASKS:
        raise LabelError(TASKS.unknown(task))
    t = TASKS.get(task)
    if positive is not None and (len(t.class_names) != 2 or positive != t.class_names[1]):
        counted = (f"counts {t.class_names[1]} as positive" if len(t.class_names) == 2
                   else "has three classes and no positive one")
        raise LabelError(f"--task {task} {counted}; --positive {positive} does not apply: "
                         "leave it out")
    col = find_column(df, *ALN_COLUMNS, required=False) or find_column(
        df, *LABEL_COLUMNS, required=False
    )
    if col is None:
        raise LabelError(
            f"task {task!r} needs an 'ALN status' column (N0 / N+(1-2) / N+(>2)); "
            f"the table has {list(df.columns)}"
        )
    labels, keep = _aln_labels(df[col], pids, t)
    return labels, keep, list(t.class_names)


def _plain_labels(df: pd.DataFrame, pids: pd.Series, positive: str | None,
                  classes: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """(labels, class names) from the `label` column (see `label_values.label_classes`)."""
    col = find_column(df, *LABEL_COLUMNS, required=False)
    if col is None:
        hint = (
            f" (it has an 'ALN status' column: pass --task, one of {', '.join(TASKS)})"
            if find_column(df, *ALN_COLUMNS, required=False)
            else ""
        )
        raise LabelError(f"the label table has no 'label' column{hint}")
    return label_classes(df[col], pids, positive, classes)


def _check_consistent(frame: pd.DataFrame, has_slides: bool) -> None:
    """One label per patient; no duplicated slide (or patient, without slides) rows."""
    per_patient = frame.groupby("patient_id", sort=False)["label"].nunique()
    bad = per_patient[per_patient > 1]
    if len(bad):
        raise LabelError(f"patients with conflicting labels: {list(bad.index)[:10]}; give each "
                         "patient one label (all their rows the same)")
    key = "slide_id" if has_slides else "patient_id"
    counts = frame[key].value_counts(sort=False)
    dup = counts[counts > 1]
    if len(dup):
        what = "slide" if has_slides else "patient"
        shown = ", ".join(f"{what} {k} has {n} rows" for k, n in list(dup.items())[:10])
        fix = ("keep one row per slide" if has_slides else
               "keep one row per patient, or add a slide_id column when a patient has "
               "several slides")
        raise LabelError(f"duplicated rows in the label table: {shown}; {fix}")


def patient_rows(table: str | os.PathLike[str] | pd.DataFrame,
                 patient_ids: list[str]) -> pd.DataFrame:
    """Rows of `table` (a path or DataFrame) indexed by patient id, one per patient of
    `patient_ids`, in that order (a patient's first row wins)."""
    df = table if isinstance(table, pd.DataFrame) else read_table(table, "clinical table")
    try:
        col = find_column(df, *PATIENT_COLUMNS)
    except LabelError as exc:
        if isinstance(table, pd.DataFrame):
            raise
        raise LabelError(f"clinical table {table}: {exc}") from exc
    rows = df.copy()
    rows.index = pd.Index(rows[col].map(normalize_id), name="patient_id")
    rows = rows[~rows.index.duplicated(keep="first")]
    missing = [p for p in patient_ids if p not in rows.index]
    if missing:
        where = "" if isinstance(table, pd.DataFrame) else f"clinical table {table}: "
        raise ClinicalError(
            f"{where}{len(missing)} patients have no clinical row: {missing[:10]}; "
            "add them to the clinical table"
        )
    return rows.loc[patient_ids]

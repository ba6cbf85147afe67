"""Encode the BCNB clinical table into a numeric matrix, fitted on the training split only.

Columns are found case-, spacing- and punctuation-insensitively ("Age(years)", "age_years",
"AGE" all match `age`), or named explicitly with `columns={"age": "Patient age", ...}`
(`--clinical-column age="Patient age"`).
Variants: "full" (z-scored age, tumour size, Ki67; one-hot tumour type, molecular subtype,
HER2 expression, surgical, histological grading; ER/PR/HER2 positive flags), "paper5"
(the BALNMP paper's five: z-scored age and size, ER/PR/HER2 negative flags) and "official"
(the same five as the official repository's `preprocessed-type-K.xlsx` holds them, used as is).
Missing values and categories unseen in training raise `ClinicalError` naming the patient and
column, unless `impute=True` (`--clinical-impute`): numeric -> training median, categorical
and ER/PR/HER2 -> most frequent training value, unseen category -> all-zeros one-hot. How each
kind of field is read, summarised and encoded is one registered `Kind` class (`KINDS`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from balnmp_cache._registry import Registry
from balnmp_mil.data.clinical_fields import (  # re-exported: their home before the split
    FIELDS,
    KINDS,
    Field,
    Kind,
    is_missing,
    normalize_name,
    parse_category,
    parse_numeric,
    parse_status,
    patient_labels,
    resolve_columns,
)
from balnmp_mil.errors import ClinicalError, MILWarning

__all__ = ["FIELDS", "FORMAT", "KINDS", "VARIANTS", "ClinicalEncoder", "ClinicalError",
           "DEFAULT_VARIANT", "Field",
           "Kind", "Variant", "is_missing", "normalize_name", "parse_category", "parse_numeric",
           "parse_status", "patient_labels", "resolve_columns"]

FORMAT = "balnmp-clinical-encoder"


@dataclass(frozen=True)
class Variant:
    """Which fields an encoder uses and whether ER/PR/HER2 flags mark positive or negative."""

    fields: tuple[str, ...]
    status_flag: str  # "positive" | "negative"


VARIANTS: Registry[Variant] = Registry("clinical variant", "--clinical-variant")
VARIANTS.register("full", Variant(("age", "tumour_size", "ki67", "tumour_type",
                                   "molecular_subtype", "her2_expression", "surgical",
                                   "grading", "er", "pr", "her2"), "positive"))
VARIANTS.register("paper5", Variant(("age", "tumour_size", "er", "pr", "her2"), "negative"))
# The official preprocessed-type-K.xlsx as it is: the paper's five inputs exactly as its
# released models were trained on (z-scores made by the authors, with statistics they did not
# publish, and ER/PR/HER2-negative flags), for `paper import --clinical` and faithful training.
VARIANTS.register("official", Variant(("official_age", "official_tumour_size", "er_negative",
                                       "pr_negative", "her2_negative"), "negative"))
# The command line's default (`--clinical-variant`): the paper's five variables (official
# README: "age, tumor size, ER, PR, and HER2"; code/breast.py reads 5 values per patient).
DEFAULT_VARIANT = "paper5"


class ClinicalEncoder:
    """Clinical table -> float32 matrix; `fit` on training rows, `transform` any rows."""

    def __init__(self, variant: str = "full", impute: bool = False,
                 columns: dict[str, str] | None = None):
        if variant not in VARIANTS:
            raise ClinicalError(VARIANTS.unknown(variant))
        unknown = set(columns or {}) - set(FIELDS) - {"patient_id"}
        if unknown:
            raise ClinicalError(f"unknown clinical field(s) {sorted(unknown)} in the column "
                                f"mapping (--clinical-column FIELD=COLUMN); fields are "
                                f"{', '.join(FIELDS)} and patient_id")
        self.variant = variant
        self.impute = bool(impute)
        self.columns = dict(columns or {})
        self.stats_: dict[str, dict[str, Any]] | None = None

    # ---- fitting -------------------------------------------------------------------------
    def _values(self, df: pd.DataFrame) -> tuple[list[str], dict[str, str], dict[str, list]]:
        if not isinstance(df, pd.DataFrame):
            raise ClinicalError(f"expected a pandas DataFrame, got {type(df).__name__}")
        cols = resolve_columns(df, VARIANTS.get(self.variant).fields, self.columns)
        return patient_labels(df, self.columns), cols, {k: df[c].tolist() for k, c in
                                                       cols.items()}

    def fit(self, df: pd.DataFrame) -> ClinicalEncoder:
        """Learn means/sds, medians and categories from the TRAINING rows only.

        Warns (`MILWarning`) for each used field with a `Field.caution` (`Surgical`).
        """
        pids, cols, values = self._values(df)
        if not pids:
            raise ClinicalError("cannot fit the clinical encoder on an empty table")
        for key in values:
            if FIELDS[key].caution:
                warnings.warn(f"clinical variant {self.variant!r}: column {cols[key]!r} "
                              f"{FIELDS[key].caution}", MILWarning, stacklevel=2)
        problems: list[str] = []
        stats: dict[str, dict[str, Any]] = {}
        for key, raw in values.items():
            kind = KINDS.get(FIELDS[key].kind)
            parsed = [self._parse(kind, v, pid, cols[key], problems) for pid, v in zip(pids, raw)]
            present = [p for p in parsed if p is not None]
            if not self.impute:
                problems += [f"patient {pid}, column {cols[key]!r}: missing value"
                             for pid, p, v in zip(pids, parsed, raw) if p is None
                             and is_missing(v)]
            if not present:
                problems.append(f"column {cols[key]!r}: no usable value in the training rows")
                continue
            stats[key] = kind.statistics(present)
        _raise(problems, "fitting", self.impute, _blank_notes(cols, values))
        self.stats_ = stats
        return self

    @staticmethod
    def _parse(kind: type[Kind], value: object, pid: str, col: str,
               problems: list[str]) -> object:
        if is_missing(value):
            return None
        try:
            return kind.parse(value)
        except ValueError:
            problems.append(f"patient {pid}, column {col!r}: cannot read {value!r} as "
                            f"{kind.want}")
            return None

    # ---- transforming --------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.stats_ is not None

    def _check_fitted(self) -> dict[str, dict[str, Any]]:
        if self.stats_ is None:
            raise ClinicalError("the clinical encoder is not fitted: call fit(training rows) "
                                "first")
        return self.stats_

    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, in order."""
        stats = self._check_fitted()
        flag = VARIANTS.get(self.variant).status_flag
        names: list[str] = []
        for key in VARIANTS.get(self.variant).fields:
            names += KINDS.get(FIELDS[key].kind).names(key, stats[key], flag)
        return names

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode rows (any split) with the training statistics -> float32 (n, K)."""
        stats = self._check_fitted()
        pids, cols, values = self._values(df)
        flag_positive = VARIANTS.get(self.variant).status_flag == "positive"
        problems: list[str] = []
        blocks = []
        for key in VARIANTS.get(self.variant).fields:
            kind, st, col = KINDS.get(FIELDS[key].kind), stats[key], cols[key]
            parsed = [self._parse(kind, v, pid, col, problems) for pid, v in zip(pids, values[key])]
            block, unseen = kind.encode(parsed, st, flag_positive)
            blocks.append(block)
            if not self.impute:
                problems += [f"patient {pids[row]}, column {col!r}: category {p!r} was not seen "
                             f"in the training rows (known: {st['categories']})"
                             for row, p in unseen]
                problems += [f"patient {pid}, column {col!r}: missing value"
                             for pid, p, v in zip(pids, parsed, values[key])
                             if p is None and is_missing(v)]
        _raise(problems, "encoding", self.impute, _blank_notes(cols, values))
        if not blocks or not pids:
            return np.zeros((len(pids), len(self.feature_names)), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def fit_transform(self, df: pd.DataFrame) -> np.ndarray:
        return self.fit(df).transform(df)

    # ---- persistence ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able state (variant, options, training statistics); no pickle."""
        return {"format": FORMAT, "version": 1, "variant": self.variant, "impute": self.impute,
                "columns": self.columns, "stats": self._check_fitted(),
                "feature_names": self.feature_names}

    @classmethod
    def from_dict(cls, d: dict) -> ClinicalEncoder:
        """Rebuild a fitted encoder from `to_dict` output."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ClinicalError(f"not a saved clinical encoder (expected format {FORMAT!r})")
        enc = cls(variant=d["variant"], impute=d["impute"], columns=d.get("columns"))
        missing = set(VARIANTS.get(enc.variant).fields) - set(d["stats"])
        if missing:
            raise ClinicalError(f"saved clinical encoder lacks statistics for {sorted(missing)}")
        enc.stats_ = {k: dict(v) for k, v in d["stats"].items()}
        return enc

    def __repr__(self) -> str:
        state = f"{len(self.feature_names)} features" if self.fitted else "not fitted"
        return f"ClinicalEncoder(variant={self.variant!r}, impute={self.impute}, {state})"


def _blank_notes(cols: dict[str, str], values: dict[str, list]) -> list[str]:
    """`Field.if_blank` of each field with blank cells, naming the column and the count."""
    notes = []
    for key, raw in values.items():
        blank = sum(is_missing(v) for v in raw)
        if blank and FIELDS[key].if_blank:
            notes.append(f"Column {cols[key]!r} is blank for {blank} patient(s): "
                         f"{FIELDS[key].if_blank}.")
    return notes


def _raise(problems: list[str], stage: str, impute: bool, notes: Sequence[str] = ()) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:10])
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    hint = "" if impute else (" Fix the table, or pass --clinical-impute to fill missing "
                              "values with training medians / most frequent values and unseen "
                              "categories with zeros.")
    extra = "".join(f" {n}" for n in notes) if not impute else ""
    raise ClinicalError(f"clinical table problem while {stage}: {shown}{more}.{hint}{extra}")

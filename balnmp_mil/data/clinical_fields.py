"""The BCNB clinical fields: the column names each may appear under, how a cell is read, and how
each kind of field (`KINDS`: numeric, categorical, status, given) is summarised on the training
rows and encoded. `balnmp_mil.data.clinical.ClinicalEncoder` puts them together.
"""

from __future__ import annotations

import abc
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from balnmp_cache._registry import Registry
from balnmp_mil.errors import ClinicalError

__all__ = ["FIELDS", "KINDS", "Field", "Kind", "is_missing", "normalize_name", "parse_category",
           "parse_numeric", "parse_status", "patient_labels", "resolve_columns"]
_MISSING = {"", "na", "n/a", "nan", "none", "null"}
_STATUS = {"positive": 1, "pos": 1, "+": 1, "1": 1, "yes": 1, "true": 1,
           "negative": 0, "neg": 0, "-": 0, "0": 0, "no": 0, "false": 0}


@dataclass(frozen=True)
class Field:
    """One clinical variable: how it is encoded and the column names it may appear under."""

    kind: str  # a name in KINDS: "numeric" | "categorical" | "status" | "given"
    aliases: tuple[str, ...]
    # Said (as a warning) whenever an encoder uses the field: why it may not belong in a model.
    caution: str | None = None
    # Added to the error when the field has blank cells: why they are there and the fixes.
    if_blank: str | None = None


FIELDS: dict[str, Field] = {
    "age": Field("numeric", ("Age(years)", "age", "age years")),
    "tumour_size": Field("numeric", ("Tumour Size(cm)", "tumour size", "size(cm)", "size")),
    "ki67": Field("numeric", ("Ki67", "ki-67", "ki67(%)")),
    "tumour_type": Field("categorical", ("Tumour Type", "histological type")),
    "molecular_subtype": Field("categorical", ("Molecular subtype", "subtype")),
    "her2_expression": Field("categorical", ("HER2 Expression", "her2 ihc")),
    "surgical": Field("categorical", ("Surgical", "surgery", "surgical procedure"), caution=(
        "is the axillary operation (BCNB: 'Axillary lymph node dissection' or 'Sentinel lymph "
        "node biopsy'), which is decided with knowledge of the lymph nodes: it leaks the ALN "
        "status into the model. --clinical-variant paper5 (the paper's five variables) leaves "
        "it out")),
    "grading": Field("categorical", ("Histological grading", "histological grade", "grade"),
                     if_blank=(
        "BCNB leaves the histological grade blank for many patients: use --clinical-variant "
        "paper5 (the paper's five variables, without grading), pass --clinical-impute (the "
        "most frequent training grade), or fill in the grades")),
    "er": Field("status", ("ER", "er status")),
    "pr": Field("status", ("PR", "pr status")),
    "her2": Field("status", ("HER2", "her2 status")),
    # The official repository's preprocessed-type-K.xlsx (bupt-ai-cz/BALNMP
    # code/dataset/clinical_data/, read by code/breast.py): the five inputs already encoded,
    # used as they are (`--clinical-variant official`).
    "official_age": Field("given", ("age",)),
    "official_tumour_size": Field("given", ("tumor_size",)),
    "er_negative": Field("given", ("is_er_negative",)),
    "pr_negative": Field("given", ("is_pr_negative",)),
    "her2_negative": Field("given", ("is_her2_negative",)),
}
PATIENT_ALIASES = ("Patient ID", "patient", "case id", "p_id")


def normalize_name(name: object) -> str:
    """Lower-case, 'tumor' -> 'tumour', keep letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower().replace("tumor", "tumour"))


def resolve_columns(df: pd.DataFrame, fields=None, columns: dict[str, str] | None = None,
                    required: bool = True) -> dict[str, str]:
    """Map field keys to the table's column names (explicit `columns` mapping wins)."""
    fields = tuple(FIELDS) if fields is None else tuple(fields)
    columns = dict(columns or {})
    by_norm = {normalize_name(c): c for c in df.columns}
    out: dict[str, str] = {}
    for key in fields:
        if key in columns:
            if columns[key] not in df.columns:
                raise ClinicalError(f"column {columns[key]!r} (mapped to {key!r}) is not in the "
                                    f"clinical table; its columns are {list(df.columns)}")
            out[key] = columns[key]
            continue
        for alias in (key, *FIELDS[key].aliases):
            if normalize_name(alias) in by_norm:
                out[key] = by_norm[normalize_name(alias)]
                break
        else:
            if required:
                raise ClinicalError(
                    f"the clinical table has no column for {key!r} (looked for "
                    f"{list(FIELDS[key].aliases)}); its columns are {list(df.columns)}. Name it "
                    f"with --clinical-column {key}=COLUMN or choose another --clinical-variant")
    return out


def patient_labels(df: pd.DataFrame, columns: dict[str, str] | None = None) -> list[str]:
    """Patient id of each row (as str): a patient-id column if present, else the index."""
    col = (columns or {}).get("patient_id")
    if col is None:
        by_norm = {normalize_name(c): c for c in df.columns}
        col = next((by_norm[normalize_name(a)] for a in ("patient_id", *PATIENT_ALIASES)
                    if normalize_name(a) in by_norm), None)
    values = df[col] if col is not None else df.index
    return [_id_str(v) for v in values]


def _id_str(v: object) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def is_missing(value: object) -> bool:
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return True
    return isinstance(value, str) and value.strip().lower() in _MISSING


def parse_numeric(value: object) -> float:
    """Float from a number or a string like ' 3.5 ', '30%' (ValueError when impossible)."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    return float(str(value).strip().rstrip("%").strip())


def parse_category(value: object) -> str:
    """Canonical category key: whitespace-collapsed lower case; 2.0 -> '2'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return " ".join(str(value).split()).lower()


def parse_status(value: object) -> int | None:
    """1 for Positive, 0 for Negative, None when missing (ValueError for anything else)."""
    if is_missing(value):
        return None
    key = parse_category(value)
    if key not in _STATUS:
        raise ValueError(f"{value!r} is not Positive/Negative")
    return _STATUS[key]


class Kind(abc.ABC):
    """How one kind of clinical field is read (`parse`, ValueError when it cannot be),
    summarised on the training rows (`statistics`) and encoded (`names`, `encode`)."""

    want: ClassVar[str] = "a value"  # what a readable value is, for the error

    @staticmethod
    @abc.abstractmethod
    def parse(value: object) -> object:
        """The value read, None when missing; ValueError when it cannot be read."""

    @staticmethod
    @abc.abstractmethod
    def statistics(present: Sequence[Any]) -> dict[str, Any]:
        """What encoding needs, from the training rows' present values."""

    @staticmethod
    @abc.abstractmethod
    def names(key: str, stats: dict[str, Any], flag: str) -> list[str]:
        """The encoded column names of field `key`."""

    @staticmethod
    @abc.abstractmethod
    def encode(parsed: Sequence[Any], stats: dict[str, Any], positive: bool
               ) -> tuple[np.ndarray, list[tuple[int, Any]]]:
        """(the (n, k) block, with missing values already imputed; rows whose value has no
        column, with that value)."""


KINDS: Registry[type[Kind]] = Registry("clinical field kind")


def _most_frequent(present: Sequence[Any]) -> tuple[Any, Counter[Any]]:
    counts = Counter(present)
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0], counts


@KINDS.register("numeric")
class Numeric(Kind):
    """A number, z-scored with the training mean and sd; missing -> the training median."""

    want = "a number"

    @staticmethod
    def parse(value: object) -> object:
        out = parse_numeric(value)
        if not math.isfinite(out):
            raise ValueError("not finite")
        return out

    @staticmethod
    def statistics(present: Sequence[Any]) -> dict[str, Any]:
        arr = np.asarray(present, dtype=np.float64)
        sd = float(arr.std())
        return {"mean": float(arr.mean()), "std": sd if sd > 0 else 1.0,
                "median": float(np.median(arr))}

    @staticmethod
    def names(key: str, stats: dict[str, Any], flag: str) -> list[str]:
        return [f"{key} (z)"]

    @staticmethod
    def encode(parsed: Sequence[Any], stats: dict[str, Any], positive: bool
               ) -> tuple[np.ndarray, list[tuple[int, Any]]]:
        x = np.array([stats["median"] if p is None else p for p in parsed], dtype=np.float64)
        return ((x - stats["mean"]) / stats["std"])[:, None], []


@KINDS.register("status")
class Status(Kind):
    """Positive / Negative as one flag (1 = the variant's flag); missing -> the most frequent."""

    want = "Positive or Negative"

    @staticmethod
    def parse(value: object) -> object:
        return parse_status(value)

    @staticmethod
    def statistics(present: Sequence[Any]) -> dict[str, Any]:
        return {"most_frequent": _most_frequent(present)[0]}

    @staticmethod
    def names(key: str, stats: dict[str, Any], flag: str) -> list[str]:
        return [f"{key}_{flag}"]

    @staticmethod
    def encode(parsed: Sequence[Any], stats: dict[str, Any], positive: bool
               ) -> tuple[np.ndarray, list[tuple[int, Any]]]:
        x = np.array([stats["most_frequent"] if p is None else p for p in parsed], float)
        return (x if positive else 1.0 - x)[:, None], []


@KINDS.register("categorical")
class Categorical(Kind):
    """One-hot over the training categories; missing -> the most frequent, unseen -> zeros."""

    want = "a category"

    @staticmethod
    def parse(value: object) -> object:
        return parse_category(value)

    @staticmethod
    def statistics(present: Sequence[Any]) -> dict[str, Any]:
        most, counts = _most_frequent(present)
        return {"most_frequent": most, "categories": sorted(counts)}

    @staticmethod
    def names(key: str, stats: dict[str, Any], flag: str) -> list[str]:
        return [f"{key}={c}" for c in stats["categories"]]

    @staticmethod
    def encode(parsed: Sequence[Any], stats: dict[str, Any], positive: bool
               ) -> tuple[np.ndarray, list[tuple[int, Any]]]:
        index = {c: i for i, c in enumerate(stats["categories"])}
        onehot = np.zeros((len(parsed), len(index)))
        unseen = []
        for row, p in enumerate(parsed):
            p = stats["most_frequent"] if p is None else p
            if p in index:
                onehot[row, index[p]] = 1.0
            else:
                unseen.append((row, p))
        return onehot, unseen


@KINDS.register("given")
class Given(Kind):
    """A number the table already holds encoded (the official preprocessed values), used as
    it is; missing -> the training median."""

    want = "a number"

    @staticmethod
    def parse(value: object) -> object:
        return Numeric.parse(value)

    @staticmethod
    def statistics(present: Sequence[Any]) -> dict[str, Any]:
        return {"median": float(np.median(np.asarray(present, dtype=np.float64)))}

    @staticmethod
    def names(key: str, stats: dict[str, Any], flag: str) -> list[str]:
        return [key]

    @staticmethod
    def encode(parsed: Sequence[Any], stats: dict[str, Any], positive: bool
               ) -> tuple[np.ndarray, list[tuple[int, Any]]]:
        fill = stats.get("median", np.nan)  # an imported encoder has no training rows
        return np.array([fill if p is None else p for p in parsed], np.float64)[:, None], []

"""Encode the BCNB clinical table into a numeric matrix, fitted on the training split only.

Columns are found case-, spacing- and punctuation-insensitively ("Age(years)", "age_years",
"AGE" all match `age`), or named explicitly with `columns={"age": "Patient age", ...}`
(`--clinical-column age="Patient age"`).
Variants: "full" (z-scored age, tumour size, Ki67; one-hot tumour type, molecular subtype,
HER2 expression, surgical, histological grading; ER/PR/HER2 positive flags) and "paper5"
(the BALNMP paper's five: z-scored age and size, ER/PR/HER2 negative flags).
Missing values and categories unseen in training raise `ClinicalError` naming the patient and
column, unless `impute=True` (`--clinical-impute`): numeric -> training median, categorical and ER/PR/HER2 -> most
frequent training value, unseen category -> all-zeros one-hot.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from balnmp_cache._registry import Registry
from balnmp_mil.errors import ClinicalError

FORMAT = "balnmp-clinical-encoder"
_MISSING = {"", "na", "n/a", "nan", "none", "null"}
_STATUS = {"positive": 1, "pos": 1, "+": 1, "1": 1, "yes": 1, "true": 1,
           "negative": 0, "neg": 0, "-": 0, "0": 0, "no": 0, "false": 0}


@dataclass(frozen=True)
class Field:
    """One clinical variable: how it is encoded and the column names it may appear under."""

    kind: str  # "numeric" | "categorical" | "status"
    aliases: tuple[str, ...]


FIELDS: dict[str, Field] = {
    "age": Field("numeric", ("Age(years)", "age", "age years")),
    "tumour_size": Field("numeric", ("Tumour Size(cm)", "tumour size", "size(cm)", "size")),
    "ki67": Field("numeric", ("Ki67", "ki-67", "ki67(%)")),
    "tumour_type": Field("categorical", ("Tumour Type", "histological type")),
    "molecular_subtype": Field("categorical", ("Molecular subtype", "subtype")),
    "her2_expression": Field("categorical", ("HER2 Expression", "her2 ihc")),
    "surgical": Field("categorical", ("Surgical", "surgery", "surgical procedure")),
    "grading": Field("categorical", ("Histological grading", "histological grade", "grade")),
    "er": Field("status", ("ER", "er status")),
    "pr": Field("status", ("PR", "pr status")),
    "her2": Field("status", ("HER2", "her2 status")),
}
PATIENT_ALIASES = ("Patient ID", "patient", "case id")


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


class ClinicalEncoder:
    """Clinical table -> float32 matrix; `fit` on training rows, `transform` any rows."""

    def __init__(self, variant: str = "full", impute: bool = False,
                 columns: dict[str, str] | None = None):
        if variant not in VARIANTS:
            raise ClinicalError(VARIANTS.unknown(variant))
        unknown = set(columns or {}) - set(FIELDS) - {"patient_id"}
        if unknown:
            raise ClinicalError(f"unknown clinical field(s) {sorted(unknown)} in the column "
                                f"mapping; fields are {sorted(FIELDS)} and 'patient_id'")
        self.variant = variant
        self.impute = bool(impute)
        self.columns = dict(columns or {})
        self.stats_: dict[str, dict] | None = None

    # ---- fitting -------------------------------------------------------------------------
    def _values(self, df: pd.DataFrame) -> tuple[list[str], dict[str, str], dict[str, list]]:
        if not isinstance(df, pd.DataFrame):
            raise ClinicalError(f"expected a pandas DataFrame, got {type(df).__name__}")
        cols = resolve_columns(df, VARIANTS.get(self.variant).fields, self.columns)
        return patient_labels(df, self.columns), cols, {k: df[c].tolist() for k, c in
                                                       cols.items()}

    def fit(self, df: pd.DataFrame) -> ClinicalEncoder:
        """Learn means/sds, medians and categories from the TRAINING rows only."""
        pids, cols, values = self._values(df)
        if not pids:
            raise ClinicalError("cannot fit the clinical encoder on an empty table")
        problems: list[str] = []
        stats: dict[str, dict] = {}
        for key, raw in values.items():
            kind = FIELDS[key].kind
            parsed = [self._parse(kind, v, pid, cols[key], problems) for pid, v in zip(pids, raw)]
            present = [p for p in parsed if p is not None]
            if not self.impute:
                problems += [f"patient {pid}, column {cols[key]!r}: missing value"
                             for pid, p, v in zip(pids, parsed, raw) if p is None
                             and is_missing(v)]
            if not present:
                problems.append(f"column {cols[key]!r}: no usable value in the training rows")
                continue
            if kind == "numeric":
                arr = np.asarray(present, dtype=np.float64)
                sd = float(arr.std())
                stats[key] = {"mean": float(arr.mean()), "std": sd if sd > 0 else 1.0,
                              "median": float(np.median(arr))}
            else:
                counts = Counter(present)
                most = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[0][0]
                stats[key] = {"most_frequent": most}
                if kind == "categorical":
                    stats[key]["categories"] = sorted(counts)
        _raise(problems, "fitting", self.impute)
        self.stats_ = stats
        return self

    @staticmethod
    def _parse(kind: str, value: object, pid: str, col: str, problems: list[str]):
        if is_missing(value):
            return None
        try:
            if kind == "numeric":
                out = parse_numeric(value)
                if not math.isfinite(out):
                    raise ValueError("not finite")
                return out
            return parse_status(value) if kind == "status" else parse_category(value)
        except ValueError:
            want = {"numeric": "a number", "status": "Positive or Negative"}.get(kind, "")
            problems.append(f"patient {pid}, column {col!r}: cannot read {value!r} as {want}")
            return None

    # ---- transforming --------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.stats_ is not None

    def _check_fitted(self) -> dict[str, dict]:
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
            kind = FIELDS[key].kind
            if kind == "numeric":
                names.append(f"{key} (z)")
            elif kind == "status":
                names.append(f"{key}_{flag}")
            else:
                names += [f"{key}={c}" for c in stats[key]["categories"]]
        return names

    def transform(self, df: pd.DataFrame) -> np.ndarray:
        """Encode rows (any split) with the training statistics -> float32 (n, K)."""
        stats = self._check_fitted()
        pids, cols, values = self._values(df)
        flag_positive = VARIANTS.get(self.variant).status_flag == "positive"
        problems: list[str] = []
        blocks = []
        for key in VARIANTS.get(self.variant).fields:
            kind, st, col = FIELDS[key].kind, stats[key], cols[key]
            parsed = [self._parse(kind, v, pid, col, problems) for pid, v in zip(pids, values[key])]
            if kind == "numeric":
                x = np.array([st["median"] if p is None else p for p in parsed], dtype=np.float64)
                blocks.append(((x - st["mean"]) / st["std"])[:, None])
            elif kind == "status":
                x = np.array([st["most_frequent"] if p is None else p for p in parsed], float)
                blocks.append((x if flag_positive else 1.0 - x)[:, None])
            else:
                cats = st["categories"]
                index = {c: i for i, c in enumerate(cats)}
                onehot = np.zeros((len(pids), len(cats)))
                for row, (pid, p) in enumerate(zip(pids, parsed)):
                    p = st["most_frequent"] if p is None else p
                    if p in index:
                        onehot[row, index[p]] = 1.0
                    elif not self.impute:
                        problems.append(f"patient {pid}, column {col!r}: category {p!r} was not "
                                        f"seen in the training rows (known: {cats})")
                blocks.append(onehot)
            if not self.impute:
                problems += [f"patient {pid}, column {col!r}: missing value"
                             for pid, p, v in zip(pids, parsed, values[key])
                             if p is None and is_missing(v)]
        _raise(problems, "encoding", self.impute)
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


def _raise(problems: list[str], stage: str, impute: bool) -> None:
    if not problems:
        return
    shown = "; ".join(problems[:10])
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    hint = "" if impute else (" Fix the table, or pass --clinical-impute to fill missing "
                              "values with training medians / most frequent values and unseen "
                              "categories with zeros.")
    raise ClinicalError(f"clinical table problem while {stage}: {shown}{more}.{hint}")

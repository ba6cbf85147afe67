"""BCNB-style clinical table for the synthetic cohort.

Columns and value sets follow the BCNB `patient-clinical-data.xlsx`. The clinical
variables carry a deliberately weak signal about ALN status (N+ tumours are a little larger,
more often grade 3 and HER2-positive, patients slightly younger): enough for a clinical
baseline to beat chance, not enough to match the image signal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from balnmp_cache.errors import OptionError

__all__ = [
    "ALN_STATUSES",
    "CLINICAL_COLUMNS",
    "HER2_EXPRESSIONS",
    "MOLECULAR_SUBTYPES",
    "SURGICAL",
    "TUMOUR_TYPES",
    "assign_aln_status",
    "make_clinical_table",
]

ALN_STATUSES = ("N0", "N+(1-2)", "N+(>2)")
TUMOUR_TYPES = ("Invasive ductal carcinoma", "Invasive lobular carcinoma", "Other type")
HER2_EXPRESSIONS = ("0", "1+", "2+", "3+")
SURGICAL = ("Breast-conserving surgery", "Modified Radical Mastectomy")
MOLECULAR_SUBTYPES = ("Luminal A", "Luminal B", "HER2(+)", "Triple negative")
CLINICAL_COLUMNS = (
    "Patient ID",
    "Age(years)",
    "Tumour Size(cm)",
    "Tumour Type",
    "ER",
    "PR",
    "HER2",
    "HER2 Expression",
    "Histological grading",
    "Surgical",
    "Ki67",
    "Molecular subtype",
    "Number of lymph node metastases",
    "ALN status",
)


def assign_aln_status(
    rng: np.random.Generator, n: int, positive_fraction: float = 0.4
) -> list[str]:
    """Exactly `round(positive_fraction * n)` N+ patients, split between N+(1-2) (the
    larger half) and N+(>2), in random order; small cohorts still get every class."""
    if not 0 <= positive_fraction <= 1:
        raise OptionError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    n_pos = int(round(positive_fraction * n))
    n_heavy = n_pos // 2
    statuses = ["N0"] * (n - n_pos) + ["N+(1-2)"] * (n_pos - n_heavy) + ["N+(>2)"] * n_heavy
    return [statuses[i] for i in rng.permutation(n)]


def _subtype(er: bool, pr: bool, her2: bool, ki67: int) -> str:
    if her2 and not (er or pr):
        return "HER2(+)"
    if not (er or pr or her2):
        return "Triple negative"
    if her2 or ki67 >= 14:
        return "Luminal B"
    return "Luminal A"


def _patient_row(rng: np.random.Generator, pid: int, status: str) -> dict[str, object]:
    positive = status != "N0"
    pos_neg = ("Negative", "Positive")
    age = int(np.clip(np.rint(rng.normal(50.0 if positive else 53.0, 10.0)), 25, 85))
    size = float(np.clip(np.exp(rng.normal(np.log(2.5 if positive else 2.0), 0.45)), 0.5, 8.0))
    grade_p = (0.06, 0.50, 0.44) if positive else (0.16, 0.60, 0.24)
    grade = int(rng.choice([1, 2, 3], p=grade_p))
    er = bool(rng.random() < 0.75)
    pr = bool(rng.random() < (0.8 if er else 0.15))
    her2 = bool(rng.random() < (0.32 if positive else 0.18))
    if her2:
        her2_expr = "3+" if rng.random() < 0.7 else "2+"
    else:
        her2_expr = str(rng.choice(["0", "1+", "2+"], p=[0.35, 0.45, 0.20]))
    ki67 = int(np.clip(np.rint(rng.normal({1: 10, 2: 20, 3: 40}[grade], 10)), 1, 95))
    bcs = rng.random() < (0.4 if size < 2.0 else 0.2)
    if status == "N0":
        n_nodes = 0
    elif status == "N+(1-2)":
        n_nodes = int(rng.integers(1, 3))
    else:
        n_nodes = 3 + int(rng.poisson(3.0))
    return {
        "Patient ID": pid,
        "Age(years)": age,
        "Tumour Size(cm)": round(size, 1),
        "Tumour Type": str(rng.choice(TUMOUR_TYPES, p=[0.85, 0.05, 0.10])),
        "ER": pos_neg[er],
        "PR": pos_neg[pr],
        "HER2": pos_neg[her2],
        "HER2 Expression": her2_expr,
        "Histological grading": grade,
        "Surgical": SURGICAL[0] if bcs else SURGICAL[1],
        "Ki67": ki67,
        "Molecular subtype": _subtype(er, pr, her2, ki67),
        "Number of lymph node metastases": n_nodes,
        "ALN status": status,
    }


def make_clinical_table(
    rng: np.random.Generator, statuses: list[str], patient_ids: list[int] | None = None
) -> pd.DataFrame:
    """One BCNB-style row per patient (`Patient ID` integers 1..N unless given)."""
    ids = patient_ids if patient_ids is not None else list(range(1, len(statuses) + 1))
    if len(ids) != len(statuses):
        raise OptionError(f"{len(ids)} patient ids for {len(statuses)} ALN statuses")
    bad = sorted(set(statuses) - set(ALN_STATUSES))
    if bad:
        raise OptionError(f"unknown ALN status {bad}; expected one of {ALN_STATUSES}")
    rows = [_patient_row(rng, int(pid), st) for pid, st in zip(ids, statuses)]
    return pd.DataFrame(rows, columns=list(CLINICAL_COLUMNS))

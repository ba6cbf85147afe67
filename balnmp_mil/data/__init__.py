"""Cohorts: bags from the feature store joined with labels, clinical data and splits.

`cohort.load_cohort` builds a `Cohort` (packed bags, resident on the device); `load` reads the
store in chunks; `tables` reads one table from a file; `labels` resolves label tables and the
BCNB tasks (`label_values`: what a label means, which class is positive); `provenance`
records what bags were extracted with; `clinical` encodes the BCNB clinical table (fitted on
training patients only); `splits` makes, checks and reads patient splits; `fixed_bags` reads
the paper's fixed bags and re-expresses a cohort as them (`--bags`).
"""

from __future__ import annotations

from balnmp_mil.data.clinical import ClinicalEncoder
from balnmp_mil.data.cohort import Cohort, cohort_from_bags, load_cohort
from balnmp_mil.data.labels import TASKS, LabelTable, Task, read_table
from balnmp_mil.data.splits import Split, kfold_splits, load_splits, save_splits, stratified_split
from balnmp_mil.errors import ClinicalError, CohortError, LabelError, SplitError

__all__ = [
    "TASKS",
    "ClinicalEncoder",
    "ClinicalError",
    "Cohort",
    "CohortError",
    "LabelError",
    "LabelTable",
    "Split",
    "SplitError",
    "Task",
    "cohort_from_bags",
    "kfold_splits",
    "load_cohort",
    "load_splits",
    "read_table",
    "save_splits",
    "stratified_split",
]

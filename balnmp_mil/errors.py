"""The errors `balnmp_mil` raises for bad input or bad usage, under one base.

`MILError` derives from `balnmp_cache.errors.BalnmpError`, so one `except BalnmpError` (and the
command line's mapping to exit status 2) covers both stages, feature-store errors included.
Anything else is a bug and keeps its traceback. Messages name the file, column, patient or
option at fault and say what to do on the command line.
"""

from __future__ import annotations

from balnmp_cache.errors import BalnmpError, RegistryError, StoreError

__all__ = [
    "BalnmpError",
    "ClinicalError",
    "CohortError",
    "EvaluationError",
    "InputError",
    "LabelError",
    "MILError",
    "MILWarning",
    "ModelError",
    "RegistryError",
    "RunDirError",
    "SplitError",
    "StoreError",
    "StoreMismatchError",
]


class MILError(BalnmpError):
    """Bad input or bad usage in the MIL stage."""


class LabelError(MILError):
    """A label table problem; the message names the file/column/patient and what to do."""


class ClinicalError(MILError):
    """A clinical table problem; the message names the patient(s), column and what to do."""


class CohortError(MILError):
    """A cohort cannot be assembled; the message names the slides/patients and what to do."""


class SplitError(MILError):
    """Overlapping, duplicated or unknown patients in a split, or an unreadable splits file."""


class InputError(MILError):
    """Bad user input (a path, task, model, option or patient); the message says what to do."""


class RunDirError(MILError):
    """A run directory is missing, damaged, already exists, or holds a bad config."""


class ModelError(MILError):
    """A model that cannot be built or run as asked (a hyper-parameter it does not take or
    allow, clinical data of the wrong width)."""


class StoreMismatchError(MILError):
    """Features unlike those a run was trained on (encoder, weights, dimension, µm/px, patch
    size); the message names both values and `--allow-store-mismatch`."""


class MILWarning(UserWarning):
    """A check that could not be made or a choice made for the user (a split part without a
    class, an old run without a store record): the command goes on, and says so."""


class EvaluationError(MILError):
    """Scores and labels that cannot be evaluated or drawn (shapes, NaN, a single class)."""

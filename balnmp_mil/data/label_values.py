"""What the values of a `label` column mean: class indices or class names, and which class of
two is positive.

Integer labels are class indices `0..C-1` (every class must have a patient); other values are
class names, sorted. Of two classes the positive one is put second (`class_names[1]`): the one
`--positive` names, else `1`, `True` or a name in `POSITIVE_NAMES`; any other pair is refused
with a message asking for `--positive`. Numbers that are not whole (0.5 among 0 and 1) and
numbers mixed with names are refused naming the rows (row = line of the file, header = 1),
never read as extra classes. With the class names of a trained run (`classes`), values are
mapped onto them, so new patients of one class keep the run's class order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from balnmp_mil.errors import LabelError

__all__ = ["POSITIVE_NAMES", "label_classes"]

# Class names read as "the positive class" of a binary `label` column (compared ignoring case
# and spaces); the other class is then the negative one.
POSITIVE_NAMES = frozenset({
    "1", "true", "positive", "pos", "yes", "y", "+", "n+", "present", "detected",
    "malignant", "tumour", "tumor", "metastatic", "metastasis", "cancer",
})  # fmt: skip
SHOWN = 6  # rows named in a message


def _rows(values: Sequence[object], ids: pd.Series, rows: Sequence[int]) -> str:
    """"0.5 (patient 7, row 8), ..." for the first rows (positions in the table)."""
    shown = [f"{values[i]!r} (patient {ids.iloc[i]}, row {i + 2})" if isinstance(values[i], str)
             else f"{values[i]} (patient {ids.iloc[i]}, row {i + 2})" for i in rows[:SHOWN]]
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return ", ".join(shown) + more


def _texts(values: pd.Series, ids: pd.Series) -> tuple[list[str], bool]:
    """Each value as its class name, and whether they are integers; refuses fractions and
    numbers mixed with names."""
    if values.dtype == bool:
        return [str(bool(v)) for v in values], False
    numeric = pd.to_numeric(values, errors="coerce")
    is_number = numeric.notna().to_numpy()
    if is_number.all():
        whole = np.mod(numeric.to_numpy(dtype=float), 1) == 0
        if not whole.all():
            shown = _rows(list(values), ids, list(np.flatnonzero(~whole)))
            raise LabelError(
                f"the label column holds numbers that are not whole: {shown}; labels are class "
                "indices 0, 1, ... or class names: fix those rows"
            )
        return [str(int(v)) for v in numeric], True
    if is_number.any():
        fewer = ~is_number if (~is_number).sum() <= is_number.sum() else is_number
        shown = _rows(list(values), ids, list(np.flatnonzero(fewer)))
        raise LabelError(
            f"the label column mixes numbers and names: {shown}; labels are all class indices "
            "(0, 1, ...) or all class names: fix those rows"
        )
    return [str(v).strip() for v in values], False


def _positive_last(labels: np.ndarray, names: list[str], positive: str | None
                   ) -> tuple[np.ndarray, list[str]]:
    """Two classes ordered (negative, positive); more classes as they are."""
    if positive is not None:
        if len(names) != 2:
            raise LabelError(f"--positive {positive}: a positive class is chosen between two "
                             f"classes; the label column has {len(names)} "
                             f"({', '.join(names)}): leave --positive out")
        if positive not in names:
            raise LabelError(f"--positive {positive} is not a class of the label column; its "
                             f"classes are {', '.join(repr(n) for n in names)}")
        pos = names.index(positive)
    elif len(names) == 2:
        hits = [i for i, n in enumerate(names) if "".join(n.lower().split()) in POSITIVE_NAMES]
        if len(hits) != 1:
            raise LabelError(
                f"which class is positive, {names[0]!r} or {names[1]!r}? Sensitivity, PPV and "
                f"the ROC depend on it: pass --positive {names[1]} (or --positive {names[0]})"
            )
        pos = hits[0]
    else:
        return labels, names
    return (labels, names) if pos == 1 else (1 - labels, [names[1], names[0]])


def _onto(texts: list[str], ids: pd.Series, classes: Sequence[str]) -> np.ndarray:
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = [i for i, t in enumerate(texts) if t not in index]
    if unknown:
        shown = _rows(texts, ids, unknown)
        raise LabelError(f"labels {shown} are not classes of the run ({', '.join(classes)}); "
                         "fix those rows or apply a run trained on these classes")
    return np.array([index[t] for t in texts], dtype=np.int64)


def label_classes(values: pd.Series, ids: pd.Series, positive: str | None = None,
                  classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(labels in [0, C), class names) of a `label` column (see the module docstring)."""
    missing = values.isna().to_numpy()
    if missing.any():
        raise LabelError(f"missing label for {list(ids[missing])[:10]}; fill in or remove "
                         "those rows")
    texts, integers = _texts(values.reset_index(drop=True), ids.reset_index(drop=True))
    if classes is not None:
        return _onto(texts, ids.reset_index(drop=True), classes), list(classes)
    if integers:
        ints = np.array([int(t) for t in texts], dtype=np.int64)
        if ints.min() < 0:
            raise LabelError(f"labels must be >= 0; got {ints.min()} "
                             f"(patient {ids.iloc[int(ints.argmin())]})")
        names = [str(i) for i in range(int(ints.max()) + 1)]
        empty = [n for i, n in enumerate(names) if not (ints == i).any()]
        if empty and len(set(texts)) > 1:  # one value: a one-class cohort, refused as such
            raise LabelError(
                f"integer labels {', '.join(sorted(set(texts), key=int))} leave class "
                f"{', '.join(empty)} with no patient; integer labels are class indices "
                "0..C-1: number the classes from 0, or write class names"
            )
        return _positive_last(ints, names, positive)
    names = sorted(set(texts))
    index = {n: i for i, n in enumerate(names)}
    return _positive_last(np.array([index[t] for t in texts], dtype=np.int64), names, positive)

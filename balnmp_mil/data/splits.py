"""Patient-level train/val/test splits: stratified, seeded, disjoint by construction, saved as JSON.

Splits hold patient ids (str), never row indices, so a saved split stays valid when a cohort
is reloaded in another order or with more slides per patient. A `Split` refuses to exist with
a patient in two parts (checked in `__post_init__`, not with `assert`, so it holds under -O).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from balnmp_mil.errors import MILWarning, SplitError

FORMAT = "balnmp-splits"

Ids = Sequence[str] | Sequence[int]
Labels = Sequence[int] | np.ndarray  # a torch tensor works too (read through .detach())


@dataclass
class Split:
    """Patient ids of the training, validation and test parts (disjoint)."""

    train: list[str]
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.train, self.val, self.test = ([str(p) for p in part]
                                           for part in (self.train, self.val, self.test))
        seen: dict[str, str] = {}
        for name, part in self.parts().items():
            for pid in part:
                if pid in seen:
                    where = "twice in" if seen[pid] == name else f"in both {seen[pid]} and"
                    raise SplitError(f"patient {pid} is {where} {name}; a patient must belong to "
                                     "exactly one part of a split")
                seen[pid] = name

    def parts(self) -> dict[str, list[str]]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.parts().items()}

    def indices(self, patient_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Positions of each part's patients in `patient_ids` (e.g. `cohort.patient_ids`).

        Raises SplitError naming patients of the split that the cohort lacks.
        """
        pos = {str(p): i for i, p in enumerate(patient_ids)}
        missing = [p for part in self.parts().values() for p in part if p not in pos]
        if missing:
            raise SplitError(f"{len(missing)} patient(s) of the split are not in the cohort, "
                             f"e.g. {missing[:5]}; was the split made for another cohort?")
        return {k: np.array([pos[p] for p in v], dtype=np.int64) for k, v in self.parts().items()}


def _check_inputs(patient_ids: Ids, labels: Labels) -> tuple[list[str], np.ndarray]:
    pids = [str(p).strip() for p in patient_ids]
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    y = y.ravel()
    if len(pids) != y.size:
        raise SplitError(f"{len(pids)} patient ids but {y.size} labels")
    dupes = sorted({p for p in pids if pids.count(p) > 1}) if len(set(pids)) < len(pids) else []
    if dupes:
        raise SplitError(f"patient ids must be unique; repeated: {dupes[:5]}")
    return pids, y


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes proportionally to `counts` (largest remainder)."""
    if counts.sum() == 0:
        return np.zeros_like(counts)
    exact = counts * total / counts.sum()
    out = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - out), kind="mergesort")[: total - out.sum()]:
        out[i] += 1
    return np.minimum(out, counts)


def _carve(pids: list[str], y: np.ndarray, frac: float, rng: np.random.Generator
           ) -> tuple[list[str], list[str]]:
    """Stratified (rest, carved) with round(frac * n) patients carved out."""
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    counts = np.array([len(ix) for ix in by_class])
    take = _allocate(counts, int(round(frac * len(pids))))
    carved = {int(i) for ix, t in zip(by_class, take) for i in ix[:t]}
    rest = [p for i, p in enumerate(pids) if i not in carved]
    return rest, [p for i, p in enumerate(pids) if i in carved]


def _check_frac(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise SplitError(f"{name} fraction must be in [0, 1), got {value}")


def class_counts(labels: Labels, class_names: Sequence[str]) -> dict[str, int]:
    """Patients per class name."""
    y = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    return {name: int((y.ravel() == c).sum()) for c, name in enumerate(class_names)}


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def check_classes(labels: Labels, class_names: Sequence[str]) -> None:
    """A cohort a classifier can learn from: two classes or more, each with patients."""
    counts = class_counts(labels, class_names)
    present = [name for name, n in counts.items() if n]
    if len(present) < 2:
        raise SplitError(f"all {sum(counts.values())} patients are of one class "
                         f"({present[0] if present else 'none'}); a classifier needs patients "
                         "of at least two classes: check the labels (and --task)")
    empty = [name for name, n in counts.items() if not n]
    if empty:
        raise SplitError(f"class {', '.join(empty)} has no patient ({_counts_text(counts)}); "
                         "every class needs patients: check the labels (and --task)")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_split_sizes(labels: Labels, class_names: Sequence[str]) -> None:
    """At least two patients per class: one to train on, one to test on. (Fewer than one per
    part leaves a part without the class; the caller warns of that, with the numbers.)"""
    for name, n in class_counts(labels, class_names).items():
        if n < 2:
            raise SplitError(f"class {name} has {_plural(n, 'patient')}; a split needs at "
                             "least 2 per class (one to train on, one to test on): label more "
                             "patients (or choose another --task)")


def check_fold_sizes(labels: Labels, class_names: Sequence[str], k: int) -> None:
    """At least two patients per class; warns (with the numbers) when a class has fewer
    patients than folds, so that some folds test none of it."""
    check_split_sizes(labels, class_names)
    counts = class_counts(labels, class_names)
    name, n = min(counts.items(), key=lambda item: item[1])
    if n < k:
        warnings.warn(f"class {name} has {_plural(n, 'patient')}, fewer than --folds {k}: "
                      f"{k - n} of the folds test no patient of class {name} (their AUC is "
                      f"undefined); pass --folds {n} or fewer", MILWarning, stacklevel=2)


def stratified_split(patient_ids: Ids, labels: Labels, val: float = 0.15,
                     test: float = 0.2, seed: int = 0) -> Split:
    """One stratified split; `val` and `test` are fractions of all patients.

    Each class is shuffled with the seed and cut proportionally, so class ratios match to
    within one patient. Ids keep the input order within each part.
    """
    _check_frac("val", val)
    _check_frac("test", test)
    if val + test >= 1.0:
        raise SplitError(f"val ({val}) + test ({test}) leaves no training patients")
    pids, y = _check_inputs(patient_ids, labels)
    rng = np.random.default_rng(seed)
    rest, test_ids = _carve(pids, y, test, rng)
    keep = np.isin(pids, rest)
    frac_val = val * len(pids) / max(1, len(rest))
    train_ids, val_ids = _carve(rest, y[keep], min(frac_val, 0.999), rng)
    return Split(train=train_ids, val=val_ids, test=test_ids)


def kfold_splits(patient_ids: Ids, labels: Labels, k: int = 5, val: float = 0.15,
                 seed: int = 0) -> list[Split]:
    """k stratified folds: fold i is the test set of split i; `val` (a fraction of the
    remaining training patients) is carved from the training folds, stratified.

    Every patient is in exactly one test fold.
    """
    pids, y = _check_inputs(patient_ids, labels)
    if not 2 <= k <= len(pids):
        raise SplitError(f"k must be between 2 and the number of patients ({len(pids)}), got {k}")
    _check_frac("val", val)
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(pids), dtype=np.int64)
    offset = 0
    for c in np.unique(y):  # deal each shuffled class round-robin, continuing across classes
        ix = rng.permutation(np.flatnonzero(y == c))
        fold_of[ix] = (np.arange(ix.size) + offset) % k
        offset += ix.size
    splits = []
    for f in range(k):
        in_test = fold_of == f
        rest = [p for p, t in zip(pids, in_test) if not t]
        train_ids, val_ids = _carve(rest, y[~in_test], val, rng)
        splits.append(Split(train=train_ids, val=val_ids,
                            test=[p for p, t in zip(pids, in_test) if t]))
    return splits


def save_splits(splits: Split | Sequence[Split], path: str | Path) -> Path:
    """Write one split or a list (k-fold) as JSON, atomically (temp file + rename)."""
    path = Path(path)
    single = isinstance(splits, Split)
    items = [splits] if isinstance(splits, Split) else list(splits)
    doc = {"format": FORMAT, "version": 1, "kind": "single" if single else "folds",
           "splits": [s.to_dict() for s in items]}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _parts(path: Path, item: object) -> dict[str, list[str]]:
    """One split of a splits file: lists of patient ids (str or int) for train/val/test."""
    if not isinstance(item, dict):
        raise SplitError(f"{path} is not a balnmp splits file (a split is "
                         f"{type(item).__name__}, not a mapping of train/val/test)")
    parts = {name: item.get(name, []) for name in ("train", "val", "test")}
    for name, ids in parts.items():
        if not isinstance(ids, list) or not all(isinstance(p, (str, int)) for p in ids):
            raise SplitError(f"{path} is not a balnmp splits file ({name} is not a list of "
                             "patient ids)")
    return parts


def load_splits(path: str | Path) -> Split | list[Split]:
    """Read `save_splits` output: a Split if one was saved, else the list of folds.

    Overlapping patients in a file raise SplitError naming the patient and the file; so does
    a file that is not JSON or not shaped as `save_splits` writes it.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SplitError(f"splits file {path} does not exist") from e
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SplitError(f"cannot read splits file {path}: {e}; pass the splits.json of a "
                         "balnmp-mil run") from e
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT
            or not isinstance(doc.get("splits"), list) or not doc["splits"]):
        raise SplitError(f"{path} is not a balnmp splits file (expected format {FORMAT!r}, "
                         "as a run's splits.json)")
    try:
        items = [Split(**_parts(path, s)) for s in doc["splits"]]
    except SplitError as e:
        raise SplitError(e.args[0] if str(path) in str(e) else f"{path}: {e}") from e
    return items[0] if doc.get("kind") == "single" else items

"""Fixed bags (`balnmp-mil train --bags DIR/<task>.bags.json`): the paper's bags of patches.

The BALNMP code cut each patient's patches once into bags of 10 (leftovers dropped) and trains
on each bag as one sample per epoch; at validation and test a patient's score is the mean (or
max) of its bags' probabilities. `balnmp-mil paper splits` writes those bags as a
`balnmp-bags` file: `{"format": "balnmp-bags", "version": 1, "task", "class_names",
"source", "bags": [{"patient_id", "label", "split", "patches": [file names]}]}`.

`read_fixed_bags` reads and checks such a file; `fixed_bag_cohort` re-expresses a loaded
`Cohort` as those bags: each bag's rows are the patient's rows whose recorded source file
(`Cohort.patch_files`, from the store's `PackedBags.patch_files`) is one of its patches, and
`bag_patient` is the group key by which predictions merge into patients (`--merge`). The rows
no bag names are left out, as the paper left them out. Labels come from the labels table; the
bags file's labels must agree with it. The bags file's `split` is the run's split when
`--splits` is not given (`balnmp_mil.workflow.steps.make_split`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from balnmp_mil.data.cohort import Cohort
from balnmp_mil.errors import CohortError, InputError, LabelError, MILWarning

__all__ = ["FORMAT", "PARTS", "VERSION", "FixedBag", "FixedBags", "fixed_bag_cohort",
           "read_fixed_bags"]

FORMAT = "balnmp-bags"
VERSION = 1
PARTS = ("train", "val", "test")
# What to do when the store holds no names: a resume keeps finished slides as they are.
NO_NAMES_FIX = ("extract the patch folders again with this version of extract-features to a "
                "new --out (a resume of the old store keeps its slides as they are, without "
                "names) and pass that store")
SHOWN = 5  # names or patients quoted in a message


@dataclass
class FixedBag:
    """One fixed bag: its patient, label (class index), split part and patch file names."""

    patient_id: str
    label: int
    split: str
    patches: list[str]


@dataclass
class FixedBags:
    """A `balnmp-bags` file: its path, task, class names and bags (in file order)."""

    path: str
    task: str | None
    class_names: list[str]
    bags: list[FixedBag]

    def parts(self) -> dict[str, list[str]]:
        """Patient ids of each split part, in file order (each patient in one part)."""
        out: dict[str, dict[str, None]] = {p: {} for p in PARTS}
        for bag in self.bags:
            out[bag.split][bag.patient_id] = None
        return {p: list(ids) for p, ids in out.items()}


def _malformed(path: str | os.PathLike[str], why: str) -> InputError:
    return InputError(f"bags file {path} {why}; pass a file written by `balnmp-mil paper "
                      "splits OFFICIAL_JSON_DIR --out DIR` (DIR/<task>.bags.json)")


def _bag(entry: Any, i: int, n_classes: int, path: str) -> FixedBag:
    if not isinstance(entry, dict) or not {"patient_id", "label", "split", "patches"} <= set(
            entry):
        raise _malformed(path, f"has a bag #{i} without patient_id, label, split and patches")
    pid, label, part, patches = (entry[k] for k in ("patient_id", "label", "split", "patches"))
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_classes:
        raise _malformed(path, f"gives patient {pid} label {label!r}; labels are class "
                               f"indices 0..{n_classes - 1}")
    if part not in PARTS:
        raise _malformed(path, f"gives patient {pid} split {part!r}; one of {', '.join(PARTS)}")
    if not isinstance(patches, list) or not patches or not all(
            isinstance(p, str) and p for p in patches):
        raise _malformed(path, f"gives patient {pid} a bag #{i} whose patches are not a "
                               "non-empty list of file names")
    return FixedBag(str(pid), label, part, list(patches))


def read_fixed_bags(path: str | os.PathLike[str]) -> FixedBags:
    """Read and check a `balnmp-bags` file; `InputError` names the file and what is wrong.

    A patient keeps one label and one split part over all its bags."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _malformed(path, f"is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _malformed(path, f"is not a {FORMAT} file (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise _malformed(path, f"has version {doc.get('version')!r}; this balnmp reads "
                               f"version {VERSION}")
    names, bags = doc.get("class_names"), doc.get("bags")
    if not isinstance(names, list) or len(names) < 2 or not isinstance(bags, list) or not bags:
        raise _malformed(path, "lacks its class_names or bags")
    fixed = FixedBags(str(path), doc.get("task"), [str(n) for n in names],
                      [_bag(e, i, len(names), str(path)) for i, e in enumerate(bags)])
    seen: dict[str, FixedBag] = {}
    for bag in fixed.bags:
        first = seen.setdefault(bag.patient_id, bag)
        if (first.label, first.split) != (bag.label, bag.split):
            raise _malformed(path, f"gives patient {bag.patient_id} two labels or split parts "
                                   f"({first.label}/{first.split}, {bag.label}/{bag.split})")
    return fixed


def check_task(fixed: FixedBags, task: str | None, class_names: list[str]) -> None:
    """The bags file must be for the run's `--task` and its classes."""
    if fixed.task != task:
        given = f"--task is {task}" if task else "--task is not given"
        raise InputError(f"bags file {fixed.path} holds the fixed bags of task {fixed.task}, "
                         f"but {given}; pass --task {fixed.task}, or the bags file of the "
                         "run's task (`balnmp-mil paper splits` writes DIR/<task>.bags.json)")
    if list(fixed.class_names) != list(class_names):
        raise InputError(f"bags file {fixed.path} has classes {fixed.class_names}, the labels "
                         f"give {list(class_names)}; pass the bags file of this task")


def _patients(cohort: Cohort, fixed: FixedBags, on_missing: str) -> list[int]:
    """Cohort indices of the patients that have fixed bags (cohort order); the others are
    warned of; bag patients absent from the cohort are an error (or warned of and skipped)."""
    pos = {p: i for i, p in enumerate(cohort.patient_ids)}
    wanted = list(dict.fromkeys(b.patient_id for b in fixed.bags))
    absent = [p for p in wanted if p not in pos]
    if absent:
        msg = (f"{len(absent)} patients of bags file {fixed.path} are not in the cohort "
               f"(FEATURES and --labels), e.g. {', '.join(absent[:SHOWN])}")
        if on_missing == "error":
            raise CohortError(f"{msg}; extract and label them, or pass --on-missing warn to "
                              "train without their bags")
        warnings.warn(f"{msg}; their bags are skipped", MILWarning, stacklevel=4)
    have = {p for p in wanted if p in pos}
    left = [p for p in cohort.patient_ids if p not in have]
    if left:
        warnings.warn(f"{len(left)} patients of the cohort have no bag in bags file "
                      f"{fixed.path} and are left out (e.g. {', '.join(left[:SHOWN])})",
                      MILWarning, stacklevel=4)
    return [i for i, p in enumerate(cohort.patient_ids) if p in have]


def _check_labels(cohort: Cohort, fixed: FixedBags, patients: list[int]) -> None:
    """The labels table is the truth for labels: a bags file that disagrees is refused."""
    label_of = {b.patient_id: fixed.class_names[b.label] for b in fixed.bags}
    y = cohort.labels.cpu().tolist()
    wrong = [(cohort.patient_ids[i], label_of[cohort.patient_ids[i]], cohort.class_names[y[i]])
             for i in patients if label_of[cohort.patient_ids[i]] != cohort.class_names[y[i]]]
    if wrong:
        pid, theirs, ours = wrong[0]
        raise LabelError(f"{len(wrong)} patients have another label in bags file {fixed.path} "
                         f"than in the labels table (e.g. patient {pid}: {theirs} in the bags "
                         f"file, {ours} in --labels); labels come from --labels only: pass the "
                         "labels table and the bags file of the same task and cohort")


def _patient_rows(cohort: Cohort) -> list[np.ndarray]:
    """Each patient's packed rows (all its bags, in order)."""
    offs = cohort.offsets.cpu().numpy()
    rows: list[list[np.ndarray]] = [[] for _ in range(len(cohort))]
    for b, p in enumerate(cohort.bag_patient.cpu().tolist()):
        rows[p].append(np.arange(offs[b], offs[b + 1]))
    return [np.concatenate(r) if r else np.zeros(0, np.int64) for r in rows]


def _resolve(cohort: Cohort, fixed: FixedBags, patients: list[int], files: np.ndarray
             ) -> list[tuple[int, np.ndarray]]:
    """(cohort patient index, rows) of every fixed bag, patients in cohort order, found by
    the rows' patch file names `files`."""
    by_patient: dict[str, list[FixedBag]] = {}
    for bag in fixed.bags:
        by_patient.setdefault(bag.patient_id, []).append(bag)
    rows_of = _patient_rows(cohort)
    out: list[tuple[int, np.ndarray]] = []
    missing: list[tuple[str, str]] = []
    for i in patients:
        pid = cohort.patient_ids[i]
        names = files[rows_of[i]]
        if not (names != "").any():
            raise CohortError(f"patient {pid}'s slides have no recorded patch file names in "
                              f"the feature store {cohort.meta.get('store')} (bags file "
                              f"{fixed.path}): {NO_NAMES_FIX}")
        index = dict(zip(names.tolist(), rows_of[i].tolist(), strict=True))
        if len(index) < len(names):
            raise CohortError(f"patient {pid} has two rows from one patch file name in the "
                              "feature store; its bags are ambiguous (one slide per patient "
                              "folder, please)")
        for bag in by_patient[pid]:
            lost = [n for n in bag.patches if n not in index]
            missing.extend((pid, n) for n in lost)
            out.append((i, np.array([index[n] for n in bag.patches if n in index], np.int64)))
    if missing:
        pid = missing[0][0]
        first = [n for p, n in missing if p == pid][:SHOWN]
        n_pat = len({p for p, _ in missing})
        raise CohortError(f"{len(missing)} patch files of bags file {fixed.path} ({n_pat} "
                          f"patients) are not in the feature store {cohort.meta.get('store')}, "
                          f"e.g. patient {pid}: {', '.join(first)}; extract the same patch "
                          "folders the bags were cut from (BCNB paper_patches)")
    return out


def _slides(cohort: Cohort, rows: np.ndarray, counts: np.ndarray
            ) -> tuple[list[str], list[str], np.ndarray | None]:
    """(each bag's slide ids ";"-joined, `slides`, `slide_offsets`) for the bags' `rows`:
    `slides` has one entry per run of consecutive rows of one slide."""
    if cohort.slide_offsets is None or not cohort.slides:
        return [""] * len(counts), [], None
    slide = np.searchsorted(cohort.slide_offsets, rows, side="right") - 1
    ends = np.cumsum(counts)
    names = [";".join(cohort.slides[s] for s in dict.fromkeys(slide[e - n : e].tolist()))
             for e, n in zip(ends.tolist(), counts.tolist(), strict=True)]
    starts = np.flatnonzero(np.r_[True, slide[1:] != slide[:-1]])
    return (names, [cohort.slides[s] for s in slide[starts]],
            np.append(starts, len(rows)).astype(np.int64))


def fixed_bag_cohort(cohort: Cohort, fixed: FixedBags, task: str | None = None,
                     on_missing: str = "error") -> Cohort:
    """`cohort` re-expressed as the bags of `fixed` (see the module docstring): one bag per
    fixed bag, `bag_patient` its patient, `bag_level` "fixed", the rows in bag order.
    `meta["fixed_bags"]` records the file, the number of bags, the rows no bag uses and the
    file's split parts."""
    check_task(fixed, task, cohort.class_names)
    files = cohort.patch_files
    if files is None:
        raise CohortError(f"the feature store {cohort.meta.get('store')} records no patch file "
                          f"names, so the bags of {fixed.path} cannot be found in it: "
                          f"{NO_NAMES_FIX}")
    patients = _patients(cohort, fixed, on_missing)
    _check_labels(cohort, fixed, patients)
    bags = _resolve(cohort, fixed, patients, files)
    new_index = {old: new for new, old in enumerate(patients)}
    rows = np.concatenate([r for _, r in bags])
    counts = np.array([len(r) for _, r in bags], dtype=np.int64)
    bag_slides, slides, slide_offsets = _slides(cohort, rows, counts)
    kept = np.isin(cohort.bag_patient.cpu().numpy(), patients)
    unused = int(cohort.bag_sizes.cpu().numpy()[kept].sum()) - len(np.unique(rows))
    dev, idx = cohort.features.device, torch.tensor(patients, dtype=torch.long)
    ids = [cohort.patient_ids[i] for i in patients]
    meta = dict(cohort.meta, fixed_bags={"file": fixed.path, "n_bags": len(bags),
                                         "n_rows_unused": unused, "parts": fixed.parts()})
    return replace(
        cohort,
        features=cohort.features.index_select(0, torch.from_numpy(rows).to(dev)),
        offsets=torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64)).to(
            cohort.offsets.device),
        bag_patient=torch.tensor([new_index[i] for i, _ in bags], dtype=torch.long,
                                 device=cohort.bag_patient.device),
        patient_ids=ids,
        labels=cohort.labels.index_select(0, idx.to(cohort.labels.device)),
        slide_ids=bag_slides,
        coords=cohort.coords[rows],
        clinical=None if cohort.clinical is None else cohort.clinical.index_select(
            0, idx.to(cohort.clinical.device)),
        clinical_table=None if cohort.clinical_table is None else cohort.clinical_table.loc[ids],
        bag_level="fixed",
        meta=meta,
        slides=slides,
        slide_offsets=slide_offsets,
        patch_files=files[rows],
    )

"""`balnmp-mil paper splits`: the paper's published patient splits and fixed bags.

The official repository publishes, per experiment K = 0..4, `{train,val,test}-type-K.json`
(`code/dataset/json/`; `code/breast.py` reads them): a list of bags, each
`{"id": patient, "label": class index, "patch_paths": ["patches/<id>/<file>.jpg", x 10]}`;
a patient has one entry per bag of 10 of its patches (cut once, leftovers dropped). Each K is
one of our tasks (`TYPE_TASKS`). We write per task `<task>.json`, our splits file (patient
ids per part), and `<task>.bags.json`, the fixed bags (patient, label, part, patch file
names as the patch-folder reader records them: the file name, without its folder).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from balnmp_cache.store._atomic import check_output
from balnmp_mil.data.fixed_bags import FORMAT as BAGS_FORMAT
from balnmp_mil.data.fixed_bags import VERSION as BAGS_VERSION
from balnmp_mil.data.labels import TASKS
from balnmp_mil.data.splits import Split, save_splits
from balnmp_mil.errors import SplitError
from balnmp_mil.workflow import rundir

__all__ = ["BAGS_FORMAT", "TYPE_TASKS", "OfficialTask", "import_splits", "read_official"]

# `type-K` of the official file names -> our task (the paper's five experiments, in order).
TYPE_TASKS = {0: "n0_vs_n+", 1: "n12_vs_n3", 2: "three_class", 3: "n0_vs_n12", 4: "n0_vs_n3"}
PARTS = ("train", "val", "test")


@dataclass
class OfficialTask:
    """One experiment's split and fixed bags, read from its three official files."""

    task: str
    split: Split
    bags: list[dict[str, Any]]  # {"patient_id", "label", "split", "patches"}

    def bags_doc(self, source: Path) -> dict[str, Any]:
        return {"format": BAGS_FORMAT, "version": BAGS_VERSION, "task": self.task,
                "class_names": list(TASKS.get(self.task).class_names),
                "source": str(source), "bags": self.bags}


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitError(f"cannot read official split file {path} ({exc})") from exc
    ok = isinstance(data, list) and all(
        isinstance(e, dict) and {"id", "label", "patch_paths"} <= set(e) for e in data)
    if not ok:
        raise SplitError(f"{path} is not an official BALNMP split file (a list of "
                         '{"id", "label", "patch_paths"} entries)')
    return data


def _bag(entry: dict[str, Any], part: str, n_classes: int, path: Path) -> dict[str, Any]:
    pid, label = str(entry["id"]), int(entry["label"])
    if not 0 <= label < n_classes:
        raise SplitError(f"{path}: patient {pid} has label {label}; the task has classes "
                         f"0..{n_classes - 1}")
    patches = [PurePosixPath(str(p)).name for p in entry["patch_paths"]]
    return {"patient_id": pid, "label": label, "split": part, "patches": patches}


def read_official(folder: str | Path, k: int) -> OfficialTask:
    """Experiment `k`'s split and bags from `folder`'s `{train,val,test}-type-k.json`."""
    folder = Path(folder)
    task = TYPE_TASKS[k]
    n_classes = len(TASKS.get(task).class_names)
    parts: dict[str, list[str]] = {}
    bags: list[dict[str, Any]] = []
    labels: dict[str, int] = {}
    for part in PARTS:
        path = folder / f"{part}-type-{k}.json"
        ids: dict[str, None] = {}
        for entry in _entries(path):
            bag = _bag(entry, part, n_classes, path)
            pid = bag["patient_id"]
            if labels.setdefault(pid, bag["label"]) != bag["label"]:
                raise SplitError(f"{path}: patient {pid} has labels {labels[pid]} and "
                                 f"{bag['label']} in different bags")
            ids[pid] = None
            bags.append(bag)
        parts[part] = list(ids)
    return OfficialTask(task, Split(**parts), bags)


def _writer(text: str) -> Callable[[Path], object]:
    return lambda tmp: tmp.write_text(text)


def import_splits(folder: str | Path, out: str | Path) -> list[OfficialTask]:
    """Write `out/<task>.json` and `out/<task>.bags.json` for every experiment K whose three
    files are in `folder`; a K with only some of them is an error naming the missing ones."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise SplitError(f"{folder} is not a folder; pass the official code/dataset/json")
    check_output(out, [("OFFICIAL_JSON_DIR", folder)], SplitError)
    found = []
    for k in TYPE_TASKS:
        have = [p for p in PARTS if (folder / f"{p}-type-{k}.json").is_file()]
        if have and len(have) < len(PARTS):
            lacking = [f"{p}-type-{k}.json" for p in PARTS if p not in have]
            raise SplitError(f"{folder} lacks {', '.join(lacking)} (experiment {k}, "
                             f"{TYPE_TASKS[k]})")
        if have:
            found.append(read_official(folder, k))
    if not found:
        raise SplitError(f"{folder} holds no official split files ({{train,val,test}}-type-K"
                         ".json, K = 0..4): pass the official code/dataset/json folder")
    out.mkdir(parents=True, exist_ok=True)
    for item in found:
        save_splits(item.split, out / f"{item.task}.json")
        text = json.dumps(item.bags_doc(folder.resolve()), indent=1)
        rundir.write_file(out / f"{item.task}.bags.json", _writer(text))
    return found

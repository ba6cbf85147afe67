"""`balnmp-mil paper splits` on files shaped like the official `{train,val,test}-type-K.json`
(`code/dataset/json/`, read by `code/breast.py`): sizes, labels and bags reproduced."""

from __future__ import annotations

import json

from click.testing import CliRunner

from balnmp_mil.cli import main
from balnmp_mil.data.splits import load_splits


def _write_official(folder, k: int, parts: dict[str, dict[str, tuple[int, int]]]) -> None:
    """`parts[part][patient] = (label, n_bags)`; bags of 10 `patches/<id>/<id>_<r>_<x>_<y>.jpg`
    listed patient after patient, as the official files list them."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, patients in parts.items():
        entries = []
        for pid, (label, n_bags) in patients.items():
            for b in range(n_bags):
                paths = [f"patches/{pid}/{pid}_{b}_{256 * i}_0.jpg" for i in range(10)]
                entries.append({"id": pid, "label": str(label), "patch_paths": paths})
        (folder / f"{part}-type-{k}.json").write_text(json.dumps(entries, indent=2))


def test_official_files_give_the_splits_labels_and_bags(tmp_path) -> None:
    official = tmp_path / "json"
    _write_official(official, 0, {"train": {"4": (0, 2), "800": (1, 3), "12": (1, 1)},
                                  "val": {"1034": (0, 2)}, "test": {"418": (1, 1), "9": (0, 4)}})
    _write_official(official, 2, {"train": {"4": (0, 1), "800": (2, 1)}, "val": {"12": (1, 1)},
                                  "test": {"9": (0, 2)}})
    (official / "updated_train-type-0.json").write_text("[]")  # another variant: not read
    res = CliRunner().invoke(main, ["paper", "splits", str(official), "--out",
                                    str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "n0_vs_n+: train 3, val 1, test 2 patients, 13 bags" in res.output
    split = load_splits(tmp_path / "out" / "n0_vs_n+.json")
    assert (split.train, split.val, split.test) == (["4", "800", "12"], ["1034"], ["418", "9"])
    doc = json.loads((tmp_path / "out" / "n0_vs_n+.bags.json").read_text())
    assert doc["format"] == "balnmp-bags" and doc["class_names"] == ["N0", "N+"]
    bags = doc["bags"]
    assert [b["patient_id"] for b in bags[:5]] == ["4", "4", "800", "800", "800"]
    assert {b["patient_id"]: b["label"] for b in bags} == {
        "4": 0, "800": 1, "12": 1, "1034": 0, "418": 1, "9": 0}
    assert bags[2]["split"] == "train" and bags[-1]["split"] == "test"
    assert bags[2]["patches"][:2] == ["800_0_0_0.jpg", "800_0_256_0.jpg"]
    three = json.loads((tmp_path / "out" / "three_class.bags.json").read_text())
    assert three["class_names"] == ["N0", "N+(1-2)", "N+(>2)"]
    assert [b["label"] for b in three["bags"]] == [0, 2, 1, 0, 0]
    assert not (tmp_path / "out" / "n12_vs_n3.json").exists()


def test_a_partial_experiment_and_inconsistent_labels_are_refused(tmp_path) -> None:
    official = tmp_path / "json"
    _write_official(official, 1, {"train": {"4": (0, 1)}, "val": {"5": (1, 1)}})
    res = CliRunner().invoke(main, ["paper", "splits", str(official), "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and "lacks test-type-1.json" in res.output
    _write_official(official, 1, {"train": {"4": (0, 1)}, "val": {"5": (1, 1)},
                                  "test": {"6": (3, 1)}})
    res = CliRunner().invoke(main, ["paper", "splits", str(official), "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and "patient 6 has label 3" in res.output
    _write_official(official, 1, {"train": {"4": (0, 1)}, "val": {"4": (0, 1)},
                                  "test": {"6": (1, 1)}})
    res = CliRunner().invoke(main, ["paper", "splits", str(official), "--out",
                                    str(tmp_path / "o")])
    assert res.exit_code == 2 and "patient 4 is in both train and val" in res.output

"""The paper's fixed bags end to end on the stores' own patch file names, nothing faked: BCNB-style
patch folders extracted (`extract-features --backend patches`) into HDF5 and Zarr, the HDF5
store packed (`balnmp-mil pack`), official-format split files imported (`balnmp-mil paper
splits`), and `balnmp-mil train --bags` on each of the three stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _data import bcnb_table, fast_args
from click.testing import CliRunner
from PIL import Image

from balnmp_cache.cli import main as extract_main
from balnmp_mil.cli import main

PATCH = 32
N_PATIENTS = 8  # bcnb_table's statuses cycle N0, N+(1-2), N+(>2): n0_vs_n+ labels 0, 1, 1, ...
# Patient ids by official part; each part holds both classes (val and test AUCs are defined).
PARTS = {"train": ["1", "2", "3", "6"], "val": ["4", "5"], "test": ["7", "8"]}
BAG = 4  # patch files per official bag


def _patch_folders(root: Path, rng: np.random.Generator) -> dict[str, list[str]]:
    """`root/<id>/<id>_<region>_<x>_<y>.jpg` (BCNB's paper_patches), 9 to 14 patches in one to
    three regions per patient; returns each patient's file names."""
    files = {}
    for pid in map(str, range(1, N_PATIENTS + 1)):
        folder = root / pid
        folder.mkdir(parents=True)
        n_regions = int(rng.integers(1, 4))
        cells = [(int(rng.integers(n_regions)), PATCH * (i % 4), PATCH * (i // 4))
                 for i in range(int(rng.integers(9, 15)))]
        for region, x, y in cells:
            pixels = rng.integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{pid}_{region}_{x}_{y}.jpg")
        files[pid] = sorted(p.name for p in folder.iterdir())
    return files


def _official_json(folder: Path, files: dict[str, list[str]], labels: dict[str, int],
                   rng: np.random.Generator) -> int:  # fmt: skip
    """`{train,val,test}-type-0.json` as the official repository has them (label a string,
    paths `patches/<id>/<file>`): each patient's files shuffled and cut into bags of `BAG`,
    leftovers dropped; returns the number of bags."""
    folder.mkdir()
    n_bags = 0
    for part, pids in PARTS.items():
        entries = []
        for pid in pids:
            shuffled = [files[pid][i] for i in rng.permutation(len(files[pid]))]
            entries += [{"id": pid, "label": str(labels[pid]),
                         "patch_paths": [f"patches/{pid}/{f}" for f in shuffled[b : b + BAG]]}
                        for b in range(0, len(shuffled) - BAG + 1, BAG)]
        n_bags += len(entries)
        (folder / f"{part}-type-0.json").write_text(json.dumps(entries, indent=1))
    return n_bags


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("bags_e2e")
    rng = np.random.default_rng(3)
    files = _patch_folders(root / "patches", rng)
    table = bcnb_table(N_PATIENTS)
    table.to_csv(root / "clinical.csv", index=False)
    labels = {str(p): int(s != "N0") for p, s in zip(table["Patient ID"],
                                                      table["ALN status"], strict=True)}
    n_bags = _official_json(root / "json", files, labels, rng)
    stores = {"h5": root / "features", "zarr": root / "features.zarr", "pack": root / "pack.h5"}
    for fmt in ("h5", "zarr"):
        _ok(CliRunner().invoke(extract_main, [
            str(root / "patches"), "--backend", "patches", "--level", "0", "--patch-size",
            str(PATCH), "--encoder", "resnet18", "--weights", "none", "--input-size",
            str(PATCH), "--device", "cpu", "--format", fmt, "--out", str(stores[fmt]),
            "--no-progress"]))
    _ok(CliRunner().invoke(main, ["pack", str(stores["h5"]), "--out", str(stores["pack"])]))
    _ok(CliRunner().invoke(main, ["paper", "splits", str(root / "json"), "--out",
                                  str(root / "splits")]))
    bags = root / "splits" / "n0_vs_n+.bags.json"
    runs = {}
    for name, store, seed in [*((n, s, 0) for n, s in stores.items()),
                              ("h5-seed1", stores["h5"], 1)]:
        runs[name] = root / f"run-{name}"
        _ok(CliRunner().invoke(main, [
            "train", str(store), "--labels", str(root / "clinical.csv"), "--task", "n0_vs_n+",
            "--bags", str(bags), "--seed", str(seed), "--out", str(runs[name]), *fast_args(2)]))
    return {"runs": runs, "bags": bags, "n_bags": n_bags, "files": files}


def test_each_store_trains_on_the_official_bags(paper_run: dict) -> None:
    doc = json.loads(paper_run["bags"].read_text())
    assert len(doc["bags"]) == paper_run["n_bags"]
    used = sum(len(b["patches"]) for b in doc["bags"])
    assert used < sum(len(f) for f in paper_run["files"].values())  # leftovers are not bags
    for run in paper_run["runs"].values():
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["bags"] == str(paper_run["bags"].resolve())
        assert saved["meta"]["n_bags"] == paper_run["n_bags"]
        assert saved["meta"]["n_patients"] == N_PATIENTS
        assert saved["meta"]["n_rows_unused"] == sum(map(len, paper_run["files"].values())) - used
        split = json.loads((run / "splits.json").read_text())["splits"][0]
        assert {part: split[part] for part in PARTS} == PARTS  # the official parts
        pred = pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
        assert sorted(pred.patient_id) == sorted(paper_run["files"])  # one row per patient
        assert pred.patient_id.is_unique


def test_the_three_stores_give_identical_predictions(paper_run: dict) -> None:
    """The same features (HDF5, Zarr and the pack hold the same float32 rows), the same bags
    resolved by name to the same rows, the same seed: the same run."""
    preds = {name: pd.read_csv(run / "predictions.csv", dtype={"patient_id": str})
             for name, run in paper_run["runs"].items()}
    for name in ("zarr", "pack"):
        pd.testing.assert_frame_equal(preds[name], preds["h5"], check_exact=True)
    other = preds["h5-seed1"]  # the runs do depend on what they are given
    assert other.patient_id.tolist() == preds["h5"].patient_id.tolist()
    assert not np.array_equal(other["prob_N+"], preds["h5"]["prob_N+"])

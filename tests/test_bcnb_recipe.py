"""The BCNB recipe end to end on a generated stand-in with BCNB's layout (small settings).

examples/bcnb/run_recipe.py: check_data -> extract-features (paper_patches or WSIs + JSON) ->
balnmp-mil train (clinical-only, DL-CNB, DL-CNB+C) -> table2.py. The README's own ```bash
block (make the stand-in, check it, run the recipe) is what runs: two of the five experiments
(one binary, the three-class one) with every model; the other tasks differ only in `--task`.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from _docs_helpers import ROOT, doc_commands, import_script, run_command

BCNB = ROOT / "examples" / "bcnb"
check_data = import_script(BCNB / "check_data.py")
table2 = import_script(BCNB / "table2.py")
run_recipe = import_script(BCNB / "run_recipe.py")  # imports the two above by name

SMALL = ["--encoder", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "1",
         "--device", "cpu", "--n-bootstrap", "20", "--batch-size", "64"]


@dataclass
class ReadmeRun:
    """The README's stand-in block, run once: where, and what it printed."""

    work: Path
    standin: Path
    out: Path
    printed: str
    statuses: list[int]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory: pytest.TempPathFactory) -> ReadmeRun:
    """Run examples/bcnb/README.md's ```bash block (make_standin, check_data, run_recipe)."""
    commands, _ = doc_commands([BCNB / "README.md"])
    assert [c.text.split()[1] for c in commands] == [
        "examples/bcnb/make_standin.py", "examples/bcnb/check_data.py",
        "examples/bcnb/run_recipe.py"]
    work = tmp_path_factory.mktemp("bcnb-readme")
    (work / "examples").symlink_to(ROOT / "examples")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        statuses = [run_command(c.text, work) for c in commands]
    return ReadmeRun(work, work / "demo" / "BCNB", work / "demo" / "bcnb-out",
                     buffer.getvalue(), statuses)


@pytest.fixture(scope="module")
def standin(readme_run: ReadmeRun) -> Path:
    assert readme_run.statuses[0] == 0, readme_run.printed
    return readme_run.standin


def test_check_data_counts(standin: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_data.main([str(standin), "--expect-patients", "10"]) == 0
    out = capsys.readouterr().out
    assert "10 patients" in out and "10 in" in out and "patches of 10 patients" in out
    assert check_data.main([str(standin), "--expect-patients", "1058"]) == 2
    assert "expected 1058" in capsys.readouterr().err


def test_check_data_names_what_is_missing(standin: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "BCNB"
    shutil.copytree(standin, broken)
    (broken / "patient-clinical-data.xlsx").unlink()
    assert check_data.main([str(broken)]) == 2
    assert "patient-clinical-data.xlsx" in capsys.readouterr().err
    assert run_recipe.main([str(broken), str(tmp_path / "out"), *SMALL]) == 2


def test_readme_recipe_prints_table2(readme_run: ReadmeRun,
                                     capsys: pytest.CaptureFixture) -> None:
    printed, out = readme_run.printed, readme_run.out
    assert readme_run.statuses == [0, 0, 0], printed
    # The commands of the README, printed as they run.
    assert "$ extract-features" in printed and "--backend patches --level 0 --patch-size 256" in printed
    assert "--model balnmp --instances-per-bag 10" in printed
    assert "--clinical-variant paper5" in printed
    # One store file per patient folder of paper_patches.
    assert len(list((out / "features").glob("*.h5"))) == 10
    # The Table-2-style table: every model and split, with the paper's numbers.
    table = (out / "table2.md").read_text()
    assert table in printed
    header = ("| Experiment | Model | Cohort | n (pos) | AUC [95% CI] | ACC (%) | SENS (%) | "
              "SPEC (%) | PPV (%) | NPV (%) | Cut-off |")
    assert table.startswith(header)
    rows = table.split("\n\n")[0].splitlines()[2:]
    # experiments x models x (train, val, test), the binary one with the paper's rows too
    assert len(rows) == 2 * 3 * 3 + 3 * 3
    assert "| N0 vs N+ | DL-CNB+C | Training |" in table
    assert "| Test (paper) | 218 | 0.816 [0.758, 0.865] |" in table
    assert "0.831 [0.775, 0.878]" in table
    assert "| N0 vs N+(1-2) vs N+(>2) | Clinical data only | Training |" in table
    assert "| argmax |" in table and "## DeLong tests between the models" in table
    # All three models of an experiment share the same patients.
    split = json.loads((out / "runs" / "n0_vs_n+" / "clinical" / "splits.json").read_text())
    for setting in ("image", "image+clinical"):
        other = json.loads((out / "runs" / "n0_vs_n+" / setting / "splits.json").read_text())
        assert other == split
    # --heatmaps: the DL-CNB model of each experiment on its test patients' whole-slide JPEGs,
    # the paper_patches features placed by their regions: every tile inside its WSI and inside
    # the bounding box of a tumour polygon of WSIs/<id>.json (grown by the white padding).
    for task in ("n0_vs_n+", "three_class"):
        test_ids = json.loads((out / "runs" / task / "image" / "splits.json").read_text())
        test_ids = test_ids["splits"][0]["test"]
        drawn = out / "heatmaps" / task
        assert sorted(p.stem for p in drawn.glob("*.png")) == sorted(test_ids), printed
        for pid in test_ids:
            _tiles_lie_in_their_regions(drawn / f"{pid}.geojson",
                                        readme_run.standin / "WSIs" / f"{pid}.json")
    # Rerunning keeps finished work (extraction skipped, runs kept) and prints the table again.
    assert run_recipe.main([str(readme_run.standin), str(out), *SMALL,
                            "--experiments", "n0_vs_n+"]) == 0
    assert "exists; kept" in capsys.readouterr().out


def _tiles_lie_in_their_regions(geojson: Path, regions: Path, patch: int = 256) -> None:
    import numpy as np

    doc = json.loads(geojson.read_text())
    corners = np.array([f["geometry"]["coordinates"][0][0] for f in doc["features"]
                        if f["properties"].get("objectType") == "tile"], float)
    assert len(corners)
    boxes = []
    for poly in json.loads(regions.read_text())["positive"]:
        v = np.asarray(poly["vertices"], float)
        lo = np.floor(v.min(0))
        hi = lo + np.ceil((np.ceil(v.max(0)) - lo) / patch) * patch
        boxes.append((lo, hi))
    inside = [any(((c >= lo) & (c + patch <= hi)).all() for lo, hi in boxes) for c in corners]
    assert all(inside), geojson


def test_recipe_from_wsis_and_json(standin: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    status = run_recipe.main([str(standin), str(out), *SMALL, "--source", "wsi",
                              "--experiments", "n0_vs_n3", "--settings", "image"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "--annotations" in printed and "--backend image" in printed
    assert "| N0 vs N+(>2) | DL-CNB | Training |" in printed
    assert "|  |  | Test |" in printed and "| Test (paper) | 173 | 0.837 [0.773, 0.888] |" in printed
    assert len(list((out / "features").glob("*.h5"))) == 10


def test_official_clinical_values_are_used_when_the_repository_is_at_hand(tmp_path: Path
                                                                          ) -> None:
    """--official-splits REPO/code/dataset/json: the clinical models read
    REPO/code/dataset/clinical_data/preprocessed-type-K.xlsx as it is (K of the task)."""
    json_dir = tmp_path / "code" / "dataset" / "json"
    json_dir.mkdir(parents=True)
    assert run_recipe.official_clinical(str(json_dir), "n0_vs_n3") is None
    assert run_recipe.official_clinical(None, "n0_vs_n3") is None
    clin = tmp_path / "code" / "dataset" / "clinical_data" / "preprocessed-type-4.xlsx"
    clin.parent.mkdir()
    clin.write_bytes(b"")
    assert run_recipe.official_clinical(str(json_dir), "n0_vs_n3") == clin
    settings = run_recipe._settings("bcnb.xlsx", 10, "paper", None, clin)
    for name in ("clinical", "image+clinical"):
        opts = settings[name]
        assert opts[opts.index("--clinical") + 1] == str(clin)
        assert opts[opts.index("--clinical-variant") + 1] == "official"
    assert "--clinical-variant" not in settings["image"]
    plain = run_recipe._settings("bcnb.xlsx", 10)["image+clinical"]
    assert plain[plain.index("--clinical-variant") + 1] == "paper5"

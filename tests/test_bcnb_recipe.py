"""The BCNB recipe end to end on a generated stand-in with BCNB's layout (small settings).

examples/bcnb/run_recipe.py: check_data -> extract-features (paper_patches or WSIs + JSON) ->
balnmp-mil train (clinical-only, DL-CNB, DL-CNB+C) -> table2.py. The default test runs two of
the five experiments (one binary, the three-class one) with every model; the recipe's other
tasks differ only in `--task` (each is trained by tests/test_cli_mil.py / test_labels.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from _docs_helpers import ROOT

BCNB = ROOT / "examples" / "bcnb"
sys.path.insert(0, str(BCNB))

import check_data  # noqa: E402
import run_recipe  # noqa: E402
import table2  # noqa: E402

SMALL = ["--encoder", "resnet18", "--weights", "none", "--input-size", "32", "--epochs", "1",
         "--device", "cpu", "--n-bootstrap", "20", "--batch-size", "64"]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from make_standin import make_standin

    return make_standin(tmp_path_factory.mktemp("bcnb") / "BCNB", patients=10, seed=0)


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


def test_recipe_end_to_end_prints_table2(standin: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    status = run_recipe.main([str(standin), str(out), *SMALL,
                              "--experiments", "n0_vs_n+,three_class"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    # The commands of the README, printed as they run.
    assert "$ extract-features" in printed and "--backend patches --level 0 --patch-size 256" in printed
    assert "--model balnmp --instances-per-bag 10" in printed
    assert "--clinical-variant paper5" in printed
    # One store file per patient folder of paper_patches.
    assert len(list((out / "features").glob("*.h5"))) == 10
    # The Table-2-style table: every model and split, with the paper's numbers.
    table = (out / "table2.md").read_text()
    assert table in printed
    header = "| Experiment | Model | Cohort | AUC [95% CI] | ACC | SENS | SPEC | PPV | NPV |"
    assert table.startswith(header)
    rows = table.splitlines()[2:]
    assert len(rows) == 2 * 3 * 3  # experiments x models x (train, val, test)
    assert "| N0 vs N+ | DL-CNB+C | Training |" in table
    assert "0.816 [0.758, 0.865]" in table and "0.831 [0.775, 0.878]" in table
    assert "| N0 vs N+(1-2) vs N+(>2) | Clinical data only | Training |" in table
    assert "see paper" in table
    # All three models of an experiment share the same patients.
    split = json.loads((out / "runs" / "n0_vs_n+" / "clinical" / "splits.json").read_text())
    for setting in ("image", "image+clinical"):
        other = json.loads((out / "runs" / "n0_vs_n+" / setting / "splits.json").read_text())
        assert other == split
    # Rerunning keeps finished work (extraction skipped, runs kept) and prints the table again.
    assert run_recipe.main([str(standin), str(out), *SMALL, "--experiments", "n0_vs_n+"]) == 0
    assert "exists; kept" in capsys.readouterr().out


def test_recipe_from_wsis_and_json(standin: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    status = run_recipe.main([str(standin), str(out), *SMALL, "--source", "wsi",
                              "--experiments", "n0_vs_n3", "--settings", "image"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "--annotations" in printed and "--backend image" in printed
    assert "| N0 vs N+(>2) | DL-CNB | Training |" in printed
    assert "|  |  | Test |" in printed and printed.rstrip().endswith("| 0.837 |")
    assert len(list((out / "features").glob("*.h5"))) == 10


def test_table2_rows_and_missing_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert table2.main([str(tmp_path)]) == 2
    assert "no <task>/<setting>/metrics.json" in capsys.readouterr().err
    run = tmp_path / "n12_vs_n3" / "image"
    run.mkdir(parents=True)
    split = {"auc": 0.75, "auc_ci": [0.5, 0.9], "accuracy": 0.7, "sensitivity": 0.6,
             "specificity": 0.8, "ppv": None, "npv": 0.65}
    run.joinpath("metrics.json").write_text(json.dumps({"train": split, "test": split}))
    assert table2.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| N+(1-2) vs N+(>2) | DL-CNB | Training | 0.750 [0.500, 0.900] | "
                        "0.700 | 0.600 | 0.800 | — | 0.650 |  |")
    assert lines[3].startswith("|  |  | Test |") and lines[3].endswith("| see paper |")

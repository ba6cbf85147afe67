"""examples/demo_summary.py: the last step of `make demo` reports the test AUC and paths."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "demo_summary.py"


@pytest.fixture()
def demo_tree(tmp_path: Path) -> Path:
    (tmp_path / "cohort").mkdir()
    (tmp_path / "cohort" / "clinical.csv").write_text("Patient ID,ALN status\n1,N0\n")
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "manifest.csv").write_text(
        "id,path,status,n_patches,seconds,error\n"
        "1,s/1.svs,done,30,1.0,\n2,s/2.svs,failed,0,0.1,SlideError: truncated\n"
        "3,s/3.svs,skipped,12,0.0,\n")
    (tmp_path / "run").mkdir()
    metrics = {"model": "abmil", "task": "n0_vs_n+",
               "test": {"auc": 0.8125, "auc_ci": [0.61, 0.97], "n": 12, "n_pos": 5}}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_summary_reports_auc_ci_patches_and_failures(demo_tree, capsys):
    assert _main()([str(demo_tree)]) == 0
    out = capsys.readouterr().out
    assert "test AUC:  0.812 [95% CI 0.610, 0.970] on 12 patients (5 N+)" in out
    assert "42 patch embeddings" in out
    assert "(1 failed: 2)" in out


def test_missing_stage_output_is_named(demo_tree, capsys):
    (demo_tree / "run" / "metrics.json").unlink()
    assert _main()([str(demo_tree)]) == 1
    assert "metrics.json is missing" in capsys.readouterr().err

"""The examples/ scripts run (in this process, tiny settings) and print what they promise.

Runs on the demo cohort's own paths (extract_one_slide.py SLIDE, train_on_clam_cache.py
FEATURES) are documented commands of docs/library.md, run by tests/test_docs_commands.py.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import h5py
import pytest
from _docs_helpers import ROOT

EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> int:
    """`python examples/<name> args...` in-process; returns the exit status."""
    old = sys.argv
    sys.argv = [str(EXAMPLES / name), *args]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return 0


def test_extract_one_slide_generated(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_example("extract_one_slide.py", "--out", str(tmp_path / "f"), "--weights",
                       "none", "--input-size", "32") == 0
    out = capsys.readouterr().out
    assert "µm/px, read by" in out and "grid:" in out and "bag 1: features" in out
    with h5py.File(tmp_path / "f" / "1.h5") as f:
        assert f["features"].shape[1] == 512 and f.attrs["encoder"] == "resnet18"


def test_train_on_generated_clam_cache(capsys: pytest.CaptureFixture) -> None:
    assert run_example("train_on_clam_cache.py", "--epochs", "3") == 0
    out = capsys.readouterr().out
    assert "clam cache of 40 slides" in out and "test AUC" in out


def test_train_on_cache_needs_labels(tmp_path: Path) -> None:
    assert run_example("train_on_clam_cache.py", str(tmp_path)) == 2


def test_add_clinical_data(capsys: pytest.CaptureFixture) -> None:
    assert run_example("add_clinical_data.py", "--epochs", "3") == 0
    out = capsys.readouterr().out
    assert "clinical vector: 5 values" in out  # the paper's five features
    for setting in ("image only", "image + clinical", "clinical only"):
        assert f"{setting}" in out


def test_compare_models_delong(capsys: pytest.CaptureFixture) -> None:
    assert run_example("compare_models_delong.py", "--epochs", "3") == 0
    out = capsys.readouterr().out
    assert "abmil vs mean:" in out and "p = " in out


def test_compare_models_rejects_three_class(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="binary"):
        runpy_main("compare_models_delong.py", ["--task", "three_class", "--epochs", "1"])


def runpy_main(name: str, args: list[str]) -> None:
    module = runpy.run_path(str(EXAMPLES / name))
    module["main"](args)

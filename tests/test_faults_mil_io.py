"""Fault suite, where `balnmp-mil` writes: a missing folder is made, a file where a folder
should be or a read-only file system is a message naming `--out` (exit 2) with nothing left
behind and nothing earlier lost; and no message of `balnmp_mil` gives Python-only advice or
tells the user to delete a file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from _data import fast_args, make_tiny_cohort
from _faults import assert_refused, mil, train_tiny_run
from _mounts import tmpfs

ROOT = Path(__file__).parents[1]




@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("io"), n_patients=20)


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("io-run") / "run"
    return train_tiny_run(cohort.features, cohort.labels, out)


def _write(command: str, cohort, run: Path, out: Path):
    if command == "train":
        return mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                   "--out", out, *fast_args(1))
    if command == "predict":
        return mil("predict", run, cohort.features, "--out", out)
    if command == "evaluate":
        return mil("evaluate", run, "--out", out)
    return mil("pack", cohort.features, "--out", out)


COMMANDS = ["train", "predict", "evaluate", "pack"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_folder_is_made(cohort, run, tmp_path, command):
    out = tmp_path / "new" / "deeper" / ("r" if command == "train" else "out.x")
    res = _write(command, cohort, run, out)
    assert res.exit_code == 0, res.output
    assert out.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_in_the_way_is_a_message(cohort, run, tmp_path, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    res = _write(command, cohort, run, blocker / "out")
    assert_refused(res, str(blocker))
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_earlier_output_stays_whole_when_writing_fails(cohort, run, tmp_path, monkeypatch,
                                                         command):
    import errno
    import os

    out = tmp_path / "out.x"
    out.write_text("earlier output")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    res = _write(command, cohort, run, out)
    assert_refused(res, f"{out}: no space left on the device")
    assert out.read_text() == "earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.x"]


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs (needs root: permissions do not stop root, a read-only mount does)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


@pytest.mark.faults_slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_file_system_is_a_message(cohort, run, read_only, command):
    out = read_only / ("r" if command == "train" else "out.x")
    res = _write(command, cohort, run, out)
    assert_refused(res, "read-only file system")
    assert list(read_only.iterdir()) == []


# ------------------------------------------------------------------------- message wording
PYTHON_ADVICE = re.compile(r"\b[a-z_]+=(True|False|None|'|\"|\{|\[)")


def _messages(path: Path) -> list[tuple[int, str]]:
    """String constants inside `raise ...(...)` and `warnings.warn(...)` calls of a module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        call = node.exc if isinstance(node, ast.Raise) else node
        if not isinstance(call, ast.Call):
            continue
        name = ast.unparse(call.func)
        if not (isinstance(node, ast.Raise) or name.endswith("warn")):
            continue
        for sub in ast.walk(call):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                found.append((sub.lineno, sub.value))
    return found


@pytest.mark.parametrize("module", sorted(p.relative_to(ROOT).as_posix()
                                          for p in (ROOT / "balnmp_mil").rglob("*.py")))
def test_messages_give_command_line_advice(module):
    for line, text in _messages(ROOT / module):
        assert not PYTHON_ADVICE.search(text), f"{module}:{line}: Python advice: {text!r}"
        assert "delete" not in text.lower(), f"{module}:{line}: never ask to delete: {text!r}"

"""How `balnmp-mil` ends: a user's error is one line and exit 2 (the command-line fix, never
Python advice), a bug keeps its traceback (exit 1), Ctrl-C is 130 and SIGTERM 143, and no
temporary folder is left behind in any case."""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _data import fast_args, make_tiny_cohort
from _mounts import tmpfs
from click.testing import CliRunner

from balnmp_cache._signals import Interrupted
from balnmp_mil.cli.common import STORE_ADVICE
from balnmp_mil.cli.group import main


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("errors"), n_patients=20)


def _train(cohort, out: Path, *extra: object):
    return invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                  "--out", out, *fast_args(1), *extra)


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_bug_deep_in_training_keeps_its_traceback(cohort, tmp_path, monkeypatch):
    fit_module = importlib.import_module("balnmp_mil.training.fit")  # (.fit is the function)

    def bug(*args, **kwargs):
        raise ValueError("shape mismatch deep in training")  # not a user error

    monkeypatch.setattr(fit_module, "fit", bug)
    res = _train(cohort, tmp_path / "run")
    assert res.exit_code == 1 and isinstance(res.exception, ValueError), res.output
    assert _left(tmp_path) == []


CAUSES = [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/model.pt"), 2,
     "/data/run/model.pt: no space left on the device; free some space or choose another --out"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/run"), 2, "disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), 2,
     "/mnt/ro/run: read-only file system; choose a writable --out"),
    (PermissionError(errno.EACCES, "Permission denied", "/shared/run"), 2,
     "/shared/run: permission denied"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/x.csv"), 2,
     "/gone/x.csv: no such file or directory"),
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
    (Interrupted(signal.SIGTERM), 143, "terminated (SIGTERM)"),
    (Interrupted(signal.SIGHUP), 129, "terminated (SIGHUP)"),
    (Interrupted(signal.SIGINT), 130, "interrupted (Ctrl-C)"),
]


@pytest.mark.parametrize("cause,status,message", CAUSES, ids=[m for *_, m in CAUSES])
def test_os_errors_and_interruptions_end_with_their_status(cohort, tmp_path, monkeypatch,
                                                           cause, status, message):
    fit_module = importlib.import_module("balnmp_mil.training.fit")  # (.fit is the function)

    def fail(*args, **kwargs):
        raise cause

    monkeypatch.setattr(fit_module, "fit", fail)
    res = _train(cohort, tmp_path / "run")
    assert res.exit_code == status, res.output
    assert message in res.output and "Traceback" not in res.output
    assert _left(tmp_path) == []  # the staged run folder was removed


def test_an_other_os_error_is_a_bug(cohort, tmp_path, monkeypatch):
    fit_module = importlib.import_module("balnmp_mil.training.fit")  # (.fit is the function)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fit_module, "fit", fail)
    res = _train(cohort, tmp_path / "run")
    assert res.exit_code == 1 and isinstance(res.exception, OSError)


def test_unreadable_yaml_is_a_message(tmp_path):
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    res = invoke("train", "--config", tmp_path / "bad.yaml", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "bad.yaml" in res.output, res.output


def _mixed_store(cohort, root: Path) -> Path:
    import h5py

    store = root / "mixed"
    shutil.copytree(cohort.features, store)
    with h5py.File(store / "3.h5", "a") as f:
        f.attrs["encoder"] = "another_encoder"
    return store


def test_store_advice_is_given_the_command_line_way(cohort, tmp_path):
    store = _mixed_store(cohort, tmp_path)
    res = invoke("train", store, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--out", tmp_path / "r", *fast_args(1))
    assert res.exit_code == 2, res.output
    assert "mixed encoder" in res.output and "pass --allow-mixed to combine" in res.output
    assert "allow_mixed=True" not in res.output and "on_problem" not in res.output
    res = invoke("train", store, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--out", tmp_path / "r", "--allow-mixed", *fast_args(1))
    assert res.exit_code == 0, res.output
    res = invoke("inspect", store)  # no such flag: the Python advice is dropped
    assert res.exit_code == 1 and "mixed encoder" in res.output
    assert "allow_mixed" not in res.output and "--allow-mixed" not in res.output


def test_the_store_still_words_its_advice_as_the_cli_expects(cohort, tmp_path):
    """STORE_ADVICE rewrites balnmp_cache.store's Python advice: if the store's wording
    changes, the rewrite silently stops; this test says so first."""
    from balnmp_cache.store import StoreError, load_bags

    with pytest.raises(StoreError) as info:
        load_bags(_mixed_store(cohort, tmp_path))
    for python, _, _ in STORE_ADVICE:
        assert python in str(info.value), python


def test_clinical_columns_are_named_on_the_command_line(cohort, tmp_path):
    import pandas as pd

    table = pd.read_csv(cohort.labels).rename(columns={"Age(years)": "Patient years"})
    table.to_csv(tmp_path / "clin.csv", index=False)
    args = ["train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
            "--clinical", tmp_path / "clin.csv", "--clinical-variant", "paper5", *fast_args(1)]
    res = invoke(*args, "--out", tmp_path / "a")
    assert res.exit_code == 2, res.output
    assert "--clinical-column age=COLUMN" in res.output and "columns=" not in res.output
    res = invoke(*args, "--clinical-column", "age=Patient years", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output


@pytest.mark.faults_slow
def test_sigterm_removes_the_staged_run_and_exits_143(cohort, tmp_path):
    out = tmp_path / "run"
    code = "from balnmp_mil.cli import main; main()"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "train", str(cohort.features), "--labels",
         str(cohort.labels), "--task", "n0_vs_n+", "--out", str(out), "--epochs", "100000",
         "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".run.") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 143, output
    assert "terminated (SIGTERM)" in output and "Traceback" not in output
    assert _left(tmp_path) == []


@pytest.fixture(params=["16k", "48k", "96k"])
def full_disk(request, tmp_path):
    """A tiny tmpfs (needs root) that fills up at some point of writing a run: its config, its
    model, its pictures, depending on the size."""
    with tmpfs(tmp_path / "small", f"size={request.param}") as mount:
        yield mount


@pytest.mark.faults_slow
def test_a_full_disk_is_a_message_and_leaves_nothing(cohort, full_disk):
    res = _train(cohort, full_disk / "run")
    assert res.exit_code == 2, res.output
    assert f"{full_disk / 'run'}: no space left on the device" in res.output, res.output
    assert "Traceback" not in res.output
    assert _left(full_disk) == []

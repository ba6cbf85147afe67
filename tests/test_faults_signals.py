"""Fault suite, signals: SIGTERM (what SLURM sends at the time limit) and SIGINT mid-slide.

The job removes its temp files and locks, leaves the manifest consistent and finished slides
intact, exits with 143 (SIGTERM) or 130 (SIGINT), and a rerun finishes with exit 0. The real
subprocess cases are `faults_slow`; the signal-deferral rules are fast unit tests.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _extract_helpers import fast_cli_args, tiny_cohort

from balnmp_cache import _signals as signals
from balnmp_cache.extract.manifest import read_manifest
from balnmp_cache.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=3)


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "balnmp_cache.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _slow_args(slides: Path, out: Path, *extra: str) -> list[str]:
    """All tissue (~100 patches a slide), one patch per batch at 224 px: seconds per slide."""
    args = fast_cli_args(slides, out)
    args[args.index("--input-size") + 1] = "224"
    args[args.index("--batch-size") + 1] = "1"
    return [*args, *extra]


def _temps(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".tmp-" in p.name] if out.exists() else []


def _wait_for_temp(proc: subprocess.Popen, out: Path, after: int = 0) -> None:
    """Until the job is writing a slide (and has finished `after` slides)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(read_manifest(out)) if (out / "manifest.csv").exists() else 0
        if done >= after and _temps(out):
            return
        time.sleep(0.01)
    raise AssertionError(f"the job never started writing a slide: {proc.communicate()}")


def _digest(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def _assert_clean_after_signal(out: Path, fmt: str) -> dict[str, str]:
    assert not _temps(out), _temps(out)
    locks = out / ".locks"
    assert not (locks.exists() and [p.name for p in locks.iterdir()]), list(locks.iterdir())
    assert not list(out.glob(".manifest.csv.lock*"))
    rows = read_manifest(out)
    store = FeatureStore(out)
    assert sorted(rows) == store.slide_ids  # the manifest lists exactly the finished slides
    for sid, row in rows.items():
        assert row.status == "done" and len(store[sid]) == row.n_patches > 0
    suffix = ".h5" if fmt == "h5" else ""
    return _digest([out / f"{s}{suffix}" for s in store.slide_ids]) if fmt == "h5" else {}


@pytest.mark.faults_slow
@pytest.mark.parametrize(("sig", "code", "fmt", "name"), [
    (signal.SIGTERM, 143, "h5", "features"),
    (signal.SIGINT, 130, "h5", "features"),
    (signal.SIGTERM, 143, "zarr", "features.zarr"),
])  # fmt: skip
def test_a_signal_mid_slide_cleans_up_and_a_rerun_finishes(cohort, tmp_path: Path, sig: int,  # noqa: ANN001
                                                           code: int, fmt: str,
                                                           name: str) -> None:  # fmt: skip
    out = tmp_path / name
    args = _slow_args(cohort.slides_dir, out, "--format", fmt)
    proc = _cli(args)
    _wait_for_temp(proc, out, after=1)  # one slide finished, the second being written
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "rerun" in stderr, stderr[-3000:]
    kept = _assert_clean_after_signal(out, fmt)
    assert FeatureStore(out).slide_ids, "the slide finished before the signal was lost"

    again = _cli(args)  # the same command resumes
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert FeatureStore(out).slide_ids == ["1", "2", "3"]
    assert not _temps(out)
    if kept:  # finished slides were skipped, not rewritten
        assert {k: v for k, v in _digest(list(out.glob("*.h5"))).items() if k in kept} == kept


@pytest.mark.faults_slow
def test_sigterm_stops_every_device_worker_and_cleans_up(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "features"
    proc = _cli(_slow_args(cohort.slides_dir, out, "--devices", "cpu,cpu:0"))
    _wait_for_temp(proc, out)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # the parent only, as `kill PID` does
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    _assert_clean_after_signal(out, "h5")
    again = _cli(_slow_args(cohort.slides_dir, out, "--devices", "cpu,cpu:0"))
    assert again.wait(timeout=600) == 0, again.communicate()[1][-3000:]
    assert FeatureStore(out).slide_ids == ["1", "2", "3"]


def test_signals_are_deferred_inside_a_critical_section() -> None:
    """A lock file or a manifest is never left half-written: the signal waits for the end."""
    seen = []
    with signals.handled():
        with pytest.raises(signals.Interrupted) as info:
            with signals.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                seen.append("finished the critical section")
        assert info.value.signum == signal.SIGTERM and info.value.exit_status == 143
    assert seen == ["finished the critical section"]


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Ctrl-C handled as Python does by default, however pytest was started (a shell's
    `nohup ... &` starts it with SIGINT ignored, which `signals.handled` rightly keeps)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_default")
def test_a_second_signal_does_not_interrupt_the_cleanup() -> None:
    cleaned = []
    with signals.handled():
        with pytest.raises(signals.Interrupted):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # e.g. SLURM after Ctrl-C
                time.sleep(0.05)
                cleaned.append(True)
    assert cleaned == [True]


@pytest.mark.usefixtures("sigint_default")
def test_handlers_are_restored_and_ignored_signals_stay_ignored() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup
    try:
        with signals.handled():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_handled_is_a_no_op_outside_the_main_thread() -> None:
    errors = []

    def body() -> None:
        try:
            with signals.handled(), signals.critical():
                pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert not errors

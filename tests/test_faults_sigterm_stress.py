"""Fault suite, the `benchmarks/repeat_extract.py --sigterm` stress check judges a run rightly.

The verdict is tested on stand-in jobs that write a real HDF5 store (`FeatureStore`), sit in
the state the check waits for (slide 1 published, slide 2's temp file open) and then end the
way a broken job would: killed by SIGSEGV after the message, a non-finite slide, a temp no
rerun removes, a wrong exit status. One real `extract-features` run per format is
`faults_slow`.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from balnmp_cache import _signals as signals
from balnmp_cache import cli

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("repeat_extract",
                                               ROOT / "benchmarks" / "repeat_extract.py")  # fmt: skip
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MESSAGE = f"{bench.SIGTERM_MESSAGE}: slides finished so far are kept"

# A stand-in job: the first call publishes slide 1, opens slide 2's writer (its temp file) and
# waits; on SIGTERM it ends as `mode` says. A rerun (slide 1 stored) stores slides 2 and 3.
FAKE_JOB = '''
import os, signal, sys, time
import numpy as np
from balnmp_cache.store import FeatureStore
out, mode = sys.argv[1], sys.argv[2]
store = FeatureStore(out, "a", format="h5")
def put(sid, value):
    with store.writer(sid, 4) as w:
        w.append(np.full((3, 4), value, np.float32), np.zeros((3, 2), np.int64))
if "1" in store:
    put("2", 1.0); put("3", 1.0); sys.exit(0)
if mode == "early":
    sys.exit(0)
put("1", float("nan") if mode == "nan" else 1.0)
def stop(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, stop)
try:
    with store.writer("2", 4):
        time.sleep(60)
except KeyboardInterrupt:
    pass
if mode == "stray":
    open(os.path.join(out, ".manifest.csv.tmp-1-ab"), "w").close()
if mode != "quiet":
    print("interrupted by SIGTERM: slides finished so far are kept", file=sys.stderr)
if mode == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
sys.exit(0 if mode == "quiet" else 143)
'''


def _verdict(tmp_path: Path, mode: str, timeout: float = 60.0):  # noqa: ANN202
    fake = tmp_path / "fake_job.py"
    fake.write_text(FAKE_JOB, encoding="utf-8")
    out = tmp_path / "features"
    return bench.sigterm_run([sys.executable, str(fake), str(out), mode], out, "h5",
                             ["1", "2", "3"], timeout)  # fmt: skip


def test_a_clean_stop_and_resume_passes(tmp_path: Path) -> None:
    verdict = _verdict(tmp_path, "ok")
    assert verdict.ok and verdict.code == 143, verdict
    assert "exit 143 after 1 slide(s), 0 temp(s) left; resume exit 0" in verdict.line


@pytest.mark.parametrize(("mode", "problems"), [
    ("segv", ["killed by SIGSEGV, not 143", "'Fatal Python error' in stderr"]),
    ("nan", ["slide 1 published before the signal has non-finite features"]),
    ("stray", ["temps no rerun removes: .manifest.csv.tmp-1-ab"]),
    ("quiet", ["exit 0, not 143", "no 'interrupted by SIGTERM' message in stderr"]),
    ("early", ["never reached the state", "exited"]),
])  # fmt: skip
def test_a_broken_stop_fails_the_run(tmp_path: Path, mode: str, problems: list[str]) -> None:
    verdict = _verdict(tmp_path, mode)
    assert not verdict.ok
    for problem in problems:
        assert problem in verdict.line, verdict.line


def test_a_job_that_never_reaches_the_state_is_killed_and_fails(tmp_path: Path) -> None:
    fake = tmp_path / "sleeper.py"
    fake.write_text("import time; time.sleep(60)\n", encoding="utf-8")
    out = tmp_path / "features"
    verdict = bench.sigterm_run([sys.executable, str(fake)], out, "h5", ["1", "2"], 2.0)
    assert not verdict.ok and verdict.code is None
    assert "never reached the state" in verdict.line and "no state within 2 s" in verdict.line


def test_signal_problems_name_every_sign_of_a_crash() -> None:
    assert bench.signal_problems(143, MESSAGE) == []
    dump = f"{MESSAGE}\nFatal Python error: Segmentation fault\n\nCurrent thread ..."
    assert bench.signal_problems(143, dump) == ["'Fatal Python error' in stderr",
                                                "'Segmentation fault' in stderr"]  # fmt: skip
    trace = f"Traceback (most recent call last):\n  ...\n{MESSAGE}"
    assert bench.signal_problems(143, trace) == ["'Traceback (most recent call last)' in stderr"]
    assert bench.signal_problems(None, MESSAGE) == ["no exit, not 143"]


def test_the_slide_temps_the_window_waits_for(tmp_path: Path) -> None:
    for name in (".1.h5.tmp-42", ".2.tmp-42-ab12cd34", ".manifest.csv.tmp-42-ab", ".11.h5"):
        (tmp_path / name).touch()
    assert bench._writing(tmp_path, ["1", "2", "3", "11"]) == ["1", "2"]


def test_the_message_checked_is_the_one_the_cli_prints(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:  # fmt: skip
    def interrupted(*args: object) -> None:
        raise signals.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(cli, "_run", interrupted)
    result = CliRunner().invoke(cli.main, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == bench.SIGTERM_EXIT == 143
    assert bench.SIGTERM_MESSAGE in result.output


@pytest.mark.faults_slow
def test_the_sigterm_mode_passes_on_the_real_job(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = bench.main(["--sigterm", "--runs", "1", "--format", "both", "--work", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "h5: exit 143: 1 (1 runs)" in printed and "zarr: exit 143: 1 (1 runs)" in printed
    assert "2 of 2 SIGTERM runs passed every check" in printed

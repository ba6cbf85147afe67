"""`EarlyTiling` inside a real job: how many slides it tiles while the encoder is built, and
that a build stopped by a signal leaves no slide open and no early thread behind."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from _extract_helpers import FAST, tiny_cohort

from balnmp_cache import _signals as signals
from balnmp_cache.extract import extract_features, feed, run, slide_prep

OPTS = {**FAST, "batch_size": 13, "dtype": "float32"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("early"), n=4)


def _spy_prepare(monkeypatch: pytest.MonkeyPatch, prepared: list, delay: float = 0.0) -> None:
    """Record every `prepare_slide` (its result and thread); the third one takes `delay` more."""
    real = slide_prep.prepare_slide

    def spy(spec, path):  # noqa: ANN001, ANN202
        prep = real(spec, path)
        prepared.append((prep, threading.current_thread().name))
        if len(prepared) == 3:
            time.sleep(delay)
        return prep

    monkeypatch.setattr(slide_prep, "prepare_slide", spy)


@pytest.mark.parametrize(("early_slides", "expected"), [(3, 3), (1, 2)])  # 2: 2 per CPU
def test_no_more_than_the_bound_is_tiled_however_long_the_build(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_slides: int,  # noqa: ANN001
        expected: int) -> None:  # fmt: skip
    """One CPU, a build that waits until the early pool has nothing left to start: it has
    tiled max(`EARLY_SLIDES`, 2 per CPU) slides, not every slide of the list."""
    pools: list[slide_prep.EarlyTiling] = []

    class Recorded(slide_prep.EarlyTiling):
        def __init__(self, *a, **kw) -> None:  # noqa: ANN002, ANN003
            super().__init__(*a, **kw)
            pools.append(self)

    def idle() -> bool:
        early = pools[0]
        with early._lock:
            return not early._todo and all(f.done() for f in early.futures.values())

    real_build = run._build_job

    def slow_build(spec, device):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + 60
        while not idle() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_build(spec, device)

    prepared: list = []
    _spy_prepare(monkeypatch, prepared)
    monkeypatch.setattr(feed, "job_cpus", lambda: 1)
    monkeypatch.setattr(run, "EARLY_SLIDES", early_slides)
    monkeypatch.setattr(run, "EarlyTiling", Recorded)
    monkeypatch.setattr(run, "_build_job", slow_build)
    s = extract_features(cohort.slides_dir, tmp_path / "out", **OPTS)
    assert [r.status for r in s.results] == ["done"] * 4
    threads = [name for _, name in prepared]
    assert sum(t.startswith("balnmp-early") for t in threads) == expected, threads
    assert len(threads) == 4  # the others prepared once, by their claims


def test_a_signal_during_the_build_closes_every_slide_tiled_meanwhile(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001 fmt: skip
    """SIGTERM while the encoder is built (`Interrupted` in the main thread), with one slide
    still being tiled: every slide opened early is closed, no early thread is left running,
    and nothing is written."""
    prepared: list = []
    _spy_prepare(monkeypatch, prepared, delay=0.3)

    def interrupted_build(spec, device):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + 60
        while len(prepared) < 3 and time.monotonic() < deadline:  # the third is still running
            time.sleep(0.005)
        raise signals.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(feed, "job_cpus", lambda: 2)
    monkeypatch.setattr(run, "_build_job", interrupted_build)
    out = tmp_path / "out"
    with pytest.raises(signals.Interrupted):
        extract_features(cohort.slides_dir, out, **OPTS)
    assert len(prepared) >= 3
    assert all(prep.slide._closed for prep, _ in prepared)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("balnmp-early")]
    assert not list(out.glob("*.h5")) and not list((out / ".locks").glob("*.lock"))


def test_slides_tiled_beyond_the_feeds_lookahead_are_parked_closed_and_reopened(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001 fmt: skip
    """One CPU: the early pool tiles all 4 slides while the encoder is built, but keeps only 2
    (2 per CPU, as many as the feed claims ahead) open; the other 2 are closed once tiled and
    opened again by their claims. The features are those of a job that tiled nothing early."""
    import h5py
    import numpy as np

    reference = tmp_path / "reference"
    extract_features(cohort.slides_dir, reference, **{**OPTS, "qc_dir": tmp_path / "qc"})
    prepared: list = []
    _spy_prepare(monkeypatch, prepared)
    open_at_build: list[int] = []
    real_build = run._build_job

    def slow_build(spec, device):  # noqa: ANN001, ANN202
        deadline = time.monotonic() + 60
        while len(prepared) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the last one's parking
        open_at_build.append(sum(not prep.slide.closed for prep, _ in prepared))
        return real_build(spec, device)

    monkeypatch.setattr(feed, "job_cpus", lambda: 1)
    monkeypatch.setattr(run, "_build_job", slow_build)
    out = tmp_path / "out"
    s = extract_features(cohort.slides_dir, out, **OPTS)
    assert [r.status for r in s.results] == ["done"] * 4
    assert len(prepared) == 4 and all(name.startswith("balnmp-early") for _, name in prepared)
    assert open_at_build == [2]
    assert all(prep.slide.closed for prep, _ in prepared)
    files = sorted(reference.glob("*.h5"))
    assert len(files) == 4
    for ref in files:
        with h5py.File(ref) as b, h5py.File(out / ref.name) as a:
            for name in ("features", "coords"):
                np.testing.assert_array_equal(a[name][()], b[name][()])

"""Per-slide lock files: exclusivity, release, stale detection and race-free takeover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from balnmp_cache.extract.locks import is_stale, read_lock, try_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, host: str, pid: int, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "time": time.time(), "token": "x"}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))


def test_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "s1.lock"
    first = try_lock(path)
    assert first is not None
    info = read_lock(path)
    assert info is not None and info.pid == os.getpid() and info.host == socket.gethostname()
    assert try_lock(path) is None  # held by a live process: not stale
    first.release()
    assert not path.exists()
    again = try_lock(path)
    assert again is not None
    again.release()


def test_lock_of_dead_process_on_this_host_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    _write_lock(path, socket.gethostname(), _dead_pid())
    assert is_stale(path)
    lock = try_lock(path)
    assert lock is not None
    assert read_lock(path).pid == os.getpid()
    lock.release()


def test_other_host_lock_is_stale_only_after_heartbeat_timeout(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    _write_lock(path, "some-other-node", 12345)
    assert try_lock(path, stale_after=60) is None  # fresh heartbeat: respected
    _write_lock(path, "some-other-node", 12345, age_s=120)
    lock = try_lock(path, stale_after=60)
    assert lock is not None
    lock.release()


def test_heartbeat_keeps_a_long_job_fresh(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    lock = try_lock(path, heartbeat_s=0.05)
    assert lock is not None
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 50
    assert not is_stale(path, stale_after=50)
    lock.release()


def test_release_does_not_delete_a_lock_taken_over_by_someone_else(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    lock = try_lock(path, heartbeat_s=0)
    assert lock is not None
    path.unlink()
    _write_lock(path, "other", 1)  # another job's lock now
    lock.release()
    assert path.exists() and read_lock(path).host == "other"


def test_concurrent_takeover_has_exactly_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    _write_lock(path, socket.gethostname(), _dead_pid())
    winners, barrier = [], threading.Barrier(8)

    def contend() -> None:
        barrier.wait()
        lock = try_lock(path, heartbeat_s=0)
        if lock is not None:
            winners.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert read_lock(path).token == winners[0].info.token
    assert not path.with_name(path.name + ".break").exists()


def test_break_lock_left_by_a_dead_breaker_does_not_block_takeover(tmp_path: Path) -> None:
    path = tmp_path / "s.lock"
    _write_lock(path, socket.gethostname(), _dead_pid())
    _write_lock(path.with_name(path.name + ".break"), socket.gethostname(), _dead_pid())
    lock = try_lock(path)
    assert lock is not None
    lock.release()


def test_a_signal_while_a_lock_is_created_leaves_no_lock_file(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The signal waits until the lock file is written, then raises: nobody holds the lock
    then, so the file must go (a manifest lock left behind blocked every later job)."""
    import os
    import signal

    from balnmp_cache import _signals as signals

    real = os.fsync

    def fsync_then_signal(fd: int) -> None:
        real(fd)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the critical section

    monkeypatch.setattr(os, "fsync", fsync_then_signal)
    path = tmp_path / "x.lock"
    with signals.handled(), pytest.raises(signals.Interrupted):
        try_lock(path, heartbeat_s=0)
    assert not path.exists()


def test_one_heartbeat_thread_keeps_every_held_lock_fresh(tmp_path: Path) -> None:
    locks = [try_lock(tmp_path / f"{i}.lock", heartbeat_s=0.05) for i in range(5)]
    assert all(lock is not None for lock in locks)
    old = time.time() - 100
    for i in range(5):
        os.utime(tmp_path / f"{i}.lock", (old, old))
    time.sleep(0.3)
    beating = [t for t in threading.enumerate() if t.name == "balnmp-lock-heartbeat"]
    assert len(beating) == 1  # not one thread per lock
    assert all(time.time() - (tmp_path / f"{i}.lock").stat().st_mtime < 50 for i in range(5))
    locks[0].release()  # type: ignore[union-attr]
    _write_lock(tmp_path / "0.lock", "other", 1, age_s=100)  # someone else's lock now
    time.sleep(0.2)
    assert time.time() - (tmp_path / "0.lock").stat().st_mtime > 50  # released: not refreshed
    for lock in locks[1:]:
        lock.release()  # type: ignore[union-attr]

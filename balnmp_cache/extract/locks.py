"""Per-slide lock files so that several jobs on one output directory never encode a slide twice.

A lock is created atomically with O_CREAT|O_EXCL and holds the owner's host, pid, a start
time and a random token. While held, its mtime is refreshed every `heartbeat_s` seconds by
the process's one heartbeat thread (`_Heartbeat`, shared by all its locks). A lock is *stale*
when its owner is on this host and its pid is dead, or when its heartbeat is older than
`stale_after` seconds (owners on other hosts cannot be probed). A stale lock is taken over
under a short-lived "break" lock, so two jobs that both see it stale cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from balnmp_cache import _signals as signals

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_BREAK_STALE_S = 60.0
_OWNERLESS_STALE_S = 10.0  # a lock file that names no owner this long after its creation


@dataclass
class LockInfo:
    """What a lock file says about its owner."""

    host: str
    pid: int
    time: float
    token: str

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} since {time.strftime('%H:%M:%S', time.localtime(self.time))}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Path) -> LockInfo | None:
    """The lock's owner, or None when the file is gone or unreadable (e.g. half-written)."""
    try:
        data = json.loads(Path(path).read_text())
        return LockInfo(
            str(data["host"]), int(data["pid"]), float(data["time"]), str(data["token"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_stale(path: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """True when the owner is a dead process on this host or the heartbeat is too old."""
    path = Path(path)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    info = read_lock(path)
    if info is not None and info.host == socket.gethostname() and not _pid_alive(info.pid):
        return True
    age = time.time() - mtime
    if info is None and age > min(_OWNERLESS_STALE_S, stale_after):
        return True  # its creator died between creating and writing it
    return age > stale_after


class _Heartbeat:
    """One daemon thread for all of a process's locks: each held lock's mtime is refreshed
    every `heartbeat_s` seconds (its own period). The refresh runs under the registry's
    lock, so once `remove` returns that lock's file is never touched again."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, SlideLock]] = {}
        self._thread: threading.Thread | None = None

    def add(self, lock: SlideLock) -> None:
        with self._cond:
            self._due[id(lock)] = (time.monotonic() + lock.heartbeat_s, lock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="balnmp-lock-heartbeat",
                                                daemon=True)  # fmt: skip
                self._thread.start()
            self._cond.notify()

    def remove(self, lock: SlideLock) -> None:
        with self._cond:
            self._due.pop(id(lock), None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                wait = min((due for due, _ in self._due.values()), default=now + 3600.0) - now
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                for key, (due, lock) in list(self._due.items()):
                    if due <= now:
                        with contextlib.suppress(OSError):
                            os.utime(lock.path)
                        self._due[key] = (now + lock.heartbeat_s, lock)


_HEARTBEAT = _Heartbeat()
os.register_at_fork(after_in_child=lambda: globals().update(_HEARTBEAT=_Heartbeat()))


@dataclass
class SlideLock:
    """A held lock; release it with `release()` or use as a context manager."""

    path: Path
    info: LockInfo
    heartbeat_s: float = HEARTBEAT_S

    def start_heartbeat(self) -> None:
        if self.heartbeat_s > 0:
            _HEARTBEAT.add(self)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours (a signal waits
        until it is gone: see `signals.critical`)."""
        with signals.critical():
            _HEARTBEAT.remove(self)
            current = read_lock(self.path)
            if current is not None and current.token == self.info.token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def __enter__(self) -> SlideLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _create(path: Path) -> LockInfo | None:
    """Create the lock file holding its owner, or None when it exists. Never left empty: a
    signal waits until it is written, an error removes it; a signal that waited is raised
    once the file is complete, and the file is removed then (nobody holds it)."""
    info = LockInfo(socket.gethostname(), os.getpid(), time.time(), uuid.uuid4().hex)
    made = False
    try:
        with signals.critical():
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            made = True
            try:
                os.write(fd, json.dumps(info.__dict__).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
    except BaseException:
        if made:
            path.unlink(missing_ok=True)
        raise
    return info


def try_lock(
    path: str | Path,
    stale_after: float = STALE_AFTER_S,
    heartbeat_s: float = HEARTBEAT_S,
) -> SlideLock | None:
    """Acquire the lock at `path`, taking over a stale one; None when someone else holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = _create(path)
    if info is None and is_stale(path, stale_after):
        info = _take_over(path, stale_after)
    if info is None:
        return None
    try:
        lock = SlideLock(path, info, heartbeat_s)
        lock.start_heartbeat()
    except BaseException:  # a signal before the caller holds the lock: nobody would free it
        path.unlink(missing_ok=True)
        raise
    return lock


def _take_over(path: Path, stale_after: float) -> LockInfo | None:
    """Replace a stale lock; only the holder of `<path>.break` may delete and recreate it."""
    brk = path.with_name(path.name + ".break")
    for _attempt in range(2):
        if _create(brk) is not None:
            break
        try:
            dead = time.time() - brk.stat().st_mtime > _BREAK_STALE_S or is_stale(brk, stale_after)
        except FileNotFoundError:
            continue  # the other breaker just finished; try again
        if not dead:
            return None  # another job is taking this lock over right now
        with contextlib.suppress(FileNotFoundError):
            brk.unlink()  # a breaker died mid-takeover
    else:
        return None
    try:
        if not is_stale(path, stale_after):  # someone else took it over meanwhile
            return _create(path) if not path.exists() else None
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return _create(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            brk.unlink()


def holder(path: str | Path) -> str:
    """Human-readable owner of a lock, for messages."""
    info = read_lock(Path(path))
    return info.describe() if info else "an unknown job"

"""SIGINT, SIGTERM and SIGHUP in both commands: unwind like Ctrl-C, exit with a status of their own.

SLURM sends SIGTERM at a job's time limit (and on `scancel`), then SIGKILL after a grace period;
Python's default for SIGTERM ends the process without running any cleanup. Inside `handled()`
(both command lines and each extraction worker process) the first of these signals raises
`Interrupted` in the main thread instead, so every `with` block unwinds: the slide being
written is discarded (its temp file removed), its lock released, the manifest left as it was.
Later signals are ignored so that this cleanup is not cut short (SIGKILL is always safe: the
next run removes what a killed job left). `critical()` holds a signal back until a short step
that must not be torn (creating a lock file, publishing the manifest) is complete.

A signal whose disposition is "ignore" when `handled()` starts (`nohup`, a background job's
SIGINT) stays ignored. Exit status: 128 + the signal number (130 SIGINT, 143 SIGTERM,
129 SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["SIGNALS", "Interrupted", "critical", "handled"]

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal asked the job to stop; raised in the main thread, so cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum

    def __reduce__(self) -> tuple[type, tuple[int]]:  # sent back from worker processes
        return type(self), (self.signum,)


class _State:
    def __init__(self) -> None:
        self.depth = 0  # nesting of `critical()` in the main thread
        self.pending: int | None = None  # a signal held back by `critical()`
        self.fired = False  # the first signal was taken; later ones are ignored


_state = _State()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.fired:
        return  # cleanup after the first signal is under way
    _state.fired = True
    if _state.depth:
        _state.pending = signum
        return
    raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn SIGINT/SIGTERM/SIGHUP into `Interrupted` while the block runs (main thread only;
    elsewhere a no-op). The previous handlers are restored on exit."""
    if not _in_main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            previous[sig] = signal.signal(sig, _on_signal)
    if previous:  # the outermost `handled()`: a fresh start
        _state.depth, _state.pending, _state.fired = 0, None, False
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Hold a signal back until the block is done, then raise it (main thread; elsewhere,
    where signals are never delivered, a no-op)."""
    if not _in_main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            raise Interrupted(signum)

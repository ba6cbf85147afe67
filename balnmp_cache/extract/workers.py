"""One worker process per device (`--devices 0,1,...`), all pulling from the same slide list.

Each worker builds its own encoder on its device and walks the full list; per-slide locks
decide who encodes what, so a fast GPU simply takes more slides. Results are merged so that
every slide is reported once, by the worker that processed it.

Signals: each worker handles SIGINT/SIGTERM itself (`signals.handled`), so a signal sent to
the whole job (Ctrl-C in a terminal, SLURM at the time limit) makes every worker discard its
slide in progress and release its lock. A signal sent to this process alone (`kill PID`) is
passed on to the workers, which are waited for (then killed, after `STOP_GRACE_S`) before
`Interrupted` is raised here.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balnmp_cache import _signals as signals
from balnmp_cache.errors import BalnmpError
from balnmp_cache.extract.slide_job import JobSpec, SlideFailure, SlideResult, slide_id_of

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

_RANK = {"failed": 0, "done": 1, "empty": 1, "skipped": 2}
STOP_GRACE_S = 60.0  # how long stopped workers get to clean up before they are killed
_LOST_S = 5.0  # a worker that exited without a report for this long has died


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling back to the parent, else a RuntimeError saying what it was
    (its traceback is printed by the worker)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # an exception class that cannot be rebuilt
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker(index: int, paths: Sequence[Path], spec: JobSpec, device: str, stop: Event,
            reports: Queue) -> None:  # fmt: skip
    """A worker process: run the loop on `device`, send back ("ok" | "interrupted" | "error",
    payload)."""
    from balnmp_cache.extract.run import run_slides

    with signals.handled():
        report: tuple[str, Any]
        try:
            report = ("ok", run_slides(paths, spec, device, index, stop))
        except signals.Interrupted as exc:
            report = ("interrupted", exc.signum)
        except BaseException as exc:
            stop.set()
            if not isinstance(exc, (BalnmpError, SlideFailure)):
                traceback.print_exc()  # a bug: its traceback, from where it happened
            report = ("error", _portable(exc))
        with contextlib.suppress(signals.Interrupted), signals.critical():
            reports.put((index, *report))
            reports.close()
            reports.join_thread()  # delivered before this process may be stopped


def run_on_devices(paths: Sequence[Path], spec: JobSpec,
                   devices: Sequence[str]) -> list[SlideResult]:  # fmt: skip
    """Run one worker per device; re-raise the first worker error after all workers stop, or
    `Interrupted` when the job was stopped by a signal."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    stop, reports = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, list(paths), spec, dev, stop, reports),
                         name=f"balnmp-extract-{dev}") for i, dev in enumerate(devices)]  # fmt: skip
    for proc in procs:
        proc.start()
    try:
        got = _collect(procs, reports)
    except BaseException as exc:  # a signal to this process: stop the workers first
        stop.set()
        _stop(procs, exc.signum if isinstance(exc, signals.Interrupted) else signal.SIGTERM)
        raise
    finally:
        for proc in procs:
            proc.join()
    return _merge(paths, devices, got)


def _collect(procs: Sequence[BaseProcess], reports: Queue) -> dict[int, tuple[str, Any]]:
    """Every worker's report; a worker that died without one is reported as ("died", code)."""
    got: dict[int, tuple[str, Any]] = {}
    dead_since: dict[int, float] = {}
    while len(got) < len(procs):
        try:
            index, kind, payload = reports.get(timeout=0.2)
            got[index] = (kind, payload)
            continue
        except queue.Empty:
            pass
        now = time.monotonic()
        for i, proc in enumerate(procs):
            if i not in got and proc.exitcode is not None:
                if now - dead_since.setdefault(i, now) > _LOST_S:
                    got[i] = ("died", proc.exitcode)
    return got


def _stop(procs: Sequence[BaseProcess], signum: int) -> None:
    """Pass the signal on to the workers still running; kill those that outlast the grace."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()


def _merge(paths: Sequence[Path], devices: Sequence[str],
           got: dict[int, tuple[str, Any]]) -> list[SlideResult]:  # fmt: skip
    """One result per slide (a failure outranks a skip); a worker's error or signal raised."""
    per_slide: dict[str, SlideResult] = {}
    for i in sorted(got):
        kind, payload = got[i]
        if kind == "interrupted":
            raise signals.Interrupted(payload)
        if kind == "died":
            raise RuntimeError(f"the extraction worker on {devices[i]} stopped with exit code "
                               f"{payload} without a result")
    for i in sorted(got):
        kind, payload = got[i]
        if kind == "error":
            raise payload
        for res in payload:
            old = per_slide.get(res.slide_id)
            if old is None or _RANK[res.status] < _RANK[old.status]:
                per_slide[res.slide_id] = res
    return [per_slide[slide_id_of(p)] for p in paths if slide_id_of(p) in per_slide]

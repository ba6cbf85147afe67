"""Several slides in flight, one stream of full encoder batches (biopsies are small).

- A thread pool sized to the job's CPUs (`job_cpus`) claims slides in list order
  (`SlideJob.claim`: finished? lock, open, annotations, tile, attributes), at most `ahead`
  slides before the one being read; memory is bounded by that and by the batch queues.
- The pipeline's reader thread takes the claimed slides in list order and packs their patches
  into batches of `--batch-size` that cross slide boundaries (a slide of another read size
  starts a new batch); each batch's `route` says how many rows belong to which slide, and
  which slides ended (or failed, or were decided without encoding) with it.
- The calling thread encodes each batch (`pipeline.encode_stream`).
- The writer thread routes each batch's rows to their slides' writers; a slide's file is
  published atomically after its last row is written, then its lock is released. The
  outcomes of a batch's slides are recorded (the manifest) together, once the batch is
  delivered, before any slide of a later batch is published.

Outcomes come out in list order, to `on_result` in the calling thread. A slide that fails (a
read error mid-slide, a batch the encoder rejects, a write error) fails alone: its writer is
discarded and its lock released, and the slides around it go on. A failure without
`--skip-errors` stops the feed: no later slide is published. Features are those of a
one-slide-at-a-time run: the encoder treats every row of a batch independently.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from balnmp_cache.extract.pipeline import Batch, PipelineError, encode_stream
from balnmp_cache.extract.slide_job import OUTPUT_ERRNOS, Claim, SlideJob, SlideResult

if TYPE_CHECKING:
    from balnmp_cache.store.types import SlideWriter

__all__ = ["job_cpus", "run_feed"]


class _Flag(Protocol):
    def is_set(self) -> bool: ...


def job_cpus() -> int:
    """CPUs this job may use: the SLURM allocation (`SLURM_CPUS_PER_TASK`) where there is one,
    else the CPUs this process is allowed to run on."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return max(1, min(int(slurm), allowed))
    return max(1, allowed)


@dataclass
class _Slide:
    """A claimed slide in the feed: its writer, the rows written so far, and whether it has
    an outcome (`closed`)."""

    claim: Claim
    writer: SlideWriter | None = None
    written: int = 0
    closed: bool = False

    @property
    def coords(self) -> np.ndarray:
        return self.claim.prepared.grid.coords if self.claim.prepared else np.zeros((0, 2))

    @property
    def patch_files(self) -> np.ndarray | None:
        """Each row's source file (a folder of patches), aligned with `coords`; else None."""
        return self.claim.prepared.grid.patch_files if self.claim.prepared else None

    def release(self, keep_writer: bool = False) -> None:
        """Give up its temp file (unless committed) and its lock; the slide itself is closed
        by the reader, which may still be reading it (and by `_Feed.close`)."""
        self.closed = True
        if self.writer is not None and not keep_writer:
            with contextlib.suppress(Exception):  # a writer already given up after an error
                self.writer.abort()
        if self.claim.lock is not None:
            self.claim.lock.release()


@dataclass
class _Route:
    """Which slides a batch's rows belong to, in order, and the events after it: ("end", s),
    ("fail", s, stage, error) and ("decided", s), in list order."""

    segments: list[tuple[_Slide, int]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)


class _Feed:
    def __init__(self, job: SlideJob, paths: Sequence[Path], workers: int, ahead: int,
                 stop: _Flag | None,
                 record: Callable[[list[SlideResult]], None]) -> None:  # fmt: skip
        self.job, self.paths, self.ahead, self.stop = job, list(paths), ahead, stop
        self.record = record
        self.batch_size = job.options.batch_size
        self.device = job.runner.device  # CUDA: batches go to pinned memory, or stay on it
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="balnmp-prepare")
        self.claims: deque[Future[Claim]] = deque()
        self.slides: list[_Slide] = []
        self.results: queue.SimpleQueue[SlideResult] = queue.SimpleQueue()
        self.halted = False  # a failure without --skip-errors: nothing later is published
        self.buf: list[tuple[np.ndarray, _Slide]] = []
        self.n = 0
        self.events: list[tuple[Any, ...]] = []
        self.outcomes: list[SlideResult] = []  # of the batch being delivered, to record

    # -- the reader thread ---------------------------------------------------------------
    def _stopping(self) -> bool:
        return self.halted or (self.stop is not None and self.stop.is_set())

    def _top_up(self, todo: Iterator[Path]) -> None:
        while len(self.claims) < self.ahead and not self._stopping():
            path = next(todo, None)
            if path is None:
                return
            self.claims.append(self.pool.submit(self.job.claim, Path(path)))

    def batches(self) -> Iterator[Batch]:
        """The encoder's batches, slides claimed ahead on the pool and packed in list order."""
        todo = iter(self.paths)
        self._top_up(todo)
        while self.claims and not self._stopping():
            slide = _Slide(self.claims.popleft().result())
            self.slides.append(slide)
            self._top_up(todo)
            if slide.claim.result is not None:
                self.events.append(("decided", slide))
                continue
            yield from self._read(slide)
        if self.buf or self.events:
            yield self._emit()

    def _read(self, slide: _Slide) -> Iterator[Batch]:
        prep = slide.claim.prepared
        assert prep is not None
        plan, n = prep.grid.plan, len(prep.grid.coords)
        size = (plan.read_size, plan.read_size)
        if self.buf and self.buf[0][0].shape[1:3] != size[::-1]:
            yield self._emit()  # batches hold patches of one size
        got = 0
        prep.slide.device_batches = self.device.type == "cuda"
        try:
            if n:
                o = self.job.options
                for chunk in prep.slide.read_regions(prep.grid.coords, plan.level, size,
                                                     o.batch_size, o.num_workers):  # fmt: skip
                    if got + len(chunk) > n:
                        raise ValueError(f"reader returned more than {n} patches")
                    got += len(chunk)
                    yield from self._add(slide, chunk)
                    if self._stopping():
                        return
            if got != n:
                raise ValueError(f"reader returned {got} patches, expected {n}")
        except Exception as exc:  # this slide fails at "read"; its rows still here are dropped
            self.n -= sum(len(a) for a, s in self.buf if s is slide)
            self.buf = [(a, s) for a, s in self.buf if s is not slide]
            self.events.append(("fail", slide, "read", exc))
        else:
            self.events.append(("end", slide))
        finally:
            prep.slide.close()

    def _add(self, slide: _Slide, chunk: Any) -> Iterator[Batch]:
        if isinstance(chunk, np.ndarray) and not chunk.flags.owndata:
            chunk = np.array(chunk, copy=True)  # a view of a buffer the reader may recycle
        pos = 0
        while pos < len(chunk):
            take = min(self.batch_size - self.n, len(chunk) - pos)
            self.buf.append((chunk if take == len(chunk) else chunk[pos : pos + take], slide))
            self.n += take
            pos += take
            if self.n >= self.batch_size:
                yield self._emit()

    def _emit(self) -> Batch:
        """The buffered rows (None if none) as one batch, with the events so far."""
        route = _Route(events=self.events)
        for arr, slide in self.buf:
            if route.segments and route.segments[-1][0] is slide:
                route.segments[-1] = (slide, route.segments[-1][1] + len(arr))
            else:
                route.segments.append((slide, len(arr)))
        pixels = _join([a for a, _ in self.buf], self.device)
        self.buf, self.n, self.events = [], 0, []
        return Batch(pixels, route)

    # -- the writer thread ---------------------------------------------------------------
    def deliver(self, features: np.ndarray | None, batch: Batch,
                error: BaseException | None) -> None:  # fmt: skip
        route: _Route = batch.route
        try:
            offset = 0
            for slide, n in route.segments:
                if error is not None:
                    self._fail(slide, "encode", error)
                elif features is not None and not slide.closed:
                    self._append(slide, features[offset : offset + n])
                offset += n
            for event in route.events:
                kind, slide = event[0], event[1]
                if kind == "decided":
                    self._outcome(slide.claim.result)
                elif kind == "fail":
                    self._fail(slide, event[2], event[3])
                else:
                    self._end(slide)
        finally:  # also when a write error stops the job: what was published is recorded
            outcomes, self.outcomes = self.outcomes, []
            if outcomes:
                self.record(outcomes)  # the manifest, before a later batch publishes anything
            for result in outcomes:
                self.results.put(result)

    def _outcome(self, result: SlideResult) -> None:
        if self.halted:
            return
        self.outcomes.append(result)
        if result.status == "failed" and not self.job.options.skip_errors:
            self.halted = True

    def _fail(self, slide: _Slide, stage: str, error: BaseException) -> None:
        if slide.closed:
            return
        slide.release()
        self._outcome(self.job.failure(slide.claim.path, stage, error, slide.claim.t0))

    def _write(self, slide: _Slide, step: Callable[[], Any]) -> bool:
        """Run a write step of `slide`; a failure fails the slide, except an output error no
        later slide escapes, which stops the job."""
        try:
            step()
            return True
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
                raise
            self._fail(slide, "write", exc)
            return False

    def _open(self, slide: _Slide) -> None:
        if slide.writer is None:
            slide.writer = self.job.open_writer(slide.claim)

    def _append(self, slide: _Slide, rows: np.ndarray) -> None:
        start = slide.written

        def step() -> None:
            self._open(slide)
            end, files = start + len(rows), slide.patch_files
            slide.writer.append(rows, slide.coords[start:end],  # type: ignore[union-attr]
                                None if files is None else files[start:end])

        if self._write(slide, step):
            slide.written += len(rows)

    def _end(self, slide: _Slide) -> None:
        """The slide's last row is written: publish its file, release its lock."""
        if slide.closed or self.halted:
            return
        self.job.resume.check_record()  # another job replaced the store's settings: stop

        def commit() -> None:
            self._open(slide)
            entry = slide.writer.commit()  # type: ignore[union-attr]
            self.job.resume.published(slide.claim.slide_id, entry)

        if not self._write(slide, commit):
            return
        slide.release(keep_writer=True)
        c, n = slide.claim, slide.written
        seconds = time.perf_counter() - c.t0
        self._outcome(SlideResult(c.slide_id, str(c.path), "done" if n else "empty", n, seconds))

    # -- cleanup (calling thread, after the pipeline's threads are gone) -----------------
    def close(self) -> None:
        """Release every slide still held: claims not reached, slides not finished."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        for fut in self.claims:
            if not fut.cancelled() and fut.exception() is None:
                self.slides.append(_Slide(fut.result()))
        self.claims.clear()
        for slide in self.slides:
            if not slide.closed:
                slide.release()
            if slide.claim.prepared is not None:
                slide.claim.prepared.slide.close()

    def drain(self) -> list[SlideResult]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.results.get_nowait())
        return out


def _join(arrays: list[Any], device: Any) -> Any:
    """Rows of consecutive slides as one batch: a host array (pinned memory when the encoder
    is on CUDA, so its copy to the device is asynchronous and there is no second copy), or a
    CUDA tensor when they were decoded on the GPU. None when there are no rows. For a CPU
    encoder, the slides' arrays as they are, in a list (not copied into one: the runner
    preprocesses each on its own, a PIL-card encoder's a few patches at a time,
    `EncoderRunner.preprocess`)."""
    if not arrays:
        return None
    import torch

    if any(isinstance(a, torch.Tensor) for a in arrays):  # decoded on the GPU (some may not)
        return torch.cat([torch.as_tensor(a).to(device, non_blocking=True) for a in arrays])
    if device.type != "cuda":
        if len(arrays) == 1 and arrays[0].flags.owndata:
            return arrays[0]
        return [np.ascontiguousarray(a) for a in arrays]
    out = torch.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=torch.uint8,
                      pin_memory=True)  # fmt: skip
    row = 0
    for a in arrays:
        out[row : row + len(a)].copy_(torch.from_numpy(a))
        row += len(a)
    return out


def run_feed(job: SlideJob, paths: Sequence[Path],
             on_results: Callable[[list[SlideResult]], None],
             record: Callable[[list[SlideResult]], None], stop: _Flag | None = None,
             workers: int | None = None, ahead: int | None = None) -> None:  # fmt: skip
    """Extract `paths` through one encoder stream. `record` gets the outcomes of each batch
    in the writer thread, in list order, before any slide of a later batch is published (the
    manifest: one update per batch, not per slide); `on_results`
    gets the outcomes so far in the calling thread (after each batch, and a last time at the
    end, also when the job is stopped by an error or a signal).

    `workers` claim and prepare slides [default: `job_cpus()`], up to `ahead` slides
    [default: 2 x workers] before the one being read.
    """
    workers = workers or job_cpus()
    feed = _Feed(job, paths, workers, ahead or 2 * workers, stop, record)
    try:
        encode_stream(feed.batches(), job.runner, feed,
                      on_batch=lambda _n: _report(feed, on_results),
                      isolate_encode_errors=True)  # fmt: skip
    except PipelineError as exc:
        raise exc.error from None  # a job-level error (settings changed, disk full): itself
    finally:
        feed.close()
        _report(feed, on_results)


def _report(feed: _Feed, on_results: Callable[[list[SlideResult]], None]) -> None:
    results = feed.drain()
    if results:
        on_results(results)

"""One worker process per device (`--devices 0,1,...`), all pulling from the same slide list.

Each worker builds its own encoder on its device and walks the full list; per-slide locks
decide who encodes what, so a fast GPU simply takes more slides. Results are merged so that
every slide is reported once, by the worker that processed it.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from balnmp_cache.extract.slide_job import JobSpec, SlideResult

if TYPE_CHECKING:
    from threading import Event

_RANK = {"failed": 0, "done": 1, "empty": 1, "skipped": 2}


def _worker(paths: Sequence[Path], spec: JobSpec, device: str, position: int,
            stop: Event) -> list[SlideResult]:  # fmt: skip
    from balnmp_cache.extract.run import run_slides

    return run_slides(paths, spec, device, position, stop)


def run_on_devices(paths: Sequence[Path], spec: JobSpec,
                   devices: Sequence[str]) -> list[SlideResult]:  # fmt: skip
    """Run one worker per device; re-raise the first SlideFailure after all workers stop."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    manager = ctx.Manager()
    stop = manager.Event()
    per_slide: dict[str, SlideResult] = {}
    failure: BaseException | None = None
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx) as pool:
        futures = [
            pool.submit(_worker, list(paths), spec, dev, i, stop)
            for i, dev in enumerate(devices)
        ]
        for fut in futures:
            try:
                results = fut.result()
            except Exception as exc:  # SlideFailure or a worker that could not start
                failure = failure or exc
                continue
            for res in results:
                old = per_slide.get(res.slide_id)
                if old is None or _RANK[res.status] < _RANK[old.status]:
                    per_slide[res.slide_id] = res
    manager.shutdown()
    if failure is not None:
        raise failure
    from balnmp_cache.extract.slide_job import slide_id_of

    return [per_slide[slide_id_of(p)] for p in paths if slide_id_of(p) in per_slide]

"""Batched reads through blocks: neighbouring regions read as one, then cut apart.

A slide's tiles (often 240 or 256 px) do not line up with its patches, so a patch overlaps up
to four tiles and, read on its own, decodes all of them: on a tumour region tiled edge to edge
every tile is decoded about four times (the demo's 224 px patches on 256 px tiles: 4.6 pixels
decoded per patch pixel). A block, the bounding box of a group of neighbouring patches read in
one `_read_level` call, decodes each of its tiles once. The patches are then slices of the
block: the same level pixels, so the same bits as reading each patch alone (tested per
backend).

`region_blocks` groups the regions of a batch: it splits the batch's bounding box along its
longer side, at the median region, until each group's box is dense (its regions cover at
least `BLOCK_DENSITY` of it, so a block never decodes much glass a patch read would not) and
small (`BLOCK_PIXELS`), and until there are `parts` groups to read in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

__all__ = ["BLOCK_DENSITY", "BLOCK_PIXELS", "blocked_batches", "region_blocks"]

BLOCK_DENSITY = 0.5  # region pixels per block pixel, at least
BLOCK_PIXELS = 16 * 1024 * 1024  # the largest block, in pixels (48 MiB of RGB)
IN_FLIGHT_BYTES = 512 * 1024 * 1024  # batches read ahead hold at most about this much


def region_blocks(origins: np.ndarray, w: int, h: int, parts: int = 1,
                  density: float = BLOCK_DENSITY,
                  max_pixels: int = BLOCK_PIXELS) -> list[np.ndarray]:  # fmt: skip
    """Groups of row indices into `origins` ((n, 2) top-left corners of w x h regions), each
    read as one block: dense, at most `max_pixels` (unless one region is larger), and at
    least `parts` groups when there are that many regions. Every index is in one group."""
    n = len(origins)
    if n == 0:
        return []
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    todo = [np.arange(n)]
    done: list[np.ndarray] = []
    while todo:
        # the largest group first, so that `parts` splits the work evenly
        todo.sort(key=len)
        idx = todo.pop()
        o = origins[idx]
        span = o.max(axis=0) - o.min(axis=0) + (w, h)
        area = int(span[0]) * int(span[1])
        enough = len(done) + len(todo) + 1 >= parts
        if len(idx) == 1 or (enough and area <= max_pixels and len(idx) * w * h >= density * area):
            done.append(idx)
            continue
        axis = 0 if span[0] >= span[1] else 1
        order = idx[np.argsort(o[:, axis], kind="stable")]
        half = len(order) // 2
        todo += [order[:half], order[half:]]
    return done


def blocked_batches(
    read_block: Callable[[int, int, int, int], np.ndarray],
    read_one: Callable[[int], np.ndarray],
    origins: np.ndarray,
    inside: np.ndarray,
    size: tuple[int, int],
    batch_size: int,
    workers: int,
) -> Iterator[np.ndarray]:
    """(b, h, w, 3) uint8 batches, in input order, of the regions at level pixels `origins`.

    Regions `inside` the level are cut from blocks (`read_block(x, y, w, h)`, level pixels);
    the others are read alone (`read_one(i)`, i the index into `origins`: white padding).
    With `workers` > 1 the blocks of a batch are read in parallel and the next batches read
    ahead, within `IN_FLIGHT_BYTES`.
    """
    w, h = size
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    parts = max(1, workers)

    def batch(start: int, pool: ThreadPoolExecutor | None) -> tuple[np.ndarray, list[Future[None]]]:
        stop = min(start + batch_size, len(origins))
        out = np.empty((stop - start, h, w, 3), dtype=np.uint8)
        sel = np.flatnonzero(inside[start:stop])
        jobs: list[Callable[[], None]] = [
            _single(out, int(i), start, read_one) for i in np.flatnonzero(~inside[start:stop])
        ]
        for group in region_blocks(origins[start:stop][sel], w, h, parts):
            jobs.append(_block(out, sel[group], origins[start:stop], w, h, read_block))
        if pool is None:
            for job in jobs:
                job()
            return out, []
        return out, [pool.submit(job) for job in jobs]

    def result(item: tuple[np.ndarray, list[Future[None]]]) -> np.ndarray:
        for fut in item[1]:
            fut.result()  # a read error: raised here, in input order
        return item[0]

    starts = range(0, len(origins), batch_size)
    if workers <= 1:
        for start in starts:
            yield result(batch(start, None))
        return
    ahead = max(2, min(workers, IN_FLIGHT_BYTES // max(1, batch_size * w * h * 3)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slide-read")
    try:
        pending: list[tuple[np.ndarray, list[Future[None]]]] = []
        for start in starts:
            pending.append(batch(start, pool))
            if len(pending) >= ahead:
                yield result(pending.pop(0))
        while pending:
            yield result(pending.pop(0))
    finally:  # also when the consumer stops early or a read fails: queued reads are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def _single(out: np.ndarray, i: int, start: int,
            read_one: Callable[[int], np.ndarray]) -> Callable[[], None]:  # fmt: skip
    def job() -> None:
        out[i] = read_one(start + i)

    return job


def _block(out: np.ndarray, idx: np.ndarray, origins: np.ndarray, w: int, h: int,
           read_block: Callable[[int, int, int, int], np.ndarray]) -> Callable[[], None]:  # fmt: skip
    def job() -> None:
        o = origins[idx]
        x0, y0 = (int(v) for v in o.min(axis=0))
        x1, y1 = (int(v) for v in o.max(axis=0) + (w, h))
        pixels = read_block(x0, y0, x1 - x0, y1 - y0)
        for i, (x, y) in zip(idx, o - (x0, y0)):
            out[i] = pixels[y : y + h, x : x + w]

    return job

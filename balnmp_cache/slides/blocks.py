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
small (`BLOCK_PIXELS`), and until there are `parts` groups to read in parallel. Groups of
fewer than `MIN_SHARED` regions share too little to be worth a block where the backend has a
native multi-location reader (cuCIM): they go to it, all of them in one stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK_DENSITY", "BLOCK_PIXELS", "blocked_batches", "region_blocks", "tile_share"]

BLOCK_DENSITY = 0.5  # region pixels per block pixel, at least
BLOCK_PIXELS = 16 * 1024 * 1024  # the largest block, in pixels (48 MiB of RGB)
MIN_SHARED = 4  # regions in a group, at least, to read it as a block (else apart)
MAX_TILE_SHARE = 0.8  # a block decoding more of its regions' own tiles than this: read apart
IN_FLIGHT_BYTES = 512 * 1024 * 1024  # batches read ahead hold at most about this much


def region_blocks(origins: np.ndarray, w: int, h: int, parts: int = 1,
                  density: float = BLOCK_DENSITY, max_pixels: int = BLOCK_PIXELS,
                  smallest: int = 1) -> list[np.ndarray]:  # fmt: skip
    """Groups of row indices into `origins` ((n, 2) top-left corners of w x h regions), each
    read as one block: dense, at most `max_pixels` (unless one region is larger), and at
    least `parts` groups when there are that many regions. Every index is in one group.
    Groups of fewer than `smallest` regions are not split further (they are read apart), nor
    dense groups into halves that small, however many `parts`."""
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
        x0, y0, x1, y1 = _box(o, w, h)
        span = (x1 - x0, y1 - y0)
        area = span[0] * span[1]
        enough = len(done) + len(todo) + 1 >= parts
        dense = area <= max_pixels and len(idx) * w * h >= density * area
        # a dense group is not split into halves under `smallest` (they would be read apart)
        if len(idx) < max(2, smallest) or (dense and (enough or len(idx) < 2 * smallest)):
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
    read_apart: Callable[[np.ndarray], Iterator[np.ndarray]] | None = None,
    tile: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """(b, h, w, 3) uint8 batches, in input order, of the regions at level pixels `origins`.

    Regions `inside` the level are cut from blocks (`read_block(x, y, w, h)`, level pixels);
    the others are read alone (`read_one(i)`, i the index into `origins`: white padding).
    Inside regions in groups of fewer than `MIN_SHARED` (a sparse or shuffled grid: little
    to share) go, all of them in order, to one `read_apart(indices)` stream of batches when
    given (a native multi-location reader, whose own threads read ahead), else through
    `read_block`; so do groups whose block would decode over `MAX_TILE_SHARE` of the `tile`s
    they decode one by one (aligned with the tiles). With `workers` > 1 a batch's blocks are
    read in parallel and the next batches ahead, within `IN_FLIGHT_BYTES`.
    """
    w, h = size
    origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
    plans = [_plan(origins, inside, start, min(start + batch_size, len(origins)), w, h,
                   max(1, workers), read_apart is not None, tile)
             for start in range(0, len(origins), batch_size)]  # fmt: skip
    apart_all = [p.start + p.apart for p in plans if len(p.apart)]
    stream = _Rows(read_apart(np.concatenate(apart_all)) if apart_all and read_apart else None)

    def submit(plan: _Plan, pool: ThreadPoolExecutor | None) -> _Pending:
        if len(plan.apart) == plan.stop - plan.start:  # all from the stream, as it cuts them
            return _Pending(plan, None, [])
        out = np.empty((plan.stop - plan.start, h, w, 3), dtype=np.uint8)
        jobs = [_single(out, i, plan.start, read_one) for i in plan.edge]
        jobs += [_block(out, g, origins[plan.start : plan.stop], w, h, read_block)
                 for g in plan.blocks]  # fmt: skip
        if pool is None:
            for job in jobs:
                job()
            return _Pending(plan, out, [])
        return _Pending(plan, out, [pool.submit(job) for job in jobs])

    def result(item: _Pending) -> np.ndarray:
        if item.out is None:
            return stream.take(len(item.plan.apart))
        if len(item.plan.apart):
            item.out[item.plan.apart] = stream.take(len(item.plan.apart))
        for fut in item.futures:
            fut.result()  # a read error: raised here, in input order
        return item.out

    try:
        if workers <= 1:
            for plan in plans:
                yield result(submit(plan, None))
            return
        yield from _read_ahead(plans, submit, result, workers, batch_size * w * h * 3)
    finally:
        stream.close()


def _read_ahead(plans: list[_Plan], submit: Callable[[_Plan, ThreadPoolExecutor], _Pending],
                result: Callable[[_Pending], np.ndarray], workers: int,
                batch_bytes: int) -> Iterator[np.ndarray]:  # fmt: skip
    """The batches of `plans` in order, the next ones read ahead by a pool of `workers`
    threads, as many as fit in `IN_FLIGHT_BYTES` (at least 2, at most `workers`)."""
    ahead = max(2, min(workers, IN_FLIGHT_BYTES // max(1, batch_bytes)))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slide-read")
    try:
        pending: list[_Pending] = []
        for plan in plans:
            pending.append(submit(plan, pool))
            if len(pending) >= ahead:
                yield result(pending.pop(0))
        while pending:
            yield result(pending.pop(0))
    finally:  # also when the consumer stops early or a read fails: queued reads dropped
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Plan:
    """One batch's reads: `edge` regions alone, `blocks` (groups of neighbours), `apart`
    (taken from the native stream); indices relative to `start`."""

    start: int
    stop: int
    edge: list[int]
    blocks: list[np.ndarray]
    apart: np.ndarray


@dataclass
class _Pending:
    plan: _Plan
    out: np.ndarray | None  # None: the batch is the stream's rows
    futures: list[Future[None]]


def _plan(origins: np.ndarray, inside: np.ndarray, start: int, stop: int, w: int, h: int,
          parts: int, native: bool, tile: tuple[int, int] | None = None) -> _Plan:  # fmt: skip
    sel = np.flatnonzero(inside[start:stop])
    edge = [int(i) for i in np.flatnonzero(~inside[start:stop])]
    blocks: list[np.ndarray] = []
    apart: list[int] = []
    smallest = MIN_SHARED if native else 1
    # many threads on few patches: no more parts than leave MIN_SHARED x 2 regions to each
    parts = max(1, min(parts, len(sel) // (2 * MIN_SHARED))) if native else parts
    for group in region_blocks(origins[start:stop][sel], w, h, parts, smallest=smallest):
        o = origins[start:stop][sel[group]]
        if native and (len(group) < MIN_SHARED or tile_share(o, w, h, tile) > MAX_TILE_SHARE):
            apart.extend(int(i) for i in sel[group])
        else:
            blocks.append(sel[group])
    return _Plan(start, stop, edge, blocks, np.array(sorted(apart), dtype=np.int64))


def tile_share(origins: np.ndarray, w: int, h: int, tile: tuple[int, int] | None) -> float:
    """Tiles the block of these regions decodes, over the tiles they decode one by one (0 when
    the tile size is unknown: a block is assumed to pay)."""
    if tile is None or len(origins) == 0:
        return 0.0
    tw, th = (max(1, int(v)) for v in tile)
    x, y = origins[:, 0], origins[:, 1]
    alone = ((x + w - 1) // tw - x // tw + 1) * ((y + h - 1) // th - y // th + 1)
    x0, y0, x1, y1 = _box(origins, w, h)
    block = ((x1 - 1) // tw - x0 // tw + 1) * ((y1 - 1) // th - y0 // th + 1)
    return block / int(alone.sum())


class _Rows:
    """Rows taken in order from a stream of batches (the native reader's), however its
    batches are cut."""

    def __init__(self, batches: Iterator[np.ndarray] | None) -> None:
        self.batches = batches
        self.rows: list[np.ndarray] = []
        self.held = 0

    def take(self, n: int) -> np.ndarray:
        assert self.batches is not None
        while self.held < n:
            batch = next(self.batches)
            self.rows.append(batch)
            self.held += len(batch)
        if len(self.rows[0]) == n:  # the stream's batch as it is: no copy
            self.held -= n
            return self.rows.pop(0)
        joined = self.rows[0] if len(self.rows) == 1 else np.concatenate(self.rows)
        self.rows, self.held = ([joined[n:]] if len(joined) > n else []), len(joined) - n
        return joined[:n]

    def close(self) -> None:
        close = getattr(self.batches, "close", None)
        if close is not None:
            close()


def _single(out: np.ndarray, i: int, start: int,
            read_one: Callable[[int], np.ndarray]) -> Callable[[], None]:  # fmt: skip
    def job() -> None:
        out[i] = read_one(start + i)

    return job


def _block(out: np.ndarray, idx: np.ndarray, origins: np.ndarray, w: int, h: int,
           read_block: Callable[[int, int, int, int], np.ndarray]) -> Callable[[], None]:  # fmt: skip
    def job() -> None:
        o = origins[idx]
        x0, y0, x1, y1 = _box(o, w, h)
        pixels = read_block(x0, y0, x1 - x0, y1 - y0)
        for i, (x, y) in zip(idx, o - (x0, y0)):
            out[i] = pixels[y : y + h, x : x + w]

    return job


def _box(origins: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the bounding box of w x h regions at `origins`."""
    lo, hi = origins.min(axis=0), origins.max(axis=0)
    return int(lo[0]), int(lo[1]), int(hi[0]) + w, int(hi[1]) + h

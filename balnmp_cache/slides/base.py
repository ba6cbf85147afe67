"""The `Slide` base class every backend subclasses, and the helpers they share.

A backend declares `can_open(info) -> str | None` (None: yes, else the reason it cannot) and
`open(info, mpp) -> Slide`, and implements `_read_level`; batched reads, thumbnails, bounds
checks, white padding and the lifetime come from here. `auto` says whether `open_slide`'s
automatic choice tries the backend (in registration order).
"""

from __future__ import annotations

import abc
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from balnmp_cache.errors import SlideError
from balnmp_cache.slides.ids import slide_id_from_path

if TYPE_CHECKING:
    from balnmp_cache.slides.tiffprobe import SourceInfo

__all__ = ["Slide", "SlideError", "default_workers", "resize_rgb", "threaded_batches"]

# Largest level region (pixels) a thumbnail reads in one piece; bigger ones go in bands.
THUMBNAIL_BAND_PIXELS = 64 * 1024 * 1024


class Slide(abc.ABC):
    """A multi-resolution slide; every backend serves the same API.

    Locations are level-0 pixels (as in OpenSlide). At level `L` the region starts at
    `floor(x / level_downsamples[L])`, so reads are never interpolated and every backend
    returns the same pixels. Parts of a region outside the slide are white (255), RGBA
    sources are composited on white.
    """

    backend: ClassVar[str] = ""
    auto: ClassVar[bool] = True  # tried by `open_slide(backend="auto")`
    fixed_coords: np.ndarray | None = None
    fixed_patch_size: int | None = None
    # Aligned with `fixed_coords`: the file each cell was read from, relative to the slide's
    # folder (str); stored per row as `patch_files` (docs/format.md).
    fixed_files: np.ndarray | None = None
    # Set by a caller that encodes on a CUDA device: `read_regions` may then yield batches
    # decoded on the GPU as CUDA `torch` tensors, never copied to the host (cuCIM only).
    device_batches: bool = False

    @classmethod
    @abc.abstractmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        """None when this backend can serve the probed source, else the reason it cannot."""

    @classmethod
    @abc.abstractmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> Slide:
        """Open the probed source; `mpp` (µm/px at level 0) wins over the file's own."""

    def __init__(
        self,
        path: Path,
        level_dimensions: tuple[tuple[int, int], ...],
        level_downsamples: tuple[float, ...],
        properties: dict[str, str],
        mpp: float | None,
    ) -> None:
        self.path = Path(path)
        self.slide_id = slide_id_from_path(path)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        self.level_downsamples = tuple(float(d) for d in level_downsamples)
        self.properties = dict(properties)
        self.mpp = mpp
        self._closed = False
        self._reads = 0  # `_read_level` calls in progress; `close()` waits for them
        self._idle = threading.Condition()

    # -- geometry ------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) at level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel at `level` (None when the slide's resolution is unknown)."""
        self._check_level(level)
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution level whose downsample does not exceed `downsample`."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[int, int]:
        """Top-left pixel at `level` of a region whose level-0 location is `location`."""
        ds = self.level_downsamples[level]
        return int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))

    # -- reading -------------------------------------------------------------------------
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """(h, w, 3) uint8 region at `level`; `location` is the level-0 top-left corner."""
        self._check_open()
        self._check_level(level)
        w, h = _check_size(self.path, size)
        lx, ly = self.level_origin(location, level)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_checked(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    def _read_checked(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """`_read_level`, a backend library's error named with the slide and the region; a
        slide closed meanwhile (a pool thread reading ahead) keeps its handle until it ends."""
        with self._idle:
            self._check_open()
            self._reads += 1
        try:
            return self._read_level(level, x, y, w, h)
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(
                self.path,
                f"reading {w}x{h} px at level {level} ({x}, {y}) failed: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        finally:
            with self._idle:
                self._reads -= 1
                self._idle.notify_all()

    def read_regions(
        self,
        locations: Any,
        level: int,
        size: tuple[int, int],
        batch_size: int = 64,
        num_workers: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Batches (b, h, w, 3) uint8 of regions at level-0 `locations`, in input order.

        Thread-safe; the base implementation reads each region with `read_region` in a thread
        pool, or, where the backend says a larger region costs less than its parts
        (`_block_reads`), neighbouring regions as one block (`blocks.py`: each tile decoded
        once, the same pixels). Backends with a native batched reader override
        `_read_batches`.
        """
        self._check_open()
        self._check_level(level)
        size = _check_size(self.path, size)
        locs = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
        if batch_size < 1:
            raise SlideError(self.path, f"batch_size must be >= 1, got {batch_size}")
        workers = default_workers() if num_workers is None else max(int(num_workers), 0)
        return self._read_batches(locs, level, size, batch_size, workers)

    def _read_batches(
        self, locs: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int
    ) -> Iterator[np.ndarray]:
        if self._block_reads(level):
            return self._blocked_batches(locs, level, size, batch_size, workers)
        return threaded_batches(self.read_region, locs, level, size, batch_size, workers)

    def _block_reads(self, level: int) -> bool:
        """Whether `_read_level` of one region covering several patches returns their pixels
        for less work than reading them one by one (tiled, compressed sources)."""
        return False

    def _blocked_batches(
        self, locs: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int,
        read_apart: Callable[[np.ndarray], Iterator[np.ndarray]] | None = None,
    ) -> Iterator[np.ndarray]:
        """`read_regions` through blocks: regions inside the level cut from blocks read with
        `_read_level`, those crossing its edge read alone (white padding), inside regions
        without a neighbour by `read_apart(indices into locs)` if given."""
        from functools import partial

        from balnmp_cache.slides.blocks import blocked_batches

        origins, inside = self._level_origins(locs, level, size)

        def read_one(i: int) -> np.ndarray:
            return self.read_region((int(locs[i, 0]), int(locs[i, 1])), level, size)

        return blocked_batches(partial(self._read_checked, level), read_one, origins, inside,
                               size, batch_size, workers, read_apart, self._tile_size(level))  # fmt: skip

    def _level_origins(self, locs: np.ndarray, level: int,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Each region's top-left level pixel (as `level_origin`) and whether the region lies
        wholly inside the level (the others need white padding)."""
        ds = self.level_downsamples[level]
        origins = np.floor(locs / ds).astype(np.int64)
        (w, h), (lw, lh) = size, self.level_dimensions[level]
        inside = (origins >= 0).all(axis=1) & (origins[:, 0] + w <= lw) & (origins[:, 1] + h <= lh)
        return origins, inside

    def _tile_size(self, level: int) -> tuple[int, int] | None:
        """The level's tile (width, height) where the backend knows it, else None."""
        return None

    def thumbnail(self, max_size: int) -> np.ndarray:
        """Whole slide, longest side <= `max_size`, from the smallest sufficient level.

        A level too big to hold at once (single-level scans) is reduced band by band with
        an integer block mean, so memory stays bounded by `THUMBNAIL_BAND_PIXELS`.
        """
        self._check_open()
        if max_size < 1:
            raise SlideError(self.path, f"thumbnail max_size must be >= 1, got {max_size}")
        w0, h0 = self.dimensions
        level = self.get_best_level_for_downsample(max(max(w0, h0) / max_size, 1.0))
        lw, lh = self.level_dimensions[level]
        if lw * lh > THUMBNAIL_BAND_PIXELS:
            return self._banded_thumbnail(level, max_size)
        region = self.read_region((0, 0), level, (lw, lh))
        scale = max_size / max(lw, lh)
        if scale >= 1:
            return region
        return resize_rgb(region, max(1, round(lw * scale)), max(1, round(lh * scale)))

    def _banded_thumbnail(self, level: int, max_size: int) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        f = max(1, math.ceil(max(lw, lh) / max_size))
        tw, th = max(1, lw // f), max(1, lh // f)
        rows_per_band = max(1, THUMBNAIL_BAND_PIXELS // (lw * f)) * f
        out = np.empty((th, tw, 3), dtype=np.uint8)
        for y in range(0, th * f, rows_per_band):
            rows = min(rows_per_band, th * f - y)
            loc0 = (0, int(math.ceil(y * ds)))
            band = self.read_region(loc0, level, (tw * f, rows)).astype(np.uint32)
            blocks = band.reshape(rows // f, f, tw, f, 3).sum(axis=(1, 3))
            out[y // f : (y + rows) // f] = (blocks + f * f // 2) // (f * f)
        return out

    @abc.abstractmethod
    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 pixels at `level` coordinates, fully inside the level."""

    # -- lifetime ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return bool(getattr(self, "_closed", True))

    def close(self) -> None:
        """Release the file handle, once the reads in progress in other threads are done;
        further reads raise SlideError."""
        idle = getattr(self, "_idle", None)
        if idle is None:  # __init__ did not finish: nothing read, nothing to wait for
            return
        with idle:
            if self._closed:
                return
            self._closed = True
            idle.wait_for(lambda: self._reads == 0)
        self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Backend hook: release native handles."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.slide_id!r} backend={self.backend} "
            f"dimensions={self.dimensions} levels={self.level_count} mpp={self.mpp}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise SlideError(self.path, "slide is closed; open it again with open_slide()")

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < self.level_count:
            raise SlideError(
                self.path, f"level {level} does not exist (the slide has {self.level_count})"
            )


def _check_size(path: Path, size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise SlideError(path, f"region size must be positive, got {size}")
    return w, h


def threaded_batches(
    read: Callable[[tuple[int, int], int, tuple[int, int]], np.ndarray],
    locs: np.ndarray,
    level: int,
    size: tuple[int, int],
    batch_size: int,
    workers: int,
) -> Iterator[np.ndarray]:
    """Yield (b, h, w, 3) batches of `read(location, level, size)` in input order.

    Up to `workers` threads decode ahead (native readers release the GIL), at most two
    batches in flight, so memory stays bounded on slides with 100k patches.
    """
    w, h = size
    starts = range(0, len(locs), batch_size)

    def fill(start: int, pool: Any) -> Any:
        chunk = locs[start : start + batch_size]
        if pool is None:
            return [read((int(x), int(y)), level, size) for x, y in chunk]
        return [pool.submit(read, (int(x), int(y)), level, size) for x, y in chunk]

    def collect(items: list[Any]) -> np.ndarray:
        out = np.empty((len(items), h, w, 3), dtype=np.uint8)
        for i, item in enumerate(items):
            out[i] = item if isinstance(item, np.ndarray) else item.result()
        return out

    if workers <= 1:
        for start in starts:
            yield collect(fill(start, None))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slide-read") as pool:
        pending: list[Any] = []
        for start in starts:
            pending.append(fill(start, pool))
            if len(pending) == 2:
                yield collect(pending.pop(0))
        for items in pending:
            yield collect(items)


def default_workers() -> int:
    """Reader threads when the caller does not say: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-style downscale of an (h, w, 3) uint8 array with Pillow (quality over speed)."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((width, height), Image.Resampling.BOX))

"""Patch-folder backend: a folder of pre-cut patches served as one slide.

The BCNB `paper_patches` layout is `<patient>/<patient>_<region>_<x>_<y>.jpg`: each file is
one grid cell whose top-left corner is (x, y). The folder becomes a one-level slide as large
as the patches' bounding extent; `fixed_coords`/`fixed_patch_size` tell the tiler to use
exactly these cells, and `fixed_files` names each cell's file (relative to the folder).
Reading a patch's own box returns that patch; other boxes are composed from the overlapping
patches, white elsewhere. A folder of images without coordinates in their names is laid out
row by row, in name order.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from balnmp_cache.errors import SlideError
from balnmp_cache.slides.base import Slide, threaded_batches
from balnmp_cache.slides.ids import PATCH_IMAGE_SUFFIXES
from balnmp_cache.slides.image import decode_image, to_rgb8
from balnmp_cache.slides.tiffprobe import SourceInfo

__all__ = ["IMAGE_SUFFIXES", "PatchFolderSlide", "PatchLayout", "parse_patch_name",
           "scan_patch_folder"]

IMAGE_SUFFIXES = PATCH_IMAGE_SUFFIXES
# <anything>_<region>_<x>_<y>.<ext>; region optional.
_NAME = re.compile(r"^(?P<stem>.*?)(?:_(?P<region>\d+))?_(?P<x>\d+)_(?P<y>\d+)$")
_CACHE_PATCHES = 256


def parse_patch_name(name: str) -> tuple[int | None, int, int] | None:
    """(region, x, y) from a patch file name `<anything>[_<region>]_<x>_<y>.<ext>` (region
    None when absent), or None when the name carries no coordinates."""
    m = _NAME.match(Path(name).stem)
    if m is None:
        return None
    return (None if m["region"] is None else int(m["region"])), int(m["x"]), int(m["y"])


@dataclass(frozen=True)
class PatchLayout:
    """Where each patch file sits: `coords` (N, 2) int64 level-0 top-left corners."""

    files: tuple[Path, ...]
    coords: np.ndarray
    patch_size: int
    extent: tuple[int, int]  # (width, height)
    layout: str  # "named" (coordinates from file names) or "grid" (laid out by name order)


def _patch_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError as exc:
        raise SlideError(path, f"patch image cannot be read: {exc}") from exc


def scan_patch_folder(folder: Path) -> PatchLayout:
    """List the patch images of `folder` and place them at level-0 coordinates.

    Named coordinates that are grid indices (spacing smaller than a patch) are scaled by the
    patch size; separate regions are placed side by side so they never overlap.
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file() and not p.name.startswith("."))  # fmt: skip
    if not files:
        raise SlideError(folder, f"folder holds no patch images ({', '.join(IMAGE_SUFFIXES)})")
    pw, ph = _patch_size(files[0])
    if pw != ph:
        raise SlideError(files[0], f"patches must be square, this one is {pw}x{ph}")
    size = pw
    matches = [_NAME.match(p.stem) for p in files]
    if all(matches):
        regions = np.array([int(m["region"] or 0) for m in matches])  # type: ignore[index]
        xy = np.array([[int(m["x"]), int(m["y"])] for m in matches], dtype=np.int64)  # type: ignore[index]
        coords = _place_regions(xy, regions, size)
        layout = "named"
    else:
        cols = max(1, math.ceil(math.sqrt(len(files))))
        idx = np.arange(len(files))
        coords = np.stack([idx % cols, idx // cols], axis=1).astype(np.int64) * size
        layout = "grid"
    extent = (int(coords[:, 0].max()) + size, int(coords[:, 1].max()) + size)
    return PatchLayout(tuple(files), coords, size, extent, layout)


def _place_regions(xy: np.ndarray, regions: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates for named patches; regions side by side with a one-patch gap."""
    out = np.empty_like(xy)
    offset = 0
    for k, region in enumerate(np.unique(regions)):
        sel = regions == region
        pts = xy[sel].copy()
        steps = [np.diff(np.unique(pts[:, a])) for a in (0, 1)]
        min_step = min((int(s.min()) for s in steps if len(s)), default=size)
        if min_step == 1 or int(pts.max()) < size:  # grid indices, not pixels
            pts *= size
        if k > 0:
            pts[:, 0] += offset - int(pts[:, 0].min())
        out[sel] = pts
        offset = int(pts[:, 0].max()) + 2 * size
    return out


class PatchFolderSlide(Slide):
    """A folder of equally sized patch images, one grid cell each."""

    backend = "patches"

    def __init__(self, path: Path, layout: PatchLayout, mpp: float | None) -> None:
        super().__init__(
            path,
            level_dimensions=(layout.extent,),
            level_downsamples=(1.0,),
            properties={"patches.count": str(len(layout.files)), "patches.layout": layout.layout},
            mpp=mpp,
        )
        self.layout = layout
        self.fixed_coords = layout.coords.copy()
        self.fixed_patch_size = layout.patch_size
        self.fixed_files = np.array([f.relative_to(path).as_posix() for f in layout.files],
                                    dtype=str)
        self._index = {(int(x), int(y)): i for i, (x, y) in enumerate(layout.coords)}
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        if not info.is_dir:
            return "not a folder of patches"
        return None

    @classmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> PatchFolderSlide:
        return cls(info.path, scan_patch_folder(info.path), mpp)

    def _patch(self, i: int) -> np.ndarray:
        """Decoded patch `i` (LRU-cached: composing regions reuses neighbours)."""
        with self._lock:
            cached = self._cache.get(i)
            if cached is not None:
                self._cache.move_to_end(i)
                return cached
        path = self.layout.files[i]
        try:
            arr = to_rgb8(decode_image(path, jpeg=path.suffix.lower() in (".jpg", ".jpeg")), path)
        except OSError as exc:
            raise SlideError(path, f"patch image cannot be decoded: {exc}") from exc
        s = self.layout.patch_size
        if arr.shape[:2] != (s, s):
            raise SlideError(path, f"patch is {arr.shape[1]}x{arr.shape[0]}, expected {s}x{s}")
        with self._lock:
            self._cache[i] = arr
            if len(self._cache) > _CACHE_PATCHES:
                self._cache.popitem(last=False)
        return arr

    def _fetch(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """A patch's own box straight from the decoder (no white canvas, no extra copy)."""
        s = self.layout.patch_size
        exact = self._index.get((int(location[0]), int(location[1])))
        if exact is not None and tuple(size) == (s, s):
            self._check_open()
            return self._patch(exact)
        return self.read_region(location, level, size)

    def _read_batches(
        self, locs: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int
    ) -> Iterator[np.ndarray]:
        return threaded_batches(self._fetch, locs, level, size, batch_size, workers)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        s = self.layout.patch_size
        exact = self._index.get((x, y))
        if exact is not None and (w, h) == (s, s):
            return self._patch(exact).copy()
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        c = self.layout.coords
        hits = np.flatnonzero(
            (c[:, 0] < x + w) & (c[:, 0] + s > x) & (c[:, 1] < y + h) & (c[:, 1] + s > y)
        )
        for i in hits:
            px, py = int(c[i, 0]), int(c[i, 1])
            x0, y0 = max(px, x), max(py, y)
            x1, y1 = min(px + s, x + w), min(py + s, y + h)
            patch = self._patch(int(i))
            out[y0 - y : y1 - y, x0 - x : x1 - x] = patch[y0 - py : y1 - py, x0 - px : x1 - px]
        return out

    def thumbnail(self, max_size: int) -> np.ndarray:
        """A mosaic of downscaled patches (never composes the full-size slide)."""
        self._check_open()
        if max_size < 1:
            raise SlideError(self.path, f"thumbnail max_size must be >= 1, got {max_size}")
        w0, h0 = self.dimensions
        scale = min(1.0, max_size / max(w0, h0))
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        out = np.full((th, tw, 3), 255, dtype=np.uint8)
        s = self.layout.patch_size
        cell = max(1, round(s * scale))
        from balnmp_cache.slides.base import resize_rgb

        for i, (px, py) in enumerate(self.layout.coords):
            tx, ty = int(px * scale), int(py * scale)
            small = self._patch(i) if cell == s else resize_rgb(self._patch(i), cell, cell)
            ch, cw = min(cell, th - ty), min(cell, tw - tx)
            if ch > 0 and cw > 0:
                out[ty : ty + ch, tx : tx + cw] = small[:ch, :cw]
        return out

    def _close(self) -> None:
        self._cache.clear()

"""Image backend: a plain JPEG/PNG/TIFF served as a slide.

The BCNB whole-slide images are large JPEGs (some beyond Pillow's decompression-bomb
limit); they are decoded once, on first read, into one level. Thumbnails of JPEGs use
libjpeg's DCT scaling (Pillow `draft`) and never decode the full image. TIFFs that no slide
reader takes (strips, zstd, webp, JPEG 2000, ...) are read lazily, tile by tile, through
tifffile, with their pyramid pages as levels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from balnmp_cache.errors import SlideError
from balnmp_cache.slides.base import Slide, resize_rgb
from balnmp_cache.slides.mpp import resolution_mpp, tiff_mpp
from balnmp_cache.slides.tiffprobe import SourceInfo

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["MAX_PIXELS", "ImageSlide", "decode_image", "to_rgb8"]

# Largest image decoded into memory (3 bytes/px: 4 Gpx = 12 GB). Raise for bigger scans.
MAX_PIXELS = 4 * 1024**3
_PIL_LOCK = threading.Lock()
# Batches smaller than two threads' worth of patches are copied on the calling thread.
_MIN_ROWS_PER_THREAD = 4


@contextmanager
def _pixel_limit(limit: int | None) -> Iterator[None]:
    """Pillow's decompression-bomb limit, swapped for ours while one file opens."""
    from PIL import Image

    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_rgb8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA uint8 -> (h, w, 3) uint8 RGB (alpha over white)."""
    if arr.dtype != np.uint8:
        raise SlideError(path, f"{arr.dtype} pixels are not supported; convert to 8-bit RGB")
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[-1]
    if channels in (2, 4):
        a = arr[..., -1:].astype(np.uint16)
        base = arr[..., :-1].astype(np.uint16)
        arr = ((base * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        channels -= 1
    if channels == 1:
        return np.repeat(arr, 3, axis=-1)
    if channels == 3:
        return np.ascontiguousarray(arr)
    raise SlideError(path, f"images with {channels} channels are not supported")


class ImageSlide(Slide):
    """A JPEG/PNG/BMP (one level, decoded on first read) or a TIFF read through tifffile."""

    backend = "image"

    def __init__(
        self,
        path: Path,
        dims: tuple[tuple[int, int], ...],
        mpp: float | None,
        properties: dict[str, str],
        arrays: list | None = None,
        tiff: object | None = None,
    ) -> None:
        w0, h0 = dims[0]
        super().__init__(
            path,
            level_dimensions=dims,
            level_downsamples=tuple((w0 / w + h0 / h) / 2 for w, h in dims),
            properties=properties,
            mpp=mpp,
        )
        self._arrays = arrays  # lazy per-level arrays (zarr) for TIFFs
        self._tiff = tiff
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()

    @classmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        if info.is_dir:
            return "a directory is not an image"
        if info.tiff is not None:
            return _tiff_decodable(info)
        from PIL import Image, UnidentifiedImageError

        try:
            with _pixel_limit(None), Image.open(info.path):
                pass
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            return f"not an image Pillow can read ({exc})"
        return None

    @classmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> ImageSlide:
        if info.tiff is not None:
            return cls._open_tiff(info, mpp)
        from PIL import Image

        with _pixel_limit(None), Image.open(info.path) as im:
            w, h = im.size
            props = {f"image.{k}": str(v) for k, v in im.info.items() if isinstance(v, str | int)}
            props["image.format"] = str(im.format)
            dpi = im.info.get("dpi")
        if w * h > MAX_PIXELS:
            raise SlideError(
                info.path,
                f"{w}x{h} px is more than balnmp_cache.slides.image.MAX_PIXELS ({MAX_PIXELS}); "
                "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)",
            )
        if mpp is None and dpi:
            mpp = resolution_mpp((float(dpi[0]), float(dpi[1])), 2)
        return cls(info.path, ((w, h),), mpp, props)

    @classmethod
    def _open_tiff(cls, info: SourceInfo, mpp: float | None) -> ImageSlide:
        import tifffile
        import zarr

        if info.tiff is None:
            raise SlideError(info.path, "not a TIFF file")
        tif = tifffile.TiffFile(info.path)
        try:
            series = tif.series[0]
            if len(series.levels) > len(info.tiff.levels) and series.axes in ("YXS", "YX"):
                # OME-TIFF and friends keep the pyramid in SubIFDs of the first series.
                arrays = [zarr.open(series.aszarr(level=i), mode="r")
                          for i in range(len(series.levels))]  # fmt: skip
                dims = tuple((int(lv.shape[1]), int(lv.shape[0])) for lv in series.levels)
            else:
                levels = info.tiff.levels
                arrays = [zarr.open(tif.pages[lv.index].aszarr(), mode="r") for lv in levels]
                dims = tuple((lv.width, lv.height) for lv in levels)
        except Exception:
            tif.close()
            raise
        props = {"tiff.ImageDescription": info.tiff.description}
        found = mpp if mpp is not None else tiff_mpp(info.tiff)
        return cls(info.path, dims, found, props, arrays=arrays, tiff=tif)

    def _image(self) -> np.ndarray:
        """The decoded image (first call decodes it; later calls share it)."""
        with self._lock:
            if self._pixels is None:
                jpeg = self.properties.get("image.format") == "JPEG"
                self._pixels = to_rgb8(decode_image(self.path, jpeg, unlimited=True), self.path)
            return self._pixels

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._arrays is not None:
            return to_rgb8(np.asarray(self._arrays[level][y : y + h, x : x + w]), self.path)
        return self._image()[y : y + h, x : x + w]

    def _block_reads(self, level: int) -> bool:
        """A TIFF decoded tile by tile: blocks decode each tile once (`blocks.py`)."""
        return self._arrays is not None

    def _read_batches(
        self, locs: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int
    ) -> Iterator[np.ndarray]:
        """A decoded JPEG/PNG is in memory: copy slices straight into each batch, the batch
        split across `workers` threads (numpy releases the GIL for the copies, and the
        first touch of a fresh batch's pages is the cost that parallelises). Lazily decoded
        TIFFs decode tile by tile in the base class's thread pool."""
        if self._arrays is not None:
            yield from super()._read_batches(locs, level, size, batch_size, workers)
            return
        pixels = self._image()
        w, h = size

        def copy(out: np.ndarray, chunk: np.ndarray, part: slice) -> None:
            lh, lw = pixels.shape[:2]
            for i in range(*part.indices(len(chunk))):
                x, y = int(chunk[i, 0]), int(chunk[i, 1])
                if 0 <= x and 0 <= y and x + w <= lw and y + h <= lh:
                    out[i] = pixels[y : y + h, x : x + w]
                else:  # partly outside: white padding via the general path
                    out[i] = self.read_region((x, y), level, size)

        def batches(pool: ThreadPoolExecutor | None) -> Iterator[np.ndarray]:
            for first in range(0, len(locs), batch_size):
                chunk = locs[first : first + batch_size]
                out = np.empty((len(chunk), h, w, 3), dtype=np.uint8)
                n = 1 if pool is None else min(workers, len(chunk))
                if pool is None or n == 1:
                    copy(out, chunk, slice(None))
                else:  # contiguous runs of rows per thread; result() re-raises errors
                    step = -(-len(chunk) // n)
                    jobs = [pool.submit(copy, out, chunk, slice(s, s + step))
                            for s in range(0, len(chunk), step)]  # fmt: skip
                    for job in jobs:
                        job.result()
                yield out

        if workers <= 1 or batch_size < 2 * _MIN_ROWS_PER_THREAD:
            yield from batches(None)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-copy") as pool:
            yield from batches(pool)

    def thumbnail(self, max_size: int) -> np.ndarray:
        """JPEGs not yet decoded: libjpeg decodes at 1/2..1/8 scale (cheap); else the base."""
        self._check_open()
        jpeg = self.properties.get("image.format") == "JPEG"
        if not jpeg or self._arrays is not None or self._pixels is not None or max_size < 1:
            # Decided before Pillow's lock is taken: the base class decodes through
            # `_image`, which takes that (non-reentrant) lock itself.
            return super().thumbnail(max_size)
        from PIL import Image

        w0, h0 = self.dimensions
        with _pixel_limit(None), Image.open(self.path) as im:
            scale = max_size / max(w0, h0)
            im.draft("RGB", (max(1, int(w0 * scale)), max(1, int(h0 * scale))))
            small = to_rgb8(_pil_array(im), self.path)
        scale = max_size / max(small.shape[:2])
        if scale >= 1:
            return small
        return resize_rgb(
            small, max(1, round(small.shape[1] * scale)), max(1, round(small.shape[0] * scale))
        )

    def _close(self) -> None:
        self._pixels = None
        self._arrays = None
        tif = getattr(self, "_tiff", None)
        if tif is not None:
            tif.close()
            self._tiff = None


def decode_image(path: Path, jpeg: bool, unlimited: bool = False) -> np.ndarray:
    """Decode a whole image file. JPEGs go through libjpeg-turbo (imagecodecs) straight into
    one numpy array: half the peak memory of Pillow's image-then-copy, faster, and the GIL is
    released so threads decode in parallel. Other formats (and unusual JPEGs) use Pillow;
    `unlimited` lifts Pillow's decompression-bomb limit for this one file."""
    if jpeg:
        decoded = _turbo_jpeg(path)
        if decoded is not None:
            return decoded
    from PIL import Image

    with _pixel_limit(None) if unlimited else nullcontext(), Image.open(path) as im:
        im.load()
        return _pil_array(im)


def _turbo_jpeg(path: Path) -> np.ndarray | None:
    """The JPEG decoded by libjpeg-turbo, or None to let Pillow try."""
    try:
        import imagecodecs
    except ImportError:  # optional here: Pillow decodes JPEG too
        return None
    try:
        return imagecodecs.jpeg8_decode(path.read_bytes())
    except imagecodecs.Jpeg8Error:
        return None  # e.g. CMYK or arithmetic coding: let Pillow try


def _pil_array(im: PILImage) -> np.ndarray:
    """A Pillow image as a uint8 array, palette/CMYK/16-bit converted to RGB(A)."""
    mode = im.mode
    if mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    return np.asarray(im)


def _tiff_decodable(info: SourceInfo) -> str | None:
    """None when tifffile can decode the first pixel segment of every pyramid level."""
    import tifffile

    try:
        with tifffile.TiffFile(info.path) as tif:
            for level in info.tiff.levels:  # type: ignore[union-attr]
                page = tif.pages[level.index]
                offsets, counts = page.dataoffsets, page.databytecounts
                i = next((k for k, c in enumerate(counts) if c), None)
                if i is None:
                    continue
                tif.filehandle.seek(offsets[i])
                data = tif.filehandle.read(counts[i])
                page.decode(data, i, jpegtables=page.jpegtables)
    except Exception as exc:  # noqa: BLE001 - codec errors come in many types
        return f"tifffile cannot decode its pixels ({type(exc).__name__}: {exc})"
    return None

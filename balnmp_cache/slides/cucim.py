"""cuCIM backend: generic tiled TIFF, Aperio SVS, Philips TIFF; batched multi-location reads.

Only files whose structure `tiffprobe.cucim_support` accepts reach cuCIM: it aborts the
process on some TIFFs rather than raising. Opening and closing a `CuImage` is serialised by one
process-wide lock: two threads constructing images at once (the extraction loop opens the next
slide while the current one is encoded) crashed a run with SIGSEGV. cuCIM's C-level start-up
messages (cuFile probing for a GPU) go to stderr, and `cufile.log` to the temp folder, never
into the user's working directory. Batched reads use cuCIM's own multi-location
`read_region` (its worker threads decode tiles in C++, batches come back as arrays);
`device="cuda"` decodes on the GPU when one is present.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from balnmp_cache.errors import SlideError
from balnmp_cache.slides.base import Slide
from balnmp_cache.slides.mpp import tiff_mpp
from balnmp_cache.slides.tiffprobe import SourceInfo, cucim_support

__all__ = ["CuCIMSlide", "cucim_available", "cuda_available"]

_NATIVE_LOCK = threading.RLock()


@contextlib.contextmanager
def _native() -> Iterator[None]:
    """One thread at a time in cuCIM's import, open and close; C stdout goes to stderr."""
    with _NATIVE_LOCK:
        os.environ.setdefault(
            "CUFILE_LOGFILE_PATH", os.path.join(tempfile.gettempdir(), f"cufile-{os.getuid()}.log")
        )
        with contextlib.ExitStack() as stack:
            with contextlib.suppress(OSError, ValueError):  # no fd 1 or 2: nothing to redirect
                stack.enter_context(_stdout_to_stderr())
            yield


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        _libc_fflush()
        os.dup2(saved, 1)
        os.close(saved)


def _libc_fflush() -> None:
    """Flush C stdio buffers, so what cuCIM printf'd leaves while fd 1 is still stderr."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def cucim_available() -> str | None:
    """None when cuCIM imports, else why not."""
    try:
        with _native():
            import cucim  # noqa: F401
    except ImportError as exc:  # optional dependency (`pip install balnmp[cucim]`)
        return f"cuCIM is not installed ({exc})"
    return None


@functools.cache
def cuda_available() -> bool:
    """True when a CUDA device is usable (cuCIM can then decode on the GPU); asked once."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class CuCIMSlide(Slide):
    """A slide read through `cucim.CuImage`."""

    backend = "cucim"

    def __init__(self, path: Path, image: object, mpp: float | None, device: str) -> None:
        res = image.resolutions  # type: ignore[attr-defined]
        props = _flatten(image.metadata)  # type: ignore[attr-defined]
        super().__init__(
            path,
            level_dimensions=tuple(tuple(d) for d in res["level_dimensions"]),
            level_downsamples=_downsamples(res["level_dimensions"]),
            properties=props,
            mpp=mpp,
        )
        self._image = image
        self.device = device

    @classmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        if info.is_dir:
            return "a directory is not a cuCIM slide"
        if info.tiff is None:
            return "not a TIFF file (cuCIM reads tiled TIFF, SVS and Philips TIFF only)"
        return cucim_support(info.tiff) or cucim_available()

    @classmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> CuCIMSlide:
        with _native():
            # cucim's stub does not re-export CuImage; without cucim installed it is untyped
            from cucim import CuImage  # type: ignore[attr-defined, unused-ignore]

            image = CuImage(str(info.path))
        device = "cuda" if cuda_available() else "cpu"
        found = mpp if mpp is not None else tiff_mpp(info.tiff)
        slide = cls(info.path, image, found, device)
        if slide.level_count != len(info.tiff.levels):  # type: ignore[union-attr]
            slide.close()
            raise SlideError(
                info.path,
                f"cuCIM sees {slide.level_count} levels but the TIFF has "
                f"{len(info.tiff.levels)}; use backend='openslide'",  # type: ignore[union-attr]
            )
        return slide

    def _location0(self, lx: int, ly: int, level: int) -> tuple[int, int]:
        """A level-0 point that cuCIM maps (by flooring) onto level pixel (lx, ly): the
        middle of that pixel's footprint, robust to cuCIM's float32 downsample."""
        ds = self.level_downsamples[level]
        if ds == 1.0:
            return lx, ly
        return int(math.floor((lx + 0.5) * ds)), int(math.floor((ly + 0.5) * ds))

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        location = self._location0(x, y, level)
        region = self._on_device(
            lambda device: _to_host(
                self._image.read_region(location, (w, h), level, device=device)  # type: ignore[attr-defined]
            )
        )
        return _rgb(region)

    def _on_device(self, read: Callable[[str], Any]) -> Any:
        """Run `read` on this slide's device; if GPU decoding fails, fall back to the CPU
        for the rest of this slide's life (cuCIM's GPU path covers fewer codecs)."""
        if self.device == "cpu":
            return read("cpu")
        try:
            return read(self.device)
        except Exception as exc:  # noqa: BLE001 - any GPU decode failure: retry on the CPU
            self._fall_back_to_cpu(exc)
            return read("cpu")

    def _fall_back_to_cpu(self, exc: BaseException) -> None:
        warnings.warn(
            f"{self.path}: cuCIM GPU decoding failed ({exc}); decoding on the CPU",
            RuntimeWarning,
            stacklevel=4,
        )
        self.device = "cpu"

    def _block_reads(self, level: int) -> bool:
        """Decoding on the CPU: blocks (each tile decoded once, `blocks.py`). On the GPU,
        cuCIM's own batched reader (its decoded batches can stay on the device)."""
        return self.device == "cpu"

    def _tile_size(self, level: int) -> tuple[int, int] | None:
        sizes = self._image.resolutions.get("level_tile_sizes")  # type: ignore[attr-defined]
        if not sizes or level >= len(sizes) or min(sizes[level]) < 1:
            return None
        return int(sizes[level][0]), int(sizes[level][1])

    def _read_batches(
        self, locs: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int
    ) -> Iterator[np.ndarray]:
        ds = self.level_downsamples[level]
        origins, inside = self._level_origins(locs, level, size)
        starts = np.floor((origins + 0.5) * ds).astype(np.int64) if ds != 1.0 else origins
        if self._block_reads(level):

            def apart(idx: np.ndarray) -> Iterator[np.ndarray]:  # one cuCIM iterator
                return self._stream(starts[idx], level, size, batch_size, workers)

            yield from self._blocked_batches(locs, level, size, batch_size, workers, apart)
            return
        w, h = size
        if inside.all():  # one cuCIM iterator: its threads prefetch the next batches
            yield from self._stream(starts, level, size, batch_size, workers)
            return
        # cuCIM pads out-of-slide pixels black on generic TIFF: regions crossing the edge go
        # through read_region (white padding); the rest still stream through one iterator.
        stream = self._stream(starts[inside], level, size, batch_size, workers)
        pending = np.empty((0, h, w, 3), dtype=np.uint8)
        for first in range(0, len(locs), batch_size):
            mask = inside[first : first + batch_size]
            out = np.empty((len(mask), h, w, 3), dtype=np.uint8)
            need = int(mask.sum())
            while len(pending) < need:
                pending = np.concatenate([pending, next(stream)])
            out[mask], pending = pending[:need], pending[need:]
            for i in np.flatnonzero(~mask):
                x, y = locs[first + i]
                out[i] = self.read_region((int(x), int(y)), level, size)
            yield out

    def _stream(
        self, starts: np.ndarray, level: int, size: tuple[int, int], batch_size: int, workers: int
    ) -> Iterator[np.ndarray]:
        """Batches from one cuCIM multi-location iterator: its threads decode and prefetch
        `prefetch_factor` batches ahead, so memory stays at a few batches. If GPU decoding
        fails, the remaining locations are read on the CPU."""
        if len(starts) == 0:
            return
        self._check_open()
        w, h = size
        locations = [(int(x), int(y)) for x, y in starts]
        done = 0
        while done < len(locations):
            device = self.device
            try:
                batches = self._image.read_region(  # type: ignore[attr-defined]
                    locations[done:], (w, h), level, num_workers=max(workers, 1),
                    batch_size=batch_size, device=device,
                )  # fmt: skip
                for batch in batches:
                    # cuCIM recycles a batch's buffer once the iterator advances: callers
                    # that keep batches (list(), queues) need arrays that own their pixels.
                    if device != "cpu" and self.device_batches:
                        array: Any = _rgb_on_device(batch).reshape(-1, h, w, 3)
                    else:
                        array = np.array(_rgb(_to_host(batch)).reshape(-1, h, w, 3), copy=True)
                    done += len(array)
                    yield array
            except Exception as exc:
                if device != "cpu":
                    self._fall_back_to_cpu(exc)
                    continue
                reason = f"cuCIM batched read at level {level} failed: {exc}"
                raise SlideError(self.path, reason) from exc

    def _close(self) -> None:
        image = getattr(self, "_image", None)
        if image is not None:
            close = getattr(image, "close", None)
            if close is not None:
                with _native():
                    close()
            self._image = None


def _downsamples(dims: object) -> tuple[float, ...]:
    """OpenSlide's rule: the mean of the width and height ratios to level 0."""
    dims = [tuple(d) for d in dims]  # type: ignore[attr-defined]
    w0, h0 = dims[0]
    return tuple((w0 / w + h0 / h) / 2 for w, h in dims)


def _to_host(array: object) -> np.ndarray:
    """A cuCIM image (CPU or CUDA memory) as a host numpy array."""
    if hasattr(array, "__cuda_array_interface__"):
        try:
            import cupy

            return cupy.asnumpy(cupy.asarray(array))
        except ImportError:  # cupy is optional: torch understands the same interface
            import torch

            return torch.as_tensor(array, device="cuda").cpu().numpy()
    return np.asarray(array)


def _rgb_on_device(array: object) -> Any:
    """A batch cuCIM decoded on the GPU as an RGB uint8 CUDA tensor of its own (a copy made
    on the device: cuCIM reuses its buffer), through DLPack or `__cuda_array_interface__`."""
    import torch

    if isinstance(array, torch.Tensor):
        x = array
    elif hasattr(array, "__dlpack__"):
        x = torch.from_dlpack(array)
    else:
        x = torch.as_tensor(array, device="cuda")
    return rgb_tensor(x)


def rgb_tensor(x: Any) -> Any:
    """`_rgb` for a uint8 torch tensor (..., 3 or 4) on any device: RGBA composited on white
    with the same integer rounding; always a new tensor."""
    import torch

    if x.shape[-1] == 4:
        alpha = x[..., 3:4].int()
        rgb = (x[..., :3].int() * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.to(torch.uint8)
    return x[..., :3].clone(memory_format=torch.contiguous_format)


def _rgb(arr: np.ndarray) -> np.ndarray:
    if arr.shape[-1] == 4:  # composite RGBA on white
        alpha = arr[..., 3:4].astype(np.uint16)
        rgb = (arr[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _flatten(metadata: object, prefix: str = "") -> dict[str, str]:
    """cuCIM metadata (a JSON-like dict) flattened to `a.b.c` string keys."""
    if isinstance(metadata, str):
        import json

        try:
            metadata = json.loads(metadata)
        except ValueError:
            return {}
    out: dict[str, str] = {}
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out.update(_flatten(value, f"{name}."))
            else:
                out[name] = str(value)
    return out

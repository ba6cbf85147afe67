"""Small TIFF writers for the slide tests: every structure the readers must handle.

`write_tiff` writes Aperio-style or generic pyramids with any tifffile option (odd codecs,
predictors, strips, alpha, grey), so the tests can reach cuCIM's crash cases. Backend tests
parametrise over `SLIDE_BACKENDS` (the registry) and call `require_backend`, so a newly
registered reader is tested on every file it says it can serve, without editing a list.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from balnmp_cache.slides import SlideError, available_backends
from balnmp_cache.slides.registry import BACKENDS
from balnmp_cache.slides.tiffprobe import probe_source

__all__ = ["SLIDE_BACKENDS", "downsample", "pattern", "require_backend", "run_isolated",
           "write_tiff"]

SLIDE_BACKENDS = available_backends()


def require_backend(path: Path, backend: str) -> None:
    """Skip the test when `backend` says it cannot serve `path` (a folder reader given a TIFF,
    cuCIM not installed); `auto` always applies."""
    if backend == "auto":
        return
    reason = BACKENDS.get(backend).can_open(probe_source(Path(path), SlideError))
    if reason is not None:
        pytest.skip(f"backend {backend!r} cannot serve {Path(path).name}: {reason}")


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by an integer factor (ragged edge dropped), any channel count."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    view = image[: h * factor, : w * factor].reshape(h, factor, w, factor, *image.shape[2:])
    return view.mean(axis=(1, 3)).round().astype(image.dtype)


def pattern(height: int = 512, width: int = 768, seed: int = 0) -> np.ndarray:
    """Textured RGB test image: smooth gradients (JPEG-friendly), blocks, fine noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)),
                    ((xx + yy) * 3) % 256], axis=-1).astype(np.uint8)  # fmt: skip
    img[height // 4 : height // 2, width // 5 : width // 2] = (200, 40, 120)
    noise = rng.integers(-12, 13, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_tiff(
    path: Path,
    image: np.ndarray,
    compression: str | None = "lzw",
    levels: int = 3,
    tile: int | None = 64,
    svs: bool = False,
    mpp: float | None = 0.5,
    bigtiff: bool = False,
    **extra: Any,
) -> Path:
    """A pyramidal TIFF with any tifffile options (``extra`` applies to every level)."""
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for level in range(levels):
            data = image if level == 0 else downsample(image, 2**level)
            kw: dict[str, Any] = {"compression": compression, "metadata": None, **extra}
            kw.setdefault("photometric", "rgb" if data.ndim == 3 else "minisblack")
            if tile:
                kw["tile"] = (tile, tile)
            if level == 0 and svs:
                kw["description"] = (
                    f"Aperio Image Library v12.0.15 \r\n{image.shape[1]}x{image.shape[0]} "
                    f"({tile}x{tile})|AppMag = 20|MPP = {mpp}"
                )
            if level > 0 and not svs:
                kw["subfiletype"] = 1
            if mpp and not svs:
                kw["resolution"] = (1e4 / (mpp * 2**level),) * 2
                kw["resolutionunit"] = "CENTIMETER"
            tw.write(data, **kw)
    return path


def run_isolated(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a native crash there cannot take pytest down."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )

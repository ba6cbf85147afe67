"""Write tiled, pyramidal TIFF / Aperio-SVS files with tifffile.

Used by the synthetic demo cohort and by tests that need real slide files: the output opens
in OpenSlide (vendor `aperio` or `generic-tiff`), cuCIM and tifffile. Levels are
successive pages (as in Aperio SVS), each half the size of the previous one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from balnmp_cache.errors import OptionError

__all__ = ["COMPRESSIONS", "downsample_mean", "write_pyramidal_tiff"]

APERIO_HEADER = "Aperio Image Library v12.0.15"


@dataclass(frozen=True)
class _Codec:
    """How one compression name maps onto tifffile arguments."""

    tiff_name: str | None
    label: str
    args: Callable[[int], dict[str, Any] | None]


# Registry: compression name -> tifffile arguments (quality only matters for JPEG).
COMPRESSIONS: dict[str, _Codec] = {
    # tifffile stores JPEG tiles as YCbCr 4:2:0 (photometric 6); OpenSlide and cuCIM both
    # decode it, identically.
    "jpeg": _Codec("jpeg", "JPEG", lambda q: {"level": int(q)}),
    "lzw": _Codec("lzw", "LZW", lambda q: None),
    "deflate": _Codec("deflate", "Deflate", lambda q: None),
    "adobe_deflate": _Codec("adobe_deflate", "Deflate", lambda q: None),
    # zstd: OpenSlide reads it; cuCIM (26.x) does not.
    "zstd": _Codec("zstd", "ZSTD", lambda q: None),
    "none": _Codec(None, "RAW", lambda q: None),
}


def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample of an (H, W, C) uint8 array by an integer `factor`.

    Output is (H // factor, W // factor, C); the ragged right/bottom edge is dropped, as
    Aperio does. Sums strided views into one accumulator of the output size, so memory is
    one level copy and no full-size temporary.
    """
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    if h < 1 or w < 1:
        raise ValueError(f"image {image.shape[:2]} is too small to downsample by {factor}")
    acc_dtype = np.uint16 if factor <= 16 else np.uint32
    acc = np.zeros((h, w, *image.shape[2:]), dtype=acc_dtype)
    for i in range(factor):
        for j in range(factor):
            acc += image[i : i + h * factor : factor, j : j + w * factor : factor]
    n = factor * factor
    acc += n // 2
    acc //= n
    return acc.astype(np.uint8)


def _aperio_description(
    width: int,
    height: int,
    level_size: tuple[int, int] | None,
    tile: int,
    codec: _Codec,
    quality: int,
    mpp: float | None,
    app_mag: float | None,
    filename: str,
) -> str:
    """Aperio ImageDescription: header line, then `key = value` fields split by `|`."""
    if level_size is None:
        geometry = f"{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) {codec.label}/RGB"
        if codec.label == "JPEG":
            geometry += f" Q={quality}"
    else:
        geometry = f"{width}x{height} -> {level_size[0]}x{level_size[1]} - ({tile}x{tile})"
    fields = [f"{APERIO_HEADER} \r\n{geometry}"]
    if app_mag is not None:
        fields.append(f"AppMag = {app_mag:g}")
    if mpp is not None:
        fields.append(f"MPP = {mpp:.6g}")
    fields.append("ScanScope ID = BALNMP-SYNTHETIC")
    fields.append(f"Filename = {filename}")
    return "|".join(fields)


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    mpp: float | None = 0.5,
    levels: int = 3,
    tile: int = 256,
    compression: str = "jpeg",
    svs: bool = True,
    app_mag: float | None = None,
    quality: int = 90,
) -> Path:
    """Write `image` (H, W, 3) uint8 as a tiled pyramidal TIFF and return the path.

    `levels` pages, each downsampled 2x from the input. `svs=True` writes an Aperio
    ImageDescription (`AppMag`/`MPP`) on level 0, so OpenSlide reports `openslide.mpp-x`
    and `aperio.AppMag`; `svs=False` writes a plain tiled TIFF whose
    XResolution/YResolution (ResolutionUnit CENTIMETER) carry `mpp`. `app_mag` defaults to
    10 / mpp (0.5 µm/px -> 20x). The file is written to a temporary name and renamed into
    place, so a reader never sees a half-written slide.
    """
    path = Path(path)
    image = np.asarray(image)
    codec = _check_args(path, image, mpp, levels, tile, compression, quality)
    if app_mag is None and mpp is not None:
        app_mag = round(10.0 / mpp, 3)
    page = _Page(image.shape[1], image.shape[0], tile, codec, quality, mpp, app_mag, svs,
                 path.name)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as writer:
            for level in range(levels):
                data = downsample_mean(image, 2**level)
                writer.write(data, **page.kwargs(level, data))
                del data
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_args(path: Path, image: np.ndarray, mpp: float | None, levels: int, tile: int,
                compression: str, quality: int) -> _Codec:  # fmt: skip
    """Refuse what cannot be written (naming the file); returns the codec."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OptionError(
            f"{path}: image must be (H, W, 3) uint8, got shape {image.shape} {image.dtype}"
        )
    codec = COMPRESSIONS.get(compression)
    if codec is None:
        raise OptionError(
            f"{path}: unknown compression {compression!r}; choose one of {sorted(COMPRESSIONS)}"
        )
    if tile < 16 or tile % 16:
        raise OptionError(f"{path}: tile must be a positive multiple of 16, got {tile}")
    if levels < 1:
        raise OptionError(f"{path}: levels must be >= 1, got {levels}")
    if mpp is not None and not mpp > 0:
        raise OptionError(f"{path}: mpp must be positive or None, got {mpp}")
    height, width = image.shape[:2]
    if min(height, width) >> (levels - 1) < 1:
        raise OptionError(
            f"{path}: a {width}x{height} image cannot hold {levels} levels; use fewer levels"
        )
    if not 1 <= quality <= 100:
        raise OptionError(f"{path}: JPEG quality must be in 1..100, got {quality}")
    return codec


@dataclass(frozen=True)
class _Page:
    """What every page of one file shares; `kwargs` gives tifffile's arguments per level."""

    width: int
    height: int
    tile: int
    codec: _Codec
    quality: int
    mpp: float | None
    app_mag: float | None
    svs: bool
    filename: str

    def kwargs(self, level: int, data: np.ndarray) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "tile": (self.tile, self.tile),
            "photometric": "rgb",
            "compression": self.codec.tiff_name,
            "compressionargs": self.codec.args(self.quality),
            "metadata": None,
        }
        if self.svs:
            size = None if level == 0 else (data.shape[1], data.shape[0])
            kwargs["description"] = _aperio_description(
                self.width, self.height, size, self.tile, self.codec, self.quality, self.mpp,
                self.app_mag, self.filename,
            )  # fmt: skip
        elif level > 0:
            # Generic TIFF readers (OpenSlide, cuCIM) need reduced levels marked as
            # reduced-resolution subfiles; Aperio files keep type 0.
            kwargs["subfiletype"] = 1
        if self.mpp is not None:
            per_cm = 1e4 / (self.mpp * 2**level)
            kwargs["resolution"] = (per_cm, per_cm)
            kwargs["resolutionunit"] = "CENTIMETER"
        return kwargs

"""OpenSlide backend: everything OpenSlide 4 reads (SVS, NDPI, MRXS, SCN, DICOM WSI, Ventana,
generic tiled TIFF, ...). Batched reads go through a thread pool: OpenSlide handles are
thread-safe for `read_region` and release the GIL while decoding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from balnmp_cache.errors import SlideError
from balnmp_cache.slides.base import Slide
from balnmp_cache.slides.mpp import mpp_from_properties, tiff_mpp
from balnmp_cache.slides.tiffprobe import SourceInfo

__all__ = ["OpenSlideSlide", "composite_on_white"]


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(h, w, 4) straight-alpha RGBA -> (h, w, 3) RGB over a white background."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return rgb.astype(np.uint8)


def _target(info: SourceInfo) -> Path | None:
    """The file to hand OpenSlide: the path itself, or for a DICOM WSI series folder, any of
    its .dcm files (OpenSlide finds the rest of the series)."""
    if not info.is_dir:
        return info.path
    return next(iter(sorted(info.path.glob("*.dcm"))), None)


class OpenSlideSlide(Slide):
    """A slide read through `openslide.OpenSlide`."""

    backend = "openslide"

    def __init__(self, path: Path, handle: object, mpp: float | None) -> None:
        super().__init__(
            path,
            level_dimensions=handle.level_dimensions,  # type: ignore[attr-defined]
            level_downsamples=handle.level_downsamples,  # type: ignore[attr-defined]
            properties=dict(handle.properties),  # type: ignore[attr-defined]
            mpp=mpp,
        )
        self._handle = handle

    @classmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        if info.tiff is not None and info.tiff.subifds:
            return "its pyramid is stored in SubIFDs, which OpenSlide does not read"
        target = _target(info)
        if target is None:
            return "a folder without DICOM files is not an OpenSlide slide (MRXS: pass the .mrxs)"
        try:
            import openslide
        except ImportError as exc:
            return f"OpenSlide is not installed ({exc})"
        try:
            vendor = openslide.OpenSlide.detect_format(str(target))
        except Exception as exc:  # noqa: BLE001 - the C library reports many kinds of failure
            return f"OpenSlide cannot inspect it ({exc})"
        return None if vendor else "not a format OpenSlide recognises"

    @classmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> OpenSlideSlide:
        import openslide

        try:
            handle = openslide.OpenSlide(str(_target(info)))
        except openslide.OpenSlideError as exc:
            raise SlideError(info.path, f"OpenSlide cannot open it: {exc}") from exc
        if mpp is None:
            mpp = mpp_from_properties(handle.properties)
            if mpp is None and info.tiff is not None:
                mpp = tiff_mpp(info.tiff)
        return cls(info.path, handle, mpp)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # OpenSlide places level-0 point x at x / ds and interpolates fractions; the nearest
        # level-0 point is exact whenever ds is an integer (every power-of-two pyramid).
        location = (int(round(x * ds)), int(round(y * ds)))
        region = self._handle.read_region(location, level, (w, h))  # type: ignore[attr-defined]
        return composite_on_white(np.asarray(region))

    def _block_reads(self, level: int) -> bool:
        """Blocks where a level pixel is a level-0 point exactly (integer downsample): the
        same pixels as region by region, one OpenSlide call for many patches."""
        ds = self.level_downsamples[level]
        return ds == round(ds)

    def _close(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()
            self._handle = None

"""Tissue detection on a slide thumbnail.

Saturation-based Otsu threshold with morphology, run on a low-resolution RGB thumbnail
(a few to tens of µm per pixel). Glass is bright and grey, black background and black ink are
dark, green/blue pen is a hue that H&E never produces; stained tissue is the saturated rest.

The same integer-exact pipeline runs on NumPy/SciPy (CPU) or on CuPy/cupyx.scipy.ndimage (the
array backend of cucim.skimage) on a CUDA device, so both give the same mask.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from balnmp_cache.errors import OptionError, TilingError

__all__ = ["PRESETS", "TissueParams", "gpu_available", "tissue_mask"]


@dataclass(frozen=True)
class TissueParams:
    """Tissue-detection settings; sizes are in µm (converted with the thumbnail's µm/px).

    Colour thresholds are on the 0..255 scale of HSV value/saturation (S = 255*(max-min)/max).
    """

    name: str = "biopsy"
    mask_mpp: float = 8.0  # µm/px of the thumbnail the mask is computed on
    max_mask_side: int = 8192  # longest thumbnail side, whatever the slide size
    median_um: float = 24.0  # median smoothing of the saturation channel (3 px at mask_mpp)
    sat_margin: int = 6  # tissue is at least this much more saturated than the glass
    sat_cap: int = 15  # never require more than glass + this (keeps faint tissue)
    glass_percentile: float = 90.0  # pixels this bright (HSV value) are taken as glass
    dark_value: int = 60  # HSV value below this: black background or black ink
    green_hue: tuple[float, float] = (70.0, 180.0)  # degrees; green/cyan pen
    green_min_sat: int = 40
    blue_hue: tuple[float, float] = (180.0, 240.0)  # degrees; blue pen (H&E purple is > 250)
    blue_min_sat: int = 90
    pen_margin_um: float = 16.0  # ink and its anti-aliased rim are dropped this far around
    close_um: float = 16.0  # closing radius: joins fragments split by pale gaps
    min_object_um2: float = 4_000.0  # drop specks smaller than this
    max_hole_um2: float = 4_000.0  # fill holes up to this size (lumens, tears)


PRESETS: dict[str, TissueParams] = {
    # Core-needle biopsies: thin (~1 mm), fragmented cores; keep small pieces.
    "biopsy": TissueParams(),
    # Surgical resections: large contiguous sections; ignore crumbs and fill larger holes.
    "resection": TissueParams(
        name="resection",
        mask_mpp=16.0,
        median_um=48.0,
        close_um=48.0,
        min_object_um2=60_000.0,
        max_hole_um2=200_000.0,
    ),
}


def get_params(tissue: str | TissueParams) -> TissueParams:
    """Resolve a preset name (or pass a TissueParams through); unknown names list the presets."""
    if isinstance(tissue, TissueParams):
        return tissue
    try:
        return PRESETS[tissue]
    except KeyError:
        raise OptionError(
            f"unknown tissue preset {tissue!r} (--tissue); choose one of {', '.join(PRESETS)}"
        ) from None


# --------------------------------------------------------------------------- array backends


@dataclass(frozen=True)
class _ArrayBackend:
    """Array module + ndimage namespace; the mask pipeline only calls through these."""

    xp: Any
    ndi: Any
    to_numpy: Callable[[Any], np.ndarray]


def _numpy_backend() -> _ArrayBackend:
    import scipy.ndimage as ndi

    return _ArrayBackend(np, ndi, np.asarray)


def _cupy_backend() -> _ArrayBackend:
    import cupy
    import cupyx.scipy.ndimage as ndi

    return _ArrayBackend(cupy, ndi, cupy.asnumpy)


_BACKENDS: dict[str, Callable[[], _ArrayBackend]] = {"cpu": _numpy_backend, "cuda": _cupy_backend}


@functools.cache
def gpu_available() -> bool:
    """True when CuPy is importable and sees a CUDA device (checked once)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "use the CPU"
        return False


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if gpu_available() else "cpu"
    if device not in _BACKENDS:
        raise OptionError(f"tissue_mask device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    return device


# --------------------------------------------------------------------------- helpers


def _px(um: float, mpp: float) -> float:
    return um / mpp


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram: values > threshold are the upper class.

    Exact in float64 (no pixels: 255; one value: 0). Not scikit-image's `threshold_otsu`:
    it casts the counts to float32 and, on thumbnails of millions of pixels, picks another
    threshold in about one case of eight (tests/test_tissue.py).
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return 255
    levels = np.arange(hist.size, dtype=np.float64)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mu_t = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def _hsv_parts(be: _ArrayBackend, rgb: Any) -> tuple[Any, Any, Any]:
    """Value and saturation (uint8/uint16, 0..255) and hue (float32 degrees, -1 for grey)."""
    xp = be.xp
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    vmax = xp.maximum(xp.maximum(red, green), blue)
    delta = vmax - xp.minimum(xp.minimum(red, green), blue)  # uint8: max >= min
    sat = (delta.astype(xp.uint16) * 255) // xp.maximum(vmax, 1).astype(xp.uint16)
    r, g, b = (c.astype(xp.float32) for c in (red, green, blue))
    d = xp.maximum(delta, 1).astype(xp.float32)
    sixty = xp.float32(60.0)
    hue = xp.where(
        vmax == red,
        sixty * ((g - b) / d),
        xp.where(vmax == green, sixty * ((b - r) / d) + xp.float32(120.0),
                 sixty * ((r - g) / d) + xp.float32(240.0)),
    )
    hue = xp.where(hue < 0, hue + xp.float32(360.0), hue)
    hue = xp.where(delta == 0, xp.float32(-1.0), hue)  # grey has no hue
    return vmax, sat, hue


# Up to this radius a disk footprint is cheaper than a distance transform (same result).
_FOOTPRINT_MAX_RADIUS = 3


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def _dilate(be: _ArrayBackend, mask: Any, radius: int) -> Any:
    """Dilation by a disk of `radius` px (all pixels within that Euclidean distance). Large
    radii use an exact distance transform: O(pixels) instead of O(pixels * r^2)."""
    if radius <= 0 or not bool(mask.any()):
        return mask
    if radius <= _FOOTPRINT_MAX_RADIUS:
        return be.ndi.binary_dilation(mask, be.xp.asarray(_disk(radius)))
    return be.ndi.distance_transform_edt(~mask) <= math.sqrt(radius * radius + 0.5)


def _erode(be: _ArrayBackend, mask: Any, radius: int) -> Any:
    """Erosion by a disk; the outside of the image counts as foreground."""
    if radius <= 0 or bool(mask.all()):
        return mask
    if radius <= _FOOTPRINT_MAX_RADIUS:
        return be.ndi.binary_erosion(mask, be.xp.asarray(_disk(radius)), border_value=1)
    return be.ndi.distance_transform_edt(mask) > math.sqrt(radius * radius + 0.5)


def _closing(be: _ArrayBackend, mask: Any, radius: int) -> Any:
    """Binary closing by a disk that does not erode objects touching the image border."""
    if radius <= 0:
        return mask
    pad = radius + 1
    padded = be.xp.pad(mask, pad, mode="constant", constant_values=False)
    return _erode(be, _dilate(be, padded, radius), radius)[pad:-pad, pad:-pad]


# Devillard's 19 compare-exchanges that leave the median of 9 values in slot 4.
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
            (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median(be: _ArrayBackend, img: Any, size: int) -> Any:
    """Median over `size` x `size` windows, edges replicated (scipy's mode="nearest").
    Edge-preserving and exact, so CPU and GPU agree; 3 x 3 (the presets at their mask
    resolution) runs as a sorting network, several times faster than a rank filter."""
    if size <= 1:
        return img
    if size != 3:
        return be.ndi.median_filter(img, size=size, mode="nearest")
    h, w = img.shape
    padded = be.xp.pad(img, 1, mode="edge")
    v = [padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]
    for i, j in _MEDIAN9:
        v[i], v[j] = be.xp.minimum(v[i], v[j]), be.xp.maximum(v[i], v[j])
    return v[4]


def _component_sizes(be: _ArrayBackend, mask: Any, structure: np.ndarray) -> tuple[Any, Any]:
    labels, _ = be.ndi.label(mask, structure=be.xp.asarray(structure))
    return labels, be.xp.bincount(labels.ravel())


def _remove_small_objects(be: _ArrayBackend, mask: Any, min_px: float) -> Any:
    if min_px <= 1 or not bool(mask.any()):
        return mask
    labels, sizes = _component_sizes(be, mask, np.ones((3, 3), bool))
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(be: _ArrayBackend, mask: Any, max_px: float) -> Any:
    if max_px < 1:
        return mask
    xp = be.xp
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    labels, sizes = _component_sizes(be, ~mask, cross)
    border = xp.unique(
        xp.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    )
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


# --------------------------------------------------------------------------- the mask


def tissue_mask(
    rgb: Any,
    params: TissueParams | str = PRESETS["biopsy"],
    *,
    mpp: float | None = None,
    device: str = "auto",
) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail (H, W, 3) uint8.

    `mpp` is the thumbnail's µm/px (defaults to `params.mask_mpp`) and converts the
    µm sizes of `params` to pixels. `device`: "auto" (CUDA when CuPy sees a device),
    "cpu" or "cuda"; both give the same mask.
    """
    params = get_params(params)
    arr = rgb if hasattr(rgb, "__cuda_array_interface__") else np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise TilingError(f"tissue_mask needs an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TilingError(f"tissue_mask needs a uint8 image, got {arr.dtype}")
    mpp = float(mpp) if mpp else params.mask_mpp
    resolved = _resolve_device(device)
    if resolved == "cpu" and hasattr(arr, "get"):
        arr = arr.get()  # a CuPy thumbnail asked to run on the CPU
    be = _BACKENDS[resolved]()
    return be.to_numpy(_mask(be, be.xp.asarray(arr[..., :3]), params, mpp)).astype(bool)


def _floor_cap(
    be: _ArrayBackend, value: Any, sat: Any, clean: Any, p: TissueParams
) -> tuple[int, int]:
    """Threshold bounds from the glass: the saturation of the brightest pixels (tinted or
    yellowish glass raises both) plus a margin; the cap keeps faint tissue above it."""
    xp = be.xp
    vals = value[clean]
    if vals.size == 0:
        return 255, 255
    vhist = be.to_numpy(xp.bincount(vals.ravel(), minlength=256))
    cum = np.cumsum(vhist)
    bright = int(np.searchsorted(cum, cum[-1] * p.glass_percentile / 100.0))
    shist = be.to_numpy(xp.bincount(sat[clean & (value >= bright)].ravel(), minlength=256))
    scum = np.cumsum(shist)
    glass = int(np.searchsorted(scum, scum[-1] / 2.0)) if scum[-1] else 0
    floor = glass + p.sat_margin
    return floor, max(floor, glass + p.sat_cap)


def _mask(be: _ArrayBackend, rgb: Any, p: TissueParams, mpp: float) -> Any:
    xp = be.xp
    value, sat, hue = _hsv_parts(be, rgb)

    green = (hue >= p.green_hue[0]) & (hue < p.green_hue[1]) & (sat >= p.green_min_sat)
    blue = (hue >= p.blue_hue[0]) & (hue < p.blue_hue[1]) & (sat >= p.blue_min_sat)
    ink = green | blue | (value < p.dark_value)
    margin = int(round(_px(p.pen_margin_um, mpp)))
    ink = _dilate(be, ink, margin)

    size = int(round(_px(p.median_um, mpp)))
    size = size + 1 - size % 2  # odd window
    smooth = _median(be, sat.astype(xp.uint8), size)
    clean = ~ink
    hist = be.to_numpy(xp.bincount(smooth[clean].ravel(), minlength=256))
    floor, cap = _floor_cap(be, value, smooth, clean, p)
    thresh = min(max(otsu_threshold(hist), floor), cap)
    mask = (smooth > thresh) & ~ink

    area = mpp * mpp
    mask = _closing(be, mask, int(round(_px(p.close_um, mpp))))
    mask = _fill_small_holes(be, mask, p.max_hole_um2 / area)
    mask &= ~ink
    return _remove_small_objects(be, mask, p.min_object_um2 / area)


def mask_downsample_for(
    dims: tuple[int, int],
    slide_mpp: float | None,
    patch_size_level0: float,
    params: TissueParams,
) -> float:
    """Level-0 px per mask px: `params.mask_mpp` when µm/px is known, but at least 8 mask
    px per patch side and never a mask side above `params.max_mask_side`."""
    finest = max(dims) / params.max_mask_side
    per_patch = patch_size_level0 / 8.0
    wanted = params.mask_mpp / slide_mpp if slide_mpp else patch_size_level0 / 16.0
    return max(1.0, finest, min(wanted, per_patch))


def thumbnail_size(dims: tuple[int, int], downsample: float) -> int:
    """Longest thumbnail side for a given level-0 → mask downsample."""
    return max(1, int(math.ceil(max(dims) / downsample)))

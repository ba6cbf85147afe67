"""Cheap smooth random fields for the synthetic renderer (coarse noise, blurred, upsampled)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["noise_1d", "smooth_noise", "upsample_linear"]


def _upsample_axis(a: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear interpolation by an integer factor along one axis, by broadcasting (no gather)."""
    a = np.moveaxis(a, axis, 0)
    w = ((np.arange(factor, dtype=np.float32) + 0.5) / factor).reshape(
        (1, factor) + (1,) * (a.ndim - 1)
    )
    lo, hi = a[:-1, None], a[1:, None]
    out = lo + (hi - lo) * w
    out = out.reshape(((a.shape[0] - 1) * factor, *a.shape[1:]))
    return np.moveaxis(out, 0, axis)


def upsample_linear(field: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a coarse 2-D field by `factor`, cropped to `shape`.

    The coarse grid needs `ceil(n / factor) + 1` samples per axis to cover `n`.
    """
    out = field.astype(np.float32, copy=False)
    for axis, n in enumerate(shape):
        if out.shape[axis] < -(-n // factor) + 1:
            raise ValueError(f"coarse field {field.shape} too small for {shape} at {factor}x")
        out = _upsample_axis(out, factor, axis)
    return np.ascontiguousarray(out[: shape[0], : shape[1]])


def coarse_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """Shape of the coarse grid that `upsample_linear` needs to cover `shape`."""
    return (-(-shape[0] // factor) + 1, -(-shape[1] // factor) + 1)


def smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale_px: float,
    anisotropy: float = 1.0,
) -> np.ndarray:
    """Smooth random field (unit variance) with features of ~`scale_px` at `shape`.

    `anisotropy` > 1 stretches the features along x (fibres along the core).
    """
    field = rng.standard_normal(shape).astype(np.float32)
    sigma = max(scale_px / 3.0, 0.5)
    field = ndimage.gaussian_filter(field, (sigma, sigma * anisotropy), mode="wrap")
    field /= field.std() + 1e-6
    return field


def noise_1d(rng: np.random.Generator, n: int, scales: tuple[float, ...]) -> np.ndarray:
    """Sum of smooth 1-D noises with the given feature scales (px), unit-variance each."""
    out = np.zeros(n, dtype=np.float64)
    for scale in scales:
        x = ndimage.gaussian_filter1d(rng.standard_normal(n), max(scale / 3.0, 0.5), mode="wrap")
        out += x / (x.std() + 1e-9)
    return out

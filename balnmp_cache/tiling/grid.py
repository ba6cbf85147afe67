"""The patch grid: where to read patches, at which pyramid level, and which ones to keep.

Positions are laid out in physical units (µm) from the slide's top-left corner, so the same
tissue scanned at 40x and at 20x gives patches at the same places. Each patch is read at the
best pyramid level (the coarsest one not coarser than the target, with a small tolerance)
with `read_size` px and resized to `patch_size` by the encoder pipeline when they differ.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from balnmp_cache.errors import TilingError
from balnmp_cache.tiling.annotations import Annotations, load_annotations
from balnmp_cache.tiling.tissue import (
    TissueParams,
    get_params,
    mask_downsample_for,
    thumbnail_size,
    tissue_mask,
)

if TYPE_CHECKING:
    from balnmp_cache.slides.base import Slide

__all__ = ["PatchGrid", "ReadPlan", "TilingError", "plan_read", "tile_slide"]

# A level up to this much coarser than the target µm/px is still used (then resized up):
# 40x Aperio scans are 0.2520..0.2530 µm/px, whose level 1 is a hair coarser than 0.5.
LEVEL_TOLERANCE = 0.025


@dataclass(frozen=True)
class ReadPlan:
    """How to read one patch: `read_size` px at `level`, resized to `patch_size`."""

    level: int
    read_size: int
    patch_size: int
    patch_size_level0: int
    target_mpp: float | None
    slide_mpp: float | None
    downsample: float
    level0_per_px: float  # level-0 px per output px (exact, unrounded)

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.patch_size


@dataclass
class PatchGrid:
    """Kept patches of one slide: top-left level-0 `coords` (N, 2) int64 and their tissue
    (or tumour-and-tissue) fraction; the mask they were chosen on is kept for QC. For a
    folder of patches, `patch_files` (N,) str names each kept row's file (else None)."""

    coords: np.ndarray
    plan: ReadPlan
    tissue_fraction: np.ndarray
    slide_id: str
    stride_level0: int
    tissue_mask: np.ndarray | None
    mask_downsample: float
    annotations: str | None
    tissue: str
    regions: Annotations | None = None  # the loaded annotations, for QC pictures
    patch_files: np.ndarray | None = None

    def __len__(self) -> int:
        return int(len(self.coords))


def _slide_name(slide: Slide) -> str:
    return f"slide '{getattr(slide, 'slide_id', '?')}' ({getattr(slide, 'path', '?')})"


def plan_read(
    slide: Slide, patch_size: int = 256, mpp: float | None = 0.5, level: int | None = None
) -> ReadPlan:
    """Pick the pyramid level and read size for `patch_size` px at `mpp` µm/px.

    `level` given: read `patch_size` px at that level as is (no µm/px needed).
    `mpp=None` and no level: level 0, native resolution.
    """
    if int(patch_size) < 1:
        raise TilingError(f"patch_size must be a positive number of pixels, got {patch_size}")
    patch_size = int(patch_size)
    slide_mpp = float(slide.mpp) if slide.mpp else None
    fixed = getattr(slide, "fixed_coords", None)
    if fixed is not None:
        if slide.fixed_patch_size is None:
            raise TilingError(f"{_slide_name(slide)} lists patch positions but no patch size")
        fixed_size = int(slide.fixed_patch_size)
        scale = fixed_size / patch_size
        return ReadPlan(0, fixed_size, patch_size, fixed_size,
                        slide_mpp * scale if slide_mpp else None,
                        slide_mpp, 1.0, scale)
    if level is None and mpp is None:
        level = 0
    if level is not None:
        return _plan_at_level(slide, patch_size, int(level), slide_mpp)
    if mpp is None or not mpp > 0:
        raise TilingError(f"target µm/px must be positive, got {mpp}")
    if slide_mpp is None:
        raise TilingError(
            f"{_slide_name(slide)} has no µm/px in its metadata, so {mpp} µm/px patches cannot "
            "be planned: give the slide's µm/px in an overrides CSV (columns slide_id,mpp; "
            "extract-features --mpp-overrides FILE; open_slide(path, mpp=...) in Python), or "
            "tile a fixed pyramid level with --level N (level=N)"
        )
    scale = float(mpp) / slide_mpp
    if scale < 1.0 / (1.0 + LEVEL_TOLERANCE):
        warnings.warn(
            f"{_slide_name(slide)} is scanned at {slide_mpp} µm/px, coarser than the target "
            f"{mpp} µm/px: patches are upsampled {1 / scale:.2f}x",
            stacklevel=2,
        )
    downsamples = [float(d) for d in slide.level_downsamples]
    usable = [i for i, d in enumerate(downsamples) if d <= scale * (1.0 + LEVEL_TOLERANCE)]
    best = max(usable, key=lambda i: downsamples[i]) if usable else 0
    ps0 = patch_size * scale
    read_size = max(1, int(round(ps0 / downsamples[best])))
    return ReadPlan(best, read_size, patch_size, int(round(ps0)), float(mpp), slide_mpp,
                    downsamples[best], scale)


def _plan_at_level(slide: Slide, patch_size: int, level: int, slide_mpp: float | None) -> ReadPlan:
    if not 0 <= level < slide.level_count:
        raise TilingError(
            f"{_slide_name(slide)} has levels 0..{slide.level_count - 1}; level {level} "
            "does not exist"
        )
    ds = float(slide.level_downsamples[level])
    return ReadPlan(level, patch_size, patch_size, int(round(patch_size * ds)),
                    slide_mpp * ds if slide_mpp else None, slide_mpp, ds, ds)


def grid_positions(dims: tuple[int, int], stride0: float) -> np.ndarray:
    """All top-left positions `round(i * stride0)` inside the slide, (N, 2) int64 (x, y)."""
    w, h = int(dims[0]), int(dims[1])
    xs = np.round(np.arange(math.ceil(w / stride0)) * stride0).astype(np.int64)
    ys = np.round(np.arange(math.ceil(h / stride0)) * stride0).astype(np.int64)
    gx, gy = np.meshgrid(xs[xs < w], ys[ys < h])
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def box_fractions(mask: np.ndarray, boxes: np.ndarray, ds: float) -> np.ndarray:
    """Fraction of each level-0 box (x0, y0, x1, y1) covered by `mask` (a pixel covers
    [c*ds, (c+1)*ds)); exact for partial pixels, area outside the mask counts as empty."""
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def at(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Bilinear interpolation of the integral image is the exact area integral.
        u = np.clip(u, 0, w)
        v = np.clip(v, 0, h)
        u0 = np.minimum(np.floor(u).astype(np.int64), w - 1) if w else u.astype(np.int64)
        v0 = np.minimum(np.floor(v).astype(np.int64), h - 1) if h else v.astype(np.int64)
        fu, fv = u - u0, v - v0
        i00, i01 = integral[v0, u0], integral[v0, u0 + 1]
        i10, i11 = integral[v0 + 1, u0], integral[v0 + 1, u0 + 1]
        return (i00 * (1 - fu) * (1 - fv) + i01 * fu * (1 - fv) + i10 * (1 - fu) * fv
                + i11 * fu * fv)

    b = np.asarray(boxes, dtype=np.float64) / ds
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = at(b[:, 2], b[:, 3]) - at(b[:, 0], b[:, 3]) - at(b[:, 2], b[:, 1]) + at(
        b[:, 0], b[:, 1]
    )
    return (inside / np.maximum(area, 1e-12)).astype(np.float32)


def slide_tissue_mask(
    slide: Slide, params: TissueParams, patch_size_level0: float
) -> tuple[np.ndarray, float]:
    """Tissue mask on a thumbnail resized to exactly ceil(W/ds) x ceil(H/ds); returns
    (mask, ds) where mask pixel (r, c) covers level-0 [c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)."""
    dims = (int(slide.dimensions[0]), int(slide.dimensions[1]))
    ds = mask_downsample_for(dims, slide.mpp, patch_size_level0, params)
    tw, th = max(1, math.ceil(dims[0] / ds)), max(1, math.ceil(dims[1] / ds))
    thumb = np.asarray(slide.thumbnail(thumbnail_size(dims, ds)))[..., :3]
    if thumb.shape[:2] != (th, tw):
        thumb = np.asarray(Image.fromarray(thumb).resize((tw, th), Image.Resampling.BILINEAR))
    mask_mpp = slide.mpp * ds if slide.mpp else None
    return tissue_mask(thumb, params, mpp=mask_mpp), ds


def _as_annotations(annotations: str | Path | Annotations | None) -> Annotations | None:
    if annotations is None or isinstance(annotations, Annotations):
        return annotations
    return load_annotations(annotations)


def _fixed_grid(slide: Slide, plan: ReadPlan, annotated: bool) -> PatchGrid:
    """A folder of pre-cut patches: every cell, in the slide's order, with its file name."""
    if annotated:
        warnings.warn(f"{_slide_name(slide)} is a folder of pre-cut patches: annotations ignored",
                      stacklevel=3)  # fmt: skip
    coords = np.asarray(slide.fixed_coords, dtype=np.int64).reshape(-1, 2)
    files = getattr(slide, "fixed_files", None)
    if files is not None and len(files) != len(coords):
        raise TilingError(f"{_slide_name(slide)} names {len(files)} patch files for "
                          f"{len(coords)} patches")
    return PatchGrid(coords, plan, np.ones(len(coords), np.float32), slide.slide_id,
                     plan.patch_size_level0, None, 1.0, None, "none",
                     patch_files=None if files is None else np.asarray(files, dtype=str))


def tile_slide(
    slide: Slide,
    patch_size: int = 256,
    mpp: float | None = 0.5,
    annotations: str | Path | Annotations | None = None,
    min_tissue: float = 0.5,
    level: int | None = None,
    overlap: int = 0,
    tissue: str | TissueParams = "biopsy",
) -> PatchGrid:
    """Patches of `patch_size` px at `mpp` µm/px whose tissue fraction is at least
    `min_tissue` (and > 0); with `annotations` the fraction counts only tissue inside the
    tumour (positive minus negative regions). `overlap` is in output px. Patch-folder
    slides return their own coordinates unchanged."""
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise TilingError(f"min_tissue must be within [0, 1], got {min_tissue}")
    if not 0 <= int(overlap) < int(patch_size):
        raise TilingError(f"overlap must be in [0, patch_size={patch_size}), got {overlap}")
    plan = plan_read(slide, patch_size, mpp, level)
    regions = _as_annotations(annotations)
    ann_name = regions.describe() if regions is not None else None
    params = get_params(tissue)
    stride0 = (plan.patch_size - int(overlap)) * plan.level0_per_px
    if getattr(slide, "fixed_coords", None) is not None:
        return _fixed_grid(slide, plan, regions is not None)

    mask, ds = slide_tissue_mask(slide, params, plan.level0_per_px * plan.patch_size)
    region = mask
    if regions is not None:
        region = mask & regions.rasterize(mask.shape, ds)
    positions = grid_positions(slide.dimensions, stride0)
    ps0 = plan.patch_size * plan.level0_per_px
    fractions = np.zeros(0, np.float32)
    if len(positions) and region.any():
        boxes = np.hstack([positions, positions + ps0])
        fractions = box_fractions(region, boxes, ds)
        keep = (fractions >= float(min_tissue)) & (fractions > 0)
        positions, fractions = positions[keep], fractions[keep]
    else:
        positions = positions[:0]
    return PatchGrid(
        coords=np.ascontiguousarray(positions, dtype=np.int64).reshape(-1, 2),
        plan=plan,
        tissue_fraction=fractions.astype(np.float32),
        slide_id=str(slide.slide_id),
        stride_level0=int(round(stride0)),
        tissue_mask=mask,
        mask_downsample=float(ds),
        annotations=ann_name,
        tissue=params.name,
        regions=regions,
    )

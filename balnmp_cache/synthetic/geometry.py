"""Shapes of a synthetic core-needle biopsy: the tissue core, its fragments, the annotated
tumour polygon and the grid cells that carry the planted signal.

All coordinates are pixels at the rendering resolution; (x, y) = (column, row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from balnmp_cache.synthetic.noise import noise_1d

__all__ = [
    "BiopsyPlan",
    "CoreGeometry",
    "cell_fractions",
    "cells_mask",
    "choose_signal_cells",
    "plan_biopsy",
    "polygon_area",
    "polygon_mask",
    "tissue_core_mask",
]


@dataclass
class CoreGeometry:
    """An elongated core along x: centre line, half width per column and break lines."""

    height: int
    width: int
    centre_y: np.ndarray  # (width,) float
    half_width: np.ndarray  # (width,) float, 0 outside the core, end caps rounded
    roughness_px: float
    breaks: list[tuple[float, float, float]] = field(default_factory=list)  # (x, slope, gap)


@dataclass
class BiopsyPlan:
    """Geometry of one slide: the core and the tumour polygon (int vertices, (x, y))."""

    core: CoreGeometry
    tumour_polygon: np.ndarray  # (V, 2) int64


def _core(rng: np.random.Generator, height: int, width: int, mpp: float) -> CoreGeometry:
    x0 = width * rng.uniform(0.03, 0.06)
    x1 = width - width * rng.uniform(0.03, 0.06)
    length = x1 - x0
    rough = 5.0 / mpp
    hw = height * rng.uniform(0.31, 0.36)
    amp = max(0.0, min(height * 0.06, height / 2 - hw * 1.06 - 0.03 * height - 2 * rough))
    amp *= rng.uniform(0.2, 1.0)
    x = np.arange(width, dtype=np.float64)
    wave = 2 * np.pi * (x - x0) / (length * rng.uniform(0.8, 2.0)) + rng.uniform(0, 2 * np.pi)
    centre = height / 2 + amp * np.sin(wave)
    half = hw * (1 + 0.05 * np.sin(2 * np.pi * x / (length * rng.uniform(0.3, 0.7)) + 1.3))
    cap = hw
    t = np.clip(np.minimum(x - x0, x1 - x) / cap, 0.0, 1.0)
    half = half * np.sqrt(1 - (1 - t) ** 2)
    half[(x < x0) | (x > x1)] = 0.0
    return CoreGeometry(height, width, centre, half, rough)


def _full_width_span(core: CoreGeometry) -> tuple[float, float]:
    """The columns where the core has its full width (outside the rounded end caps)."""
    inside = np.nonzero(core.half_width > 0)[0]
    x0, x1 = float(inside[0]), float(inside[-1])
    cap = float(core.half_width.max())
    return x0 + cap, x1 - cap


def plan_biopsy(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    tumour_area_px: float,
    fragments: int = 1,
    mpp: float = 0.5,
) -> BiopsyPlan:
    """Draw a core (`fragments` pieces) and a tumour polygon of about `tumour_area_px`.

    The tumour keeps a margin of stroma to the core's edge (more than the edge roughness),
    so the polygon lies inside the tissue; it is shortened when the core is too small.
    """
    core = _core(rng, height, width, mpp)
    lo, hi = _full_width_span(core)
    hw = float(np.median(core.half_width[int(lo) : int(hi) + 1]))
    margin = 3 * core.roughness_px + 12.0 / mpp
    inner = max(hw - margin, 4.0)
    bulge = 0.35 * inner
    room = hi - lo - 2 * bulge
    length = float(np.clip(tumour_area_px / (2 * inner), 0.1 * room, 0.9 * room))
    tx0 = lo + bulge + rng.uniform(0, room - length)
    tx1 = tx0 + length
    poly = _tumour_outline(rng, core, tx0, length, inner, bulge, margin, mpp)
    _break_core(rng, core, lo, (tx0 - bulge, tx1 + bulge), fragments, mpp)
    return BiopsyPlan(core, np.rint(poly).astype(np.int64))


def _tumour_outline(rng: np.random.Generator, core: CoreGeometry, tx0: float, length: float,
                    inner: float, bulge: float, margin: float, mpp: float) -> np.ndarray:  # fmt: skip
    """The tumour polygon over `length` columns from `tx0`: jittered top and bottom edges
    `margin` inside the core, joined by rounded end caps that bulge `bulge` px beyond."""
    tx1 = tx0 + length
    width = core.width
    n = max(6, int(length / (40.0 / mpp)))
    xs = np.linspace(tx0, tx1, n)
    ix = np.clip(xs.astype(np.intp), 0, width - 1)
    jitter_top = np.abs(np.convolve(rng.normal(0, 1, n + 4), np.ones(5) / 5, "valid"))
    jitter_bot = np.abs(np.convolve(rng.normal(0, 1, n + 4), np.ones(5) / 5, "valid"))
    top = core.centre_y[ix] - core.half_width[ix] + margin + jitter_top * 0.15 * inner
    bot = core.centre_y[ix] + core.half_width[ix] - margin - jitter_bot * 0.15 * inner
    cap_angles = np.linspace(-np.pi / 2, np.pi / 2, 5)[1:-1]

    def end_cap(xe: float, side: int) -> np.ndarray:
        cy = core.centre_y[int(np.clip(xe, 0, width - 1))]
        half = inner * 0.9
        pts = [
            (xe + side * bulge * rng.uniform(0.6, 1.0) * np.cos(a), cy + side * half * np.sin(a))
            for a in cap_angles
        ]
        return np.array(pts)

    return np.concatenate(
        [
            np.column_stack([xs, top]),
            end_cap(tx1, +1),
            np.column_stack([xs[::-1], bot[::-1]]),
            end_cap(tx0, -1),  # bottom to top: the outline never crosses itself
        ]
    )


def _break_core(rng: np.random.Generator, core: CoreGeometry, lo: float,
                tumour: tuple[float, float], fragments: int, mpp: float) -> None:  # fmt: skip
    """Add `fragments - 1` slanted breaks through the core, clear of the tumour columns
    `tumour` (the slant shifts a break by up to |slope| * half width at the core's edges)."""
    inside = np.nonzero(core.half_width > 0)[0]
    cap = lo - inside[0]
    left, right = inside[0] + 0.3 * cap, inside[-1] - 0.3 * cap
    hw_max = float(core.half_width.max())
    for _ in range(max(0, fragments - 1)):
        slope, gap = rng.uniform(-0.5, 0.5), rng.uniform(30.0, 80.0) / mpp
        clear = abs(slope) * hw_max + gap / 2 + 20.0 / mpp
        spans = [(left, tumour[0] - clear), (tumour[1] + clear, right)]
        spans = [s for s in spans if s[1] - s[0] > 20.0 / mpp]
        if not spans:
            break
        a, b = spans[int(rng.integers(len(spans)))]
        core.breaks.append((rng.uniform(a, b), slope, gap))


def tissue_core_mask(
    rng: np.random.Generator, height: int, width: int, geometry: CoreGeometry | None = None
) -> np.ndarray:
    """Boolean (height, width) mask of an irregular, elongated biopsy core (or its pieces).

    The ragged edges are 1-D noises along the top and bottom borders (cheap: no full-size
    random field), at two scales.
    """
    g = geometry if geometry is not None else _core(rng, height, width, mpp=0.5)
    def edge_noise() -> np.ndarray:
        coarse = noise_1d(rng, width, (5 * g.roughness_px,))
        return g.roughness_px * (0.8 * coarse + 0.3 * noise_1d(rng, width, (2 * g.roughness_px,)))

    top_edge = g.centre_y - g.half_width + edge_noise()
    bottom_edge = g.centre_y + g.half_width - edge_noise()
    y = np.arange(height, dtype=np.float32)[:, None]
    mask = (y >= top_edge.astype(np.float32)[None, :]) & (
        y <= bottom_edge.astype(np.float32)[None, :]
    )
    mask &= (g.half_width > 0)[None, :]
    if g.breaks:
        x = np.arange(width, dtype=np.float32)[None, :]
        centre = g.centre_y.astype(np.float32)[None, :]
        for xb, slope, gap in g.breaks:
            mask &= np.abs(x - np.float32(xb) - np.float32(slope) * (y - centre)) >= gap / 2
    return mask


def polygon_mask(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise a polygon given as (x, y) vertices into a boolean mask of `shape`."""
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in vertices], fill=1)
    return np.asarray(canvas, dtype=bool)


def polygon_area(vertices: np.ndarray) -> float:
    """Shoelace area of a polygon (px²)."""
    x, y = vertices[:, 0].astype(np.float64), vertices[:, 1].astype(np.float64)
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def cell_fractions(mask: np.ndarray, cell: int) -> np.ndarray:
    """Fraction of each `cell` x `cell` grid cell (origin 0, 0) covered by `mask`."""
    h, w = mask.shape
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((rows * cell, cols * cell), dtype=np.uint8)
    padded[:h, :w] = mask
    return padded.reshape(rows, cell, cols, cell).mean(axis=(1, 3))


def choose_signal_cells(
    rng: np.random.Generator,
    candidates: np.ndarray,
    fraction: float,
    cluster_size: tuple[int, int] = (2, 4),
) -> list[tuple[int, int]]:
    """Pick about `fraction` of the candidate cells (bool grid) in small connected clusters.

    Clusters keep several neighbouring patches abnormal, so the signal survives a patch
    grid that is not aligned with the cells. At least one cell when `fraction` > 0.
    """
    cand = {(int(r), int(c)) for r, c in zip(*np.nonzero(candidates))}
    if not cand or fraction <= 0:
        return []
    target = max(1, int(round(fraction * len(cand))))
    chosen: list[tuple[int, int]] = []
    free = sorted(cand)
    while len(chosen) < target and free:
        seed = free[int(rng.integers(len(free)))]
        cluster = [seed]
        size = int(rng.integers(cluster_size[0], cluster_size[1] + 1))
        while len(cluster) < size and len(chosen) + len(cluster) < target:
            r, c = cluster[int(rng.integers(len(cluster)))]
            nbrs = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))]
            nbrs = [p for p in nbrs if p in cand and p not in cluster and p not in chosen]
            if not nbrs:
                break
            cluster.append(nbrs[int(rng.integers(len(nbrs)))])
        chosen.extend(cluster)
        taken = set(chosen)
        free = [p for p in free if p not in taken]
    return sorted(chosen)


def cells_mask(cells: list[tuple[int, int]], cell: int, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the union of grid cells given as (row, col)."""
    mask = np.zeros(shape, dtype=bool)
    for r, c in cells:
        mask[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = True
    return mask

"""QC pictures: what the tiler saw and kept, one PNG per slide.

Thumbnail, tissue-mask outline (green), tumour annotation outline (red; cut-out regions
dashed), kept patch boxes (blue) and a title with the read plan. People look at these before
trusting a feature cache: a wrong µm/px, a pen mark taken as tissue or a shifted annotation
shows at a glance.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from balnmp_cache.slides.base import Slide
    from balnmp_cache.tiling.grid import PatchGrid

__all__ = ["save_qc"]

TISSUE_COLOUR = "#1a9e3a"
TUMOUR_COLOUR = "#d7191c"
PATCH_COLOUR = "#2b6cd6"


def _title(grid: PatchGrid) -> str:
    plan = grid.plan
    target = f"{plan.target_mpp:g} µm/px" if plan.target_mpp else f"level {plan.level} native"
    scan = f"{plan.slide_mpp:g} µm/px" if plan.slide_mpp else "µm/px unknown"
    lines = [
        f"{grid.slide_id} — {len(grid)} patches of {plan.patch_size} px at {target}",
        f"scan {scan}, read level {plan.level} ({plan.read_size} px"
        f"{' → resized' if plan.needs_resize else ''}), tissue: {grid.tissue}",
    ]
    if grid.annotations:
        lines.append(f"annotations: {Path(grid.annotations).name}")
    return "\n".join(lines)


def _draw_tissue(ax: Axes, grid: PatchGrid, scale: float) -> bool:
    mask = grid.tissue_mask
    if mask is None or min(mask.shape) < 2 or not mask.any():
        return False
    ds = grid.mask_downsample * scale
    # Pad so outlines close at the border; centres of mask pixels sit at (c + 0.5) * ds.
    padded = np.pad(mask.astype(np.float32), 1)
    xs = (np.arange(padded.shape[1]) - 0.5) * ds
    ys = (np.arange(padded.shape[0]) - 0.5) * ds
    ax.contour(xs, ys, padded, levels=[0.5], colors=TISSUE_COLOUR, linewidths=1.2)
    return True


def _draw_regions(ax: Axes, grid: PatchGrid, scale: float) -> bool:
    regions = grid.regions
    if regions is None or regions.is_empty:
        return False
    for polys, style in ((regions.positive, "-"), (regions.negative, "--")):
        rings = [np.vstack([r, r[:1]]) * scale for p in polys for r in p.rings]
        if rings:
            ax.add_collection(LineCollection(rings, colors=TUMOUR_COLOUR, linewidths=1.6,
                                             linestyles=style))
    return True


def _draw_patches(ax: Axes, grid: PatchGrid, scale: float, display_per_px: float) -> None:
    if not len(grid):
        return
    size = grid.plan.patch_size_level0 * scale
    width = float(np.clip(size * display_per_px / 25.0, 0.3, 1.5))  # thin lines for tiny boxes
    x = grid.coords[:, 0] * scale
    y = grid.coords[:, 1] * scale
    boxes = np.stack([np.c_[x, y], np.c_[x + size, y], np.c_[x + size, y + size],
                      np.c_[x, y + size]], axis=1)
    ax.add_collection(PolyCollection(list(boxes), facecolors=PATCH_COLOUR + "22",
                                     edgecolors=PATCH_COLOUR, linewidths=width))


def save_qc(slide: Slide, grid: PatchGrid, out_png: str | Path, max_size: int = 1200) -> Path:
    """Write the QC picture of `grid` on `slide` to `out_png` (atomically); returns it."""
    out_png = Path(out_png)
    thumb = np.asarray(slide.thumbnail(max_size))[..., :3]
    w0 = slide.dimensions[0]
    scale = thumb.shape[1] / w0  # thumbnail px per level-0 px

    th, tw = thumb.shape[:2]
    width_in, header_in = 9.0, 0.62
    height_in = width_in * th / tw + header_in
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.005, 0.005, 0.99, 1.0 - header_in / height_in - 0.01), anchor="N")
    ax.imshow(thumb, interpolation="antialiased")
    handles = []
    if _draw_tissue(ax, grid, scale):
        handles.append(Line2D([], [], color=TISSUE_COLOUR, label="tissue"))
    if _draw_regions(ax, grid, scale):
        handles.append(Line2D([], [], color=TUMOUR_COLOUR, label="tumour annotation"))
    _draw_patches(ax, grid, scale, width_in * 72.0 / tw)
    if len(grid):
        handles.append(Line2D([], [], color=PATCH_COLOUR, marker="s", linestyle="",
                              markerfacecolor="none", label="kept patch"))
    ax.set_xlim(0, tw)
    ax.set_ylim(th, 0)
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.85)
    fig.suptitle(_title(grid), fontsize=9, x=0.01, ha="left", y=0.995, va="top")

    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    # A 256-colour palette keeps a QC picture around 100-300 KB instead of > 1 MB.
    image = Image.fromarray(rgba[..., :3]).quantize(colors=256, method=Image.Quantize.MEDIANCUT)

    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG", optimize=True)
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png

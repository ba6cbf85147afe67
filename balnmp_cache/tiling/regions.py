"""BCNB's pre-cut patches placed back on their whole-slide image.

BCNB's `paper_patches/<id>/<id>_<r>_<x>_<y>.jpg` were cut by the official preprocessing
(bupt-ai-cz/BALNMP `code_preprocessing/cut_tumor_regions.py`, then `cut_patches.py`): tumour
region `r` is the bounding box of the `r`-th polygon in the `"positive"` list of `WSIs/<id>.json`
(its top-left corner is the smallest x and the smallest y of the polygon's vertices), cropped
from the whole-slide JPEG at full resolution, padded with white on the right and bottom to a
multiple of the patch size, and cut into patches; `(x, y)` is a patch's offset inside that crop.
So a patch's top-left corner on the whole-slide image is its region's corner plus `(x, y)`.

The region index is the polygon's position in the raw file, so the corners are read from the
JSON as written (no polygon is repaired or dropped first, which would renumber the regions).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from balnmp_cache.errors import AnnotationError
from balnmp_cache.slides.patches import parse_patch_name

__all__ = ["region_origins", "wsi_coords"]


def region_origins(path: str | Path) -> np.ndarray:
    """(R, 2) int64 top-left corners `(min x, min y)` of the `"positive"` polygons of a BCNB /
    BALNMP annotation file, in file order."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"cannot read the tumour regions of {path} ({exc})") from exc
    items = doc.get("positive") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise AnnotationError(
            f"{path} is not a BCNB region file (a JSON object whose \"positive\" list holds "
            "the tumour polygons the patches were cut from, as WSIs/<id>.json)")
    corners = []
    for i, item in enumerate(items):
        try:
            pts = np.asarray(item["vertices"], dtype=np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(f"{path}: positive[{i}] has no readable 'vertices' list of "
                                  f"[x, y] pairs ({exc})") from exc
        if not len(pts) or not np.isfinite(pts).all():
            raise AnnotationError(f"{path}: positive[{i}] has no finite vertices")
        corners.append(np.floor(pts.min(axis=0)))
    return np.asarray(corners, dtype=np.int64).reshape(-1, 2)


def wsi_coords(patch_files: Sequence[str], origins: np.ndarray, where: str) -> np.ndarray:
    """(N, 2) int64 whole-slide top-left corners of patches named `<id>_<r>_<x>_<y>.<ext>`:
    region `r`'s corner in `origins` plus `(x, y)`. `where` names the slide in errors."""
    out = np.empty((len(patch_files), 2), dtype=np.int64)
    for i, name in enumerate(patch_files):
        parsed = parse_patch_name(str(name))
        region = None if parsed is None else parsed[0]
        if parsed is None or region is None:
            raise AnnotationError(
                f"{where}: patch file {name!r} is not named <id>_<region>_<x>_<y> as BCNB's "
                "paper_patches are, so its place on the whole-slide image is unknown; draw "
                "the heatmap on the patch folder itself (pass the folder as SLIDE)")
        _, x, y = parsed
        if region >= len(origins):
            raise AnnotationError(
                f"{where}: patch file {name!r} is from tumour region {region}, but the region "
                f"file has {len(origins)} positive polygon(s); pass the WSIs/<id>.json the "
                "patches were cut from (--annotations)")
        out[i] = origins[region] + (x, y)
    return out

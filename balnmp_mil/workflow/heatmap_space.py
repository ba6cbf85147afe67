"""Where a heatmap's patches lie on the slide it is drawn on.

A bag's coordinates are the level-0 pixels of the slide it was extracted from. The one case
where the slide drawn on is another file is BCNB: features extracted from the pre-cut
`paper_patches/<id>/` folder, drawn on the whole-slide JPEG `WSIs/<id>.jpg`. Those patches'
file names give their offsets inside their tumour region's bounding box, and
`WSIs/<id>.json` gives the boxes (`balnmp_cache.tiling.regions`, imported lazily here, as
every slide-side module of the heatmap), so each patch is moved to its place on the JPEG.
Drawing such a bag on the patch folder itself (SLIDE = the folder) needs no move.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from balnmp_mil.errors import InputError

__all__ = ["PATCH_READER", "region_file", "slide_coords"]

PATCH_READER = "patches"  # the `reader` attribute of a slide extracted from a patch folder


def _from_patch_folder(attrs: dict) -> bool:
    return attrs.get("reader") == PATCH_READER


def region_file(slide_id: str, slide: Path, annotations: str | Path | None,
                source: object) -> Path:
    """The BCNB region file for `slide_id`: `--annotations` (a file, or a folder holding
    `<id>.json`), else `<id>.json` beside SLIDE."""
    if annotations is not None:
        path = Path(annotations)
        candidate = path / f"{slide_id}.json" if path.is_dir() else path
        if not candidate.is_file():
            raise InputError(f"--annotations {path}: no region file {candidate.name} for "
                             f"slide {slide_id} (BCNB's WSIs/{slide_id}.json)")
        return candidate
    candidate = slide.parent / f"{slide_id}.json"
    if candidate.is_file():
        return candidate
    raise InputError(
        f"slide {slide_id}: its features come from the folder of patches {source}, whose "
        f"coordinates are offsets inside each tumour region, not pixels of {slide}; to draw "
        f"them on {slide.name}, put its region file {slide_id}.json (BCNB's WSIs/"
        f"{slide_id}.json) beside it or pass --annotations FILE|DIR, or pass the patch folder "
        "itself as SLIDE")


def slide_coords(slide_id: str, slide: Path, coords: np.ndarray, attrs: dict,
                 patch_files: np.ndarray | None, annotations: str | Path | None
                 ) -> tuple[np.ndarray, Path | None]:
    """The bag's coordinates on SLIDE, and the region file used to move them (None when the
    stored coordinates are SLIDE's own)."""
    if not _from_patch_folder(attrs) or slide.is_dir():
        return coords, None
    regions = region_file(slide_id, slide, annotations, attrs.get("source_path"))
    if patch_files is None:
        raise InputError(
            f"slide {slide_id}: the store was written before balnmp recorded each patch's file "
            "name, so its patches cannot be placed on the whole-slide image; extract the patch "
            "folders again into a new store (extract-features PATCH_FOLDERS --out NEW_STORE), "
            "or pass the patch folder itself as SLIDE")
    from balnmp_cache.tiling.regions import region_origins, wsi_coords

    return wsi_coords(list(patch_files), region_origins(regions), f"slide {slide_id}"), regions

"""Where to read: tissue masks, tumour annotations and the patch grid at a target µm/px.

`grid.tile_slide` plans the patches; `tissue` finds tissue on a thumbnail; `annotations` and
`polygons` read and rasterise tumour outlines; `qc` draws what was tiled, for a human to check.
Names are imported on first use, so reading the tissue presets does not load matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balnmp_cache._registry import lazy_face

if TYPE_CHECKING:
    from balnmp_cache.errors import AnnotationError, TilingError
    from balnmp_cache.tiling.annotations import (
        Annotations,
        AnnotationWarning,
        Polygon,
        find_annotation,
        load_annotations,
    )
    from balnmp_cache.tiling.grid import PatchGrid, ReadPlan, plan_read, tile_slide
    from balnmp_cache.tiling.qc import save_qc
    from balnmp_cache.tiling.regions import region_origins, wsi_coords
    from balnmp_cache.tiling.tissue import PRESETS, TissueParams, tissue_mask

_EXPORTS = {
    "PRESETS": "balnmp_cache.tiling.tissue",
    "AnnotationError": "balnmp_cache.errors",
    "AnnotationWarning": "balnmp_cache.tiling.annotations",
    "Annotations": "balnmp_cache.tiling.annotations",
    "PatchGrid": "balnmp_cache.tiling.grid",
    "Polygon": "balnmp_cache.tiling.annotations",
    "ReadPlan": "balnmp_cache.tiling.grid",
    "TilingError": "balnmp_cache.errors",
    "TissueParams": "balnmp_cache.tiling.tissue",
    "find_annotation": "balnmp_cache.tiling.annotations",
    "load_annotations": "balnmp_cache.tiling.annotations",
    "plan_read": "balnmp_cache.tiling.grid",
    "region_origins": "balnmp_cache.tiling.regions",
    "save_qc": "balnmp_cache.tiling.qc",
    "tile_slide": "balnmp_cache.tiling.grid",
    "tissue_mask": "balnmp_cache.tiling.tissue",
    "wsi_coords": "balnmp_cache.tiling.regions",
}

__all__ = [
    "PRESETS",
    "AnnotationError",
    "AnnotationWarning",
    "Annotations",
    "PatchGrid",
    "Polygon",
    "ReadPlan",
    "TilingError",
    "TissueParams",
    "find_annotation",
    "load_annotations",
    "plan_read",
    "region_origins",
    "save_qc",
    "tile_slide",
    "tissue_mask",
    "wsi_coords",
]


__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

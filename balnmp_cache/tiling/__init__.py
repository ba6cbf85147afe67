"""Where to read: tissue masks, tumour annotations and the patch grid at a target µm/px.

`grid.tile_slide` plans the patches; `tissue` finds tissue on a thumbnail; `annotations` and
`polygons` read and rasterise tumour outlines; `qc` draws what was tiled, for a human to check.
"""

from __future__ import annotations

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
from balnmp_cache.tiling.tissue import PRESETS, TissueParams, tissue_mask

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
    "save_qc",
    "tile_slide",
    "tissue_mask",
]

"""The feature store: per-slide bags of patch embeddings on disk, and the cohort loader.

`FeatureStore` fronts every registered format (`backend.BACKENDS`: per-slide HDF5 and Zarr,
CLAM and TRIDENT caches, packs); `load_bags` is the one loader the MIL stage uses;
`export.export_store` writes a store in CLAM's or TRIDENT's own layout. This folder
is all that `balnmp_mil` may import of `balnmp_cache`, with the slide-id rule
(`balnmp_cache.slides.ids`). Formats are described in docs/format.md.
"""

from __future__ import annotations

from balnmp_cache.errors import MissingSlideError, StoreError
from balnmp_cache.store.backend import (
    BACKENDS,
    StoreBackend,
    infer_format,
    register_backend,
    writable_formats,
)
from balnmp_cache.store.feature_store import FeatureStore
from balnmp_cache.store.load import StoreWarning, check_cohort, load_bags
from balnmp_cache.store.types import (
    COMMON_ATTRS,
    COORDS_ATTRS,
    FEATURE_DTYPES,
    KNOWN_ATTRS,
    Bag,
    PackedBags,
    SlideInfo,
    SlideWriter,
)

__all__ = [
    "BACKENDS",
    "COMMON_ATTRS",
    "COORDS_ATTRS",
    "FEATURE_DTYPES",
    "KNOWN_ATTRS",
    "Bag",
    "FeatureStore",
    "MissingSlideError",
    "PackedBags",
    "SlideInfo",
    "SlideWriter",
    "StoreBackend",
    "StoreError",
    "StoreWarning",
    "check_cohort",
    "infer_format",
    "load_bags",
    "register_backend",
    "writable_formats",
]

"""balnmp_cache: whole-slide images -> cached patch embeddings (stage 1 of balnmp).

Public names are imported lazily so that `import balnmp_cache.store` (used by the MIL stage)
does not pull in slide readers, cuCIM or OpenSlide. The folders are the architecture (see
docs/architecture.md): `slides`, `tiling`, `encoders` -> `store` -> `extract` -> `cli`, with
`synthetic` apart.
"""

# No `from __future__ import annotations` here: it would bind a package attribute named
# `annotations` that shadows the old `balnmp_cache.annotations` module path.

from balnmp_cache import _compat
from balnmp_cache._registry import lazy_face
from balnmp_cache._version import __version__

_compat.install()

_EXPORTS = {
    "open_slide": "balnmp_cache.slides",
    "Slide": "balnmp_cache.slides",
    "SlideError": "balnmp_cache.errors",
    "BalnmpError": "balnmp_cache.errors",
    "tile_slide": "balnmp_cache.tiling",
    "PatchGrid": "balnmp_cache.tiling",
    "extract_features": "balnmp_cache.extract",
    "FeatureStore": "balnmp_cache.store",
    "Bag": "balnmp_cache.store",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

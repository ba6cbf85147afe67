"""Reading slides: `open_slide`, the `Slide` every backend serves, and the backend registry.

One module per backend (`cucim`, `openslide`, `image`, `patches`); a new one is a `Slide`
subclass registered with `register_backend`. `ids` holds the slide-id rule both stages share.
Names are imported on first use, so `balnmp_mil` can use `slides.ids` without loading readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balnmp_cache._registry import lazy_face

if TYPE_CHECKING:
    from balnmp_cache.errors import SlideError
    from balnmp_cache.slides.base import Slide, default_workers
    from balnmp_cache.slides.ids import SLIDE_SUFFIXES, slide_id_from_path
    from balnmp_cache.slides.mpp import load_mpp_overrides
    from balnmp_cache.slides.registry import (
        BACKENDS,
        available_backends,
        open_slide,
        register_backend,
    )

_EXPORTS = {
    "BACKENDS": "balnmp_cache.slides.registry",
    "SLIDE_SUFFIXES": "balnmp_cache.slides.ids",
    "Slide": "balnmp_cache.slides.base",
    "SlideError": "balnmp_cache.errors",
    "available_backends": "balnmp_cache.slides.registry",
    "default_workers": "balnmp_cache.slides.base",
    "load_mpp_overrides": "balnmp_cache.slides.mpp",
    "open_slide": "balnmp_cache.slides.registry",
    "register_backend": "balnmp_cache.slides.registry",
    "slide_id_from_path": "balnmp_cache.slides.ids",
}

__all__ = [
    "BACKENDS",
    "SLIDE_SUFFIXES",
    "Slide",
    "SlideError",
    "available_backends",
    "default_workers",
    "load_mpp_overrides",
    "open_slide",
    "register_backend",
    "slide_id_from_path",
]


__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

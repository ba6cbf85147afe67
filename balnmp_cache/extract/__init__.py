"""Extraction: the resumable batch job that turns slides into a feature store.

`options` declares every option of a job (`ExtractOptions`); `job` finds the slides and shards
them; `run` is one device's loop; `workers` runs one loop per device; `slide_job` decides and
claims one slide, `slide_prep` opens and tiles it, `feed` encodes and writes the slides in
flight; `pipeline` overlaps reading, encoding and writing; `manifest`,
`locks` and `sharding` are its bookkeeping. Names are imported on first use, so the command
line can build its options (`extract.options`) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balnmp_cache._registry import lazy_face

if TYPE_CHECKING:
    from balnmp_cache.errors import ExtractError
    from balnmp_cache.extract.job import (
        ExtractSummary,
        extract_features,
        find_slides,
        run_extraction,
    )
    from balnmp_cache.extract.options import ExtractOptions
    from balnmp_cache.extract.slide_job import SlideFailure, SlideResult

_EXPORTS = {
    "ExtractError": "balnmp_cache.errors",
    "ExtractOptions": "balnmp_cache.extract.options",
    "ExtractSummary": "balnmp_cache.extract.job",
    "SlideFailure": "balnmp_cache.extract.slide_job",
    "SlideResult": "balnmp_cache.extract.slide_job",
    "extract_features": "balnmp_cache.extract.job",
    "find_slides": "balnmp_cache.extract.job",
    "run_extraction": "balnmp_cache.extract.job",
}

__all__ = [
    "ExtractError",
    "ExtractOptions",
    "ExtractSummary",
    "SlideFailure",
    "SlideResult",
    "extract_features",
    "find_slides",
    "run_extraction",
]


__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

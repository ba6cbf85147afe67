"""Extraction: the resumable batch job that turns slides into a feature store.

`job` finds the slides and shards them; `run` is one device's loop; `workers` runs one loop per
device; `slide_job` is one slide (open, tile, encode, write); `pipeline` overlaps reading,
encoding and writing; `manifest`, `locks` and `sharding` are its bookkeeping.
"""

from __future__ import annotations

from balnmp_cache.errors import ExtractError
from balnmp_cache.extract.job import ExtractSummary, extract_features, find_slides
from balnmp_cache.extract.slide_job import SlideFailure, SlideResult

__all__ = [
    "ExtractError",
    "ExtractSummary",
    "SlideFailure",
    "SlideResult",
    "extract_features",
    "find_slides",
]

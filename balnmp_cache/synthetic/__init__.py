"""A synthetic BALNMP-style cohort: H&E-like biopsy slides, tumour annotations, a clinical table
and the ground truth of a planted signal, for the demo and the tests (`python -m
balnmp_cache.synthetic`). Stands apart: it imports nothing else of `balnmp_cache`, and nothing
but the demo and tests import it.
"""

from __future__ import annotations

from balnmp_cache.synthetic.cli import main
from balnmp_cache.synthetic.cohort import (
    RENDER_MPP,
    CohortConfig,
    DemoCohort,
    make_demo_cohort,
    render_tissue,
    tissue_core_mask,
    write_pyramidal_tiff,
)

__all__ = [
    "RENDER_MPP",
    "CohortConfig",
    "DemoCohort",
    "main",
    "make_demo_cohort",
    "render_tissue",
    "tissue_core_mask",
    "write_pyramidal_tiff",
]

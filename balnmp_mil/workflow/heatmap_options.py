"""`HeatmapOptions`: every option of `balnmp-mil heatmap` (and SLIDE) besides RUN and `--out`,
declared once (`balnmp_cache._options`).

The command line builds its options from these fields; `heatmap_run` (one slide) and
`heatmap_cohort` (`slides`, `split`, `jobs`, `progress`: a folder) take them as keywords with
the same defaults, and both check their values as these fields do. `--backend`'s
choices are the slide readers' registry (read when checked), plus `auto`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from balnmp_cache._options import Flag, Interval, OneOf, Text, check_options, option
from balnmp_mil.workflow.config import SPLIT_NAMES

__all__ = ["COHORT_OPTIONS", "HeatmapOptions"]

# The options that draw a folder of slides (`heatmap_cohort`), not one slide.
COHORT_OPTIONS = ("slides", "split", "jobs", "progress")


def _slide_backends() -> list[str]:
    from balnmp_cache.slides.registry import backend_choices  # lazy: names only

    return backend_choices()


@dataclass(kw_only=True)
class HeatmapOptions:
    """How `heatmap` finds a slide's bag and draws it (field order: the command's help)."""

    slide: str | Path | None = option(None, Text(), argument=True, path=True,
                                      help="The slide to draw (or --slides DIR).")
    geojson_out: str | Path | None = option(None, Text(), path=True, flag="--geojson", help=(
        "Also write QuPath GeoJSON here: one tile per patch with its attention, attention "
        "rank and instance score, the tissue outline and the tumour annotations (always "
        "written with --slides)."))
    slides: str | Path | None = option(None, Text(), path=True, help=(
        "A folder of slides: draw every slide of the run's cohort found there (SLIDE left "
        "out)."))
    split: str | None = option(None, OneOf(SPLIT_NAMES, "split"), help=(
        "With --slides: only this split's slides (every fold's for a cv run)."))
    jobs: int | None = option(None, Interval(int, 1), help=(
        "With --slides: slides drawn at once, 1 or more [the CPUs available]."))
    progress: bool | None = option(None, Flag(), negative="--no-progress", help=(
        "With --slides: a progress bar [on a terminal]."))
    features: str | Path | None = option(None, Text(), path=True,
                                  help="Feature store holding SLIDE [the run's].")
    annotations: str | Path | None = option(None, Text(), path=True, help=(
        "Tumour annotations for the GeoJSON: a file, or a folder of <slide id>.json|.geojson "
        "[the folder the store was extracted with]. For features of BCNB's paper_patches "
        "drawn on WSIs/<id>.jpg: the region file that places the patches [<id>.json beside "
        "SLIDE]."))
    patient: str | None = option(None, Text(), help=(
        "Patient id of SLIDE for clinical runs [the slide id]."))
    clinical: str | Path | None = option(None, Text(), path=True, help="Clinical table [the run's].")
    top_k: int = option(8, Interval(int, 0), help="Patches in the gallery.")
    thumbnail_size: int = option(2048, Interval(int, 1),
                                 help="Longest side of the thumbnail, px.")
    backend: str = option("auto", OneOf(_slide_backends, "slide backend"), help=(
        "Slide reader (auto: chosen from the file)."))
    mpp: float | None = option(None, Interval(float, 0, closed="neither"), help=(
        "Level-0 µm/px when the slide does not record it."))
    patch_size_level0: float | None = option(None, Interval(float, 0, closed="neither"), help=(
        "Side of a patch in level-0 px, for stores that do not record it (CLAM h5_files "
        "without patches/)."))

    def __post_init__(self) -> None:
        check_options(self)

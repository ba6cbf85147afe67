"""A slide made ready to encode: open -> annotations -> tile (-> QC), each step tagged with its
stage; the job's inputs as every worker sees them (`JobSpec`); and the first slides prepared
while the encoder is being built (`EarlyTiling`). Nothing here writes to the store or takes a
lock: `slide_job.SlideJob.claim` decides and locks, then uses what is prepared here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balnmp_cache.errors import AnnotationError
from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of

if TYPE_CHECKING:
    from balnmp_cache.extract.options import ExtractOptions
    from balnmp_cache.slides.base import Slide
    from balnmp_cache.tiling.annotations import Annotations
    from balnmp_cache.tiling.grid import PatchGrid

__all__ = [
    "EarlyTiling",
    "JobSpec",
    "Prepared",
    "StageError",
    "discard",
    "open_for_job",
    "prepare_slide",
    "stage",
]


@dataclass
class JobSpec:
    """One job as every worker sees it (picklable, for worker processes): where it writes, its
    options, and what is read once for all slides."""

    out: Path
    options: ExtractOptions
    mpp_overrides: dict[str, float] | None = None  # the --mpp-overrides table, read once
    stale_after: float = 600.0  # seconds without a heartbeat before a lock is taken over
    extra_attrs: dict[str, Any] = field(default_factory=dict)  # stored with every slide


class StageError(Exception):
    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Tag any exception raised inside with the stage it happened in."""
    try:
        yield
    except StageError:
        raise
    except Exception as exc:
        raise StageError(name) from exc


def prepare_slide(spec: JobSpec, path: Path) -> Prepared:
    """Open, find the annotation, tile (and QC) one slide; writes nothing to the store.

    Raises StageError naming the stage; safe to run in a background thread.
    """
    from balnmp_cache.tiling.grid import tile_slide

    o, sid = spec.options, slide_id_of(path)
    slide = open_for_job(spec, path)
    try:
        with stage("annotations"):
            ann, sha = _annotations(o, sid)
        with stage("tile"):
            grid = tile_slide(
                slide, patch_size=o.patch_size, mpp=o.mpp, annotations=ann,
                min_tissue=o.min_tissue, level=o.level, tissue=o.tissue,
            )  # fmt: skip
        if o.qc_dir is not None:
            from balnmp_cache.tiling.qc import save_qc

            with stage("qc"):
                Path(o.qc_dir).mkdir(parents=True, exist_ok=True)
                save_qc(slide, grid, Path(o.qc_dir) / f"{sid}.png")
    except BaseException:
        slide.close()
        raise
    return Prepared(slide, grid, sha)


def open_for_job(spec: JobSpec, path: Path) -> Slide:
    """The slide opened as the job opens it (its backend, its µm/px override)."""
    from balnmp_cache.slides.registry import open_slide

    with stage("open"):
        return open_slide(path, backend=spec.options.backend, mpp_overrides=spec.mpp_overrides)


def _annotations(o: ExtractOptions, sid: str) -> tuple[Annotations | None, str]:
    """The tumour regions to tile inside (None: all tissue), per --annotations and
    --allow-unannotated, and the sha256 of the annotation file's bytes they were parsed from
    ("none": no file; see `annotation_sha256`)."""
    from balnmp_cache.tiling.annotations import find_annotation, load_annotations

    if o.annotations is None:
        return None, "none"
    found = find_annotation(o.annotations, sid)
    if found is None:
        if o.allow_unannotated:
            return None, "none"
        raise AnnotationError(
            f"no annotation {o.annotations}/{sid}.json or .geojson; add it, or pass "
            "--allow-unannotated to tile all tissue of such slides"
        )
    ann = load_annotations(found)
    sha = ann.sha256 or "none"
    if not ann.is_empty:
        return ann, sha
    if o.allow_unannotated:
        return None, sha
    raise AnnotationError(
        f"annotation {ann.source} holds no tumour region (no positive polygon); fix it, "
        "or pass --allow-unannotated to tile all tissue of such slides"
    )


class EarlyTiling:
    """The first slides' preparation (`prepare_slide`: open, annotation, tile) on a pool while
    the encoder is built, so that the CPUs are not idle meanwhile: each worker starts the next
    slide as its last one ends, until the encoder is ready (the first `take`) or `paths` runs
    out. The first `keep_open` slides stay open; the later ones are closed once tiled
    (parked: their claim opens them again), so the files held open, and their decoders'
    caches, stay as few as the feed's own. Only reads: a slide's lock is taken when it is
    claimed, which then uses (`take`) its early result, or discards it when the slide turns
    out finished or locked by another job. Not used with `--qc` (that writes a file per
    slide)."""

    def __init__(self, spec: JobSpec, paths: list[Path], workers: int, keep_open: int) -> None:
        self.spec = spec
        self._todo = [Path(p) for p in reversed(paths)]  # `pop` starts the first
        self._open_left = keep_open
        self._lock = threading.Lock()
        self.futures: dict[Path, Future[Prepared]] = {}
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="balnmp-early")
        for _ in range(workers):
            self._start_next()

    def _start_next(self, _ended: object = None) -> None:
        with self._lock:
            if not self._todo:
                return
            path = self._todo.pop()
            park = self._open_left <= 0
            self._open_left -= 1
            fut = self.pool.submit(_prepare_early, self.spec, path, park)
            self.futures[path] = fut
        fut.add_done_callback(self._start_next)

    def take(self, path: Path) -> Future[Prepared] | None:
        """The slide's early preparation, if it was started; no slide is started after."""
        with self._lock:
            self._todo.clear()
            return self.futures.pop(Path(path), None)

    def close(self) -> None:
        """Discard what was not taken (its slides closed)."""
        with self._lock:
            self._todo.clear()
            left = list(self.futures.values())
            self.futures.clear()
        for fut in left:
            discard(fut)
        self.pool.shutdown(wait=True)


def _prepare_early(spec: JobSpec, path: Path, park: bool) -> Prepared:
    prep = prepare_slide(spec, path)
    if park:
        prep.slide.close()
    return prep


def discard(fut: Future[Prepared]) -> None:
    if fut.cancel():
        return
    with contextlib.suppress(Exception):  # its failure is nobody's: the slide was not claimed
        fut.result().slide.close()


@dataclass
class Prepared:
    """An open slide and its patch grid, ready to encode."""

    slide: Slide
    grid: PatchGrid
    annotations_sha256: str = "none"  # of the annotation file's bytes the grid was tiled in

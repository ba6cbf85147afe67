"""One slide's decisions: finished? locked? then lock and prepare it (`slide_prep.py`).

`SlideJob.claim(path)` never raises for a slide-level problem: a slide that cannot be
prepared comes back with a `SlideResult` naming the stage that failed, so the batch job can
record it and decide whether to go on; `SlideJob.failure` makes the same outcome for a slide
that fails later (read, encode, write: `feed.py`). A full disk or a read-only output is not the slide's fault and no later slide could be
written: that `OSError` stops the job instead. Locks and the "already finished" check live
here too, so every worker (shard, GPU, or a second job on the same directory) makes the same
decision the same way.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from balnmp_cache.encoders.base import Encoder
from balnmp_cache.extract import slide_prep
from balnmp_cache.extract.locks import SlideLock, holder, try_lock
from balnmp_cache.extract.manifest import SlideResult
from balnmp_cache.extract.pipeline import EncoderRunner, PipelineError
from balnmp_cache.extract.resume import ResumeCheck, source_fingerprint
from balnmp_cache.extract.settings import SETTINGS_ATTR, job_settings
from balnmp_cache.extract.slide_prep import (
    EarlyTiling,
    JobSpec,
    Prepared,
    StageError,
    discard,
    open_for_job,
    stage,
)
from balnmp_cache.slides.ids import SLIDE_SUFFIXES
from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of
from balnmp_cache.store.peer_attrs import coords_attrs_for

if TYPE_CHECKING:
    from balnmp_cache.store.types import SlideWriter

__all__ = [
    "OUTPUT_ERRNOS",
    "Claim",
    "SLIDE_SUFFIXES",
    "JobSpec",
    "SlideFailure",
    "SlideJob",
    "SlideResult",
    "slide_id_of",
]

LOCK_DIR = ".locks"
# Output errors no later slide escapes (disk full, quota, read-only): they stop the job.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class SlideFailure(RuntimeError):
    """A slide failed and --skip-errors was not given; finished slides stay valid."""

    def __init__(self, result: SlideResult) -> None:
        super().__init__(
            f"slide {result.slide_id!r} ({result.path}) failed at stage {result.stage!r}: "
            f"{result.error}. Slides finished so far are kept; rerun to resume, or pass "
            "--skip-errors to record failures and go on."
        )
        self.result = result

    def __reduce__(self) -> tuple:  # keep `result` when sent back from a worker process
        return (SlideFailure, (self.result,))


class SlideJob:
    """Claims and prepares slides for a fixed encoder on one device (`feed.py` encodes them)."""

    def __init__(self, spec: JobSpec, encoder: Encoder, runner: EncoderRunner) -> None:
        from balnmp_cache.store.feature_store import FeatureStore

        self.spec = spec
        self.options = spec.options
        self.encoder = encoder
        self.runner = runner
        self.store = FeatureStore(spec.out, mode="a", format=spec.options.format)
        self.settings = job_settings(spec.options, encoder)
        self.resume = ResumeCheck(spec.out, spec.options, spec.mpp_overrides, self.settings,
                                  self.store)  # fmt: skip
        self.early: EarlyTiling | None = None  # slides prepared before the encoder was built

    def lock_path(self, slide_id: str) -> Path:
        return self.spec.out / LOCK_DIR / f"{slide_id}.lock"

    def is_finished(self, path: Path) -> bool:
        """True when the slide is skipped as finished: --overwrite is off and the stored slide
        is verified (`resume.py`; one made otherwise raises `ExtractError`)."""
        return not self.options.overwrite and self.resume.state(path) == "finished"

    def claim(self, path: Path) -> Claim:
        """Decide one slide and, unless it is finished or locked by another job, lock and
        prepare it (open, annotations, tile, attributes); safe in a pool thread.

        A slide-level failure comes back as the claim's `result` (its lock already
        released); the store's settings changed by another job, or an output error no later
        slide escapes, raise.
        """
        early = self.early.take(path) if self.early is not None else None
        claim = None
        try:
            claim = self._claim(Path(path), early)
            return claim
        finally:
            if early is not None and (claim is None or claim.prepared is None):
                discard(early)  # finished, locked elsewhere, or failed: its slide is closed

    def _claim(self, path: Path, early: Future[Prepared] | None) -> Claim:
        sid, t0 = slide_id_of(path), time.perf_counter()
        self.resume.check_record()  # another job may have replaced the store's settings
        if self.is_finished(path):
            return Claim(path, sid, t0, self._finished(path, sid))
        lock = try_lock(self.lock_path(sid), stale_after=self.spec.stale_after)
        if lock is None:
            msg = f"locked by {holder(self.lock_path(sid))}"
            return Claim(path, sid, t0, SlideResult(sid, str(path), "skipped", 0, 0.0, msg))
        try:
            if self.is_finished(path):  # finished meanwhile
                lock.release()
                return Claim(path, sid, t0, self._finished(path, sid))
            self._remove_orphans(sid)
            prep = early.result() if early is not None else self.prepare(path)
            if prep.slide.closed:  # tiled early, then parked (`EarlyTiling`)
                prep = replace(prep, slide=open_for_job(self.spec, path))
        except StageError as exc:
            lock.release()
            return Claim(path, sid, t0, self.failure(path, exc.stage, exc.__cause__ or exc, t0))
        except BaseException:
            lock.release()
            raise
        try:
            with stage("open"):  # the slide file's fingerprint is read here
                attrs, coords_attrs = self._attrs(prep, path, sid)
        except StageError as exc:
            prep.slide.close()
            lock.release()
            return Claim(path, sid, t0, self.failure(path, exc.stage, exc.__cause__ or exc, t0))
        return Claim(path, sid, t0, None, lock, prep, attrs, coords_attrs)

    def _finished(self, path: Path, sid: str) -> SlideResult:
        return SlideResult(sid, str(path), "skipped", self._n_stored(sid), 0.0, "finished")

    @staticmethod
    def failure(path: Path, stage: str, err: BaseException, t0: float) -> SlideResult:
        """The failed outcome of a slide at `stage`; an output error no later slide escapes
        (disk full, read-only) is raised instead: it stops the job."""
        if isinstance(err, PipelineError):
            err = err.error
        if isinstance(err, OSError) and err.errno in OUTPUT_ERRNOS:
            raise err
        text = str(err)
        message = f"{type(err).__name__}: {text}" if text else type(err).__name__
        seconds = time.perf_counter() - t0
        return SlideResult(slide_id_of(path), str(path), "failed", 0, seconds, message, stage)

    def open_writer(self, claim: Claim) -> SlideWriter:
        """The store's writer for a claimed slide (its temp file; published on `commit`)."""
        return self.store.writer(claim.slide_id, self.encoder.feature_dim, self.options.dtype,
                                 claim.attrs, claim.coords_attrs)  # fmt: skip

    def _n_stored(self, sid: str) -> int:
        try:
            return int(self.store.info(sid).n_patches)
        except Exception:  # an unreadable old file: still "finished"; `inspect` reports it
            return 0

    def _remove_orphans(self, sid: str) -> None:
        """Temp files of this slide left by a killed writer (we hold the lock: nobody writes).

        HDF5 writes `.<id>.h5.tmp-<pid>`, Zarr a `.<id>.tmp-<pid>-<token>` group.
        """
        esc = glob.escape(sid)
        pattern = {"h5": f".{esc}.h5.tmp-*", "zarr": f".{esc}.tmp-*"}.get(self.options.format)
        if pattern is None:
            return
        for tmp in self.spec.out.glob(pattern):
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def prepare(self, path: Path) -> Prepared:
        """Open, find the annotation, tile (and QC) one slide (`prepare_slide`)."""
        return slide_prep.prepare_slide(self.spec, path)

    def _attrs(self, prep: Prepared, path: Path, sid: str) -> tuple[dict, dict]:
        """The slide's stored attributes and its `coords` attributes (see docs/format.md)."""
        slide, grid = prep.slide, prep.grid
        enc, plan = self.encoder, grid.plan
        attrs = {
            "slide_id": sid,
            "source_path": str(Path(path).resolve()),
            "encoder": enc.name,
            "weights": enc.weights_id,
            "feature_dim": enc.feature_dim,
            "patch_size": plan.patch_size,
            "patch_size_level0": plan.patch_size_level0,
            "target_mpp": plan.target_mpp,
            "slide_mpp": plan.slide_mpp,
            "level": plan.level,
            "tissue": grid.tissue,
            "annotations": grid.annotations or "",
            "read_size": plan.read_size,
            "encoder_input_size": enc.input_size,
            "min_tissue": self.options.min_tissue,
            "precision": self.runner.precision,
            "reader": slide.backend,
            SETTINGS_ATTR: self.settings,
            "source_fingerprint": source_fingerprint(path),
            "annotations_sha256": prep.annotations_sha256,  # of the bytes tiled with
            **self.spec.extra_attrs,
        }
        pyramid = getattr(slide, "fixed_coords", None) is None  # not a folder of patches
        coords_attrs = coords_attrs_for(
            sid, patch_size=plan.patch_size, patch_size_level0=plan.patch_size_level0,
            read_size=plan.read_size, level=plan.level, slide_mpp=plan.slide_mpp,
            overlap=round(plan.patch_size - grid.stride_level0 / plan.level0_per_px),
            level_dimensions=slide.level_dimensions if pyramid else None,
            level_downsamples=slide.level_downsamples if pyramid else None,
        )  # fmt: skip
        return attrs, coords_attrs


@dataclass
class Claim:
    """A slide as `SlideJob.claim` left it: decided (`result`: skipped, or failed before any
    patch was read), or locked and prepared, with the attributes its file will hold."""

    path: Path
    slide_id: str
    t0: float  # when its claim started (the outcome's seconds count from here)
    result: SlideResult | None = None
    lock: SlideLock | None = None
    prepared: Prepared | None = None
    attrs: dict = field(default_factory=dict)
    coords_attrs: dict = field(default_factory=dict)

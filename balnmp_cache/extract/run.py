"""One device's extraction loop: build the encoder once, then feed it every slide.

Slides are claimed and prepared on a thread pool ahead of the encoder and share its batches
(`feed.py`); the outcomes of the slides that end with an encoder batch are written to
`<out>/manifest.csv` together (one update), before any slide of a later batch is published.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from balnmp_cache.errors import ExtractError
from balnmp_cache.extract.manifest import ManifestCache, read_manifest, update_manifest
from balnmp_cache.extract.slide_job import JobSpec, SlideFailure, SlideJob, SlideResult
from balnmp_cache.extract.slide_prep import EarlyTiling

__all__ = ["StopFlag", "run_slides"]

# At most this many slides (or 2 per CPU where that is more) are tiled before the encoder is
# built; 2 per CPU of them are kept open (as many as the feed claims ahead), the others are
# closed until claimed.
EARLY_SLIDES = 64


class StopFlag(Protocol):
    """A flag shared by device workers (a `threading.Event` or a multiprocessing one)."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...


def _build_job(spec: JobSpec, device: str | None) -> SlideJob:
    """The encoder on its device and the job around it."""
    import torch

    from balnmp_cache.encoders.base import build_encoder
    from balnmp_cache.extract.pipeline import EncoderRunner, default_device

    o = spec.options
    try:
        dev = torch.device(device) if device else default_device()
    except RuntimeError as exc:
        raise ExtractError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA device is available; use --device cpu")
    enc = build_encoder(o.encoder, o.weights_name, seed=o.seed, flatten=o.flatten,
                        input_size=o.input_size, pooling=o.pooling)  # fmt: skip
    out_dtype = torch.float32 if o.dtype == "float32" else torch.float16
    runner = EncoderRunner(enc, dev, o.precision, out_dtype=out_dtype)
    return SlideJob(spec, enc, runner)


def run_slides(
    paths: Sequence[Path],
    spec: JobSpec,
    device: str | None,
    position: int = 0,
    stop: StopFlag | None = None,
) -> list[SlideResult]:
    """Process `paths` in order on one device, updating the manifest as slides end (once per
    encoder batch).

    `stop` (an Event shared between device workers) ends the loop between slides. The first
    slides are tiled (read only: `EarlyTiling`) while the encoder is built.
    """
    from balnmp_cache.extract.feed import job_cpus

    early = None
    if spec.options.qc_dir is None:
        cpus = job_cpus()
        early = EarlyTiling(spec, list(paths[: max(EARLY_SLIDES, 2 * cpus)]), cpus,
                            keep_open=2 * cpus)  # fmt: skip
    try:
        job = _build_job(spec, device)
        job.early = early
        return _run(job, paths, device, position, stop)
    finally:
        if early is not None:
            early.close()


def _run(job: SlideJob, paths: Sequence[Path], device: str | None, position: int,
         stop: StopFlag | None) -> list[SlideResult]:  # fmt: skip
    from tqdm.auto import tqdm

    from balnmp_cache.extract.feed import run_feed

    spec, o = job.spec, job.options
    job.resume.start(paths)  # the store's settings and every finished slide, before any work
    results: list[SlideResult] = []
    known = read_manifest(spec.out)
    disable = (not sys.stderr.isatty()) if o.progress is None else not o.progress
    bar = tqdm(total=len(paths), unit="slide", disable=disable, position=position,
               desc=f"extract {device or ''}".strip(), dynamic_ncols=True)  # fmt: skip

    def report(batch: list[SlideResult]) -> None:
        results.extend(batch)
        bar.update(len(batch))
        bar.set_postfix_str(batch[-1].slide_id)

    cache = ManifestCache()  # this job's last manifest: not read back after its own updates

    def record(batch: list[SlideResult]) -> None:  # the writer thread, once per encoder batch
        rows = [row for row in (_manifest_row(res, known) for res in batch) if row is not None]
        update_manifest(spec.out, rows, cache=cache)

    try:
        run_feed(job, [Path(p) for p in paths], report, record, stop)
    finally:
        bar.close()
    failed = next((r for r in results if r.status == "failed"), None)
    if failed is not None and not o.skip_errors:
        if stop is not None:
            stop.set()  # the other devices' workers stop too
        raise SlideFailure(failed)
    job.resume.finish(paths)
    return results


def _manifest_row(res: SlideResult, known: dict[str, SlideResult]) -> SlideResult | None:
    """The manifest row for an outcome; None when another job owns the slide's row."""
    if res.status != "skipped":
        return res
    if res.error == "finished" and res.slide_id not in known:
        return SlideResult(res.slide_id, res.path, "done", res.n_patches)  # manifest was lost
    return None

"""One device's extraction loop: build the encoder once, then every slide in turn.

The next slide is opened and tiled in a background thread while the current one is encoded;
each outcome is written to `<out>/manifest.csv` as it happens.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from balnmp_cache.errors import ExtractError
from balnmp_cache.extract.manifest import read_manifest, update_manifest
from balnmp_cache.extract.slide_job import (
    JobSpec,
    Prepared,
    SlideFailure,
    SlideJob,
    SlideResult,
    discard,
    slide_id_of,
)

__all__ = ["StopFlag", "run_slides"]


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
    """Process `paths` in order on one device, updating the manifest after every slide.

    `stop` (an Event shared between device workers) ends the loop between slides.
    """
    from tqdm.auto import tqdm

    job = _build_job(spec, device)
    job.resume.start(paths)  # the store's settings and every finished slide, before any work
    o = spec.options
    results: list[SlideResult] = []
    known = read_manifest(spec.out)
    disable = (not sys.stderr.isatty()) if o.progress is None else not o.progress
    bar = tqdm(total=len(paths), unit="slide", disable=disable, position=position,
               desc=f"extract {device or ''}".strip(), dynamic_ncols=True)  # fmt: skip
    pool = ThreadPoolExecutor(1, thread_name_prefix="balnmp-prepare")
    upcoming: Future[Prepared] | None = None
    try:
        for i, path in enumerate(paths):
            if stop is not None and stop.is_set():
                break  # another device's worker failed without --skip-errors
            job.resume.check_record()  # another job may have replaced the store's settings
            current, upcoming = upcoming, None
            if i + 1 < len(paths) and not job.is_finished(Path(paths[i + 1])):
                # open + tile the next slide while this one is encoded
                upcoming = pool.submit(job.prepare, Path(paths[i + 1]))
            bar.set_postfix_str(slide_id_of(path))
            res = job.run(Path(path), prepared=current)
            results.append(res)
            bar.update(1)
            row = _manifest_row(res, known)
            if row is not None:
                update_manifest(spec.out, [row])
            if res.status == "failed" and not o.skip_errors:
                if stop is not None:
                    stop.set()
                raise SlideFailure(res)
    finally:
        discard(upcoming)
        pool.shutdown(wait=True)
        bar.close()
    job.resume.finish(paths)
    return results


def _manifest_row(res: SlideResult, known: dict[str, SlideResult]) -> SlideResult | None:
    """The manifest row for an outcome; None when another job owns the slide's row."""
    if res.status != "skipped":
        return res
    if res.error == "finished" and res.slide_id not in known:
        return SlideResult(res.slide_id, res.path, "done", res.n_patches)  # manifest was lost
    return None

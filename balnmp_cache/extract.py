"""`extract_features`: the resumable batch job that turns slides into a feature store.

Finds the slides, keeps this job's shard, builds the encoder once per device and runs every
slide through `SlideJob` (extract_slide.py), recording each outcome in `<out>/manifest.csv`
as it happens. With several devices, one worker process per device pulls slides from the
same list; per-slide locks make them (and any other job on the same directory) share the
work without duplicates.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balnmp_cache._atomic import check_output
from balnmp_cache.extract_slide import (
    SLIDE_SUFFIXES,
    SlideFailure,
    SlideJob,
    SlideOptions,
    SlideResult,
    discard,
    slide_id_of,
)
from balnmp_cache.manifest import read_manifest, update_manifest
from balnmp_cache.sharding import Shard, parse_devices, resolve_shard

__all__ = [
    "ExtractError", "ExtractSummary", "SlideFailure", "SlideResult", "extract_features",
    "find_slides",
]  # fmt: skip

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")


class ExtractError(ValueError):
    """Bad input for a whole job (no slides, duplicate ids, bad option): nothing was done."""


@dataclass
class ExtractSummary:
    """Per-slide outcomes of one `extract_features` call."""

    results: list[SlideResult] = field(default_factory=list)
    out: Path | None = None

    @property
    def n_failed(self) -> int:
        return sum(r.status == "failed" for r in self.results)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if r.status == "failed"]

    def format(self) -> str:
        """A per-slide table and a one-line total, for the end of a job."""
        rows = [("slide", "status", "patches", "seconds", "error")]
        for r in self.results:
            err = f"[{r.stage}] {r.error}" if r.stage else r.error
            rows.append((r.slide_id, r.status, str(r.n_patches), f"{r.seconds:.1f}", err[:100]))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4]
                 for row in rows]  # fmt: skip
        counts = ", ".join(
            f"{self.count(s)} {s}" for s in ("done", "empty", "skipped", "failed") if self.count(s)
        )
        lines.append(f"{len(self.results)} slides: {counts or 'nothing to do'}"
                     + (f"; features in {self.out}" if self.out else ""))  # fmt: skip
        return "\n".join(line.rstrip() for line in lines)


def _is_patch_folder(d: Path) -> bool:
    return any(c.is_file() and c.suffix.lower() in _IMAGE_SUFFIXES for c in d.iterdir())


def find_slides(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Slide files (and patch / DICOM folders) named by `inputs`, which are files or folders.

    A folder contributes its files with a slide extension and its sub-folders that hold images
    (pre-cut patch folders, DICOM series), except an MRXS file's companion data folder.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            children = sorted(c for c in p.iterdir() if not c.name.startswith("."))
            files = [c for c in children if c.is_file() and c.suffix.lower() in SLIDE_SUFFIXES]
            mrxs = {c.stem for c in files if c.suffix.lower() == ".mrxs"}
            dirs = [c for c in children if c.is_dir() and c.name not in mrxs]
            sub = [d for d in dirs if _is_patch_folder(d)]
            if not files and not sub and _is_patch_folder(p):
                found.append(p)  # the folder itself is one pre-cut patch slide
            found.extend(files + sub)
        else:
            raise ExtractError(f"{p}: no such slide file or folder")
    if not found:
        raise ExtractError(
            f"no slides found in {', '.join(map(str, inputs))} (looked for "
            f"{', '.join(SLIDE_SUFFIXES)} files and folders of patch images)"
        )
    by_id: dict[str, Path] = {}
    for p in found:
        sid = slide_id_of(p)
        if sid in by_id and by_id[sid].resolve() != p.resolve():
            raise ExtractError(
                f"two slides share the id {sid!r}: {by_id[sid]} and {p}; slide ids (file names "
                "without extension) must be unique within one output directory"
            )
        by_id[sid] = p
    return [by_id[s] for s in sorted(by_id)]


def _check_out(out: Path, slides: str | Path | Sequence[str | Path],
               annotations: str | Path | None) -> None:
    """`--out` must be a folder apart from the slide folders and annotations it reads:
    features written into a slide folder would be found as slides by the next job."""
    items = [slides] if isinstance(slides, (str, Path)) else list(slides)
    folders = [("SLIDE_OR_DIR", p) for p in items if Path(p).is_dir() or Path(p) == out]
    check_output(out, [*folders, ("--annotations", annotations)], ExtractError)
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {out} is a file; a feature store is a folder (or a .zarr "
                           "store): choose another --out")


def _load_overrides(mpp_overrides: Any) -> dict[str, float] | None:
    if mpp_overrides is None or isinstance(mpp_overrides, dict):
        return mpp_overrides
    from balnmp_cache.slide import load_mpp_overrides

    try:
        return load_mpp_overrides(mpp_overrides)
    except (OSError, ValueError, KeyError) as exc:
        raise ExtractError(f"--mpp-overrides {mpp_overrides}: {exc}") from exc


def extract_features(
    slides: str | Path | Sequence[str | Path],
    out: str | Path,
    encoder: str = "resnet50",
    weights: str | Path | None = None,
    mpp: float | None = 0.5,
    patch_size: int = 256,
    format: str = "h5",
    device: str | None = None,
    batch_size: int = 256,
    annotations: str | Path | None = None,
    num_workers: int | None = None,
    precision: str | None = None,
    shard: str | Shard | None = None,
    skip_errors: bool = False,
    overwrite: bool = False,
    min_tissue: float = 0.5,
    level: int | None = None,
    qc_dir: str | Path | None = None,
    allow_unannotated: bool = False,
    mpp_overrides: str | Path | dict[str, float] | None = None,
    backend: str = "auto",
    tissue: str = "biopsy",
    progress: bool | None = None,
    devices: str | Sequence[str | int] | None = None,
    seed: int = 0,
    flatten: bool = False,
    dtype: str = "float16",
    input_size: int | None = None,
) -> ExtractSummary:
    """Encode every slide in `slides` into the feature store `out`; see docs/extraction.md.

    weights: "imagenet" (default), "none" (seeded random init) or a checkpoint path.
    Finished slides are skipped unless `overwrite`. A failing slide raises SlideFailure
    unless `skip_errors`, in which case it is recorded and the job goes on. progress=None
    shows a bar only on a terminal. input_size: resize patches to this side before the
    encoder instead of the encoder's native size.
    """
    if batch_size < 1:
        raise ExtractError(f"batch_size must be >= 1, got {batch_size}")
    if annotations is not None and not Path(annotations).is_dir():
        raise ExtractError(f"--annotations {annotations}: not a folder of <slide_id>.json files")
    try:
        the_shard = resolve_shard(shard)
        device_list = parse_devices(devices)
    except ValueError as exc:
        raise ExtractError(str(exc)) from exc
    _check_out(Path(out), slides, annotations)
    paths = find_slides(slides)
    if the_shard is not None:
        paths = the_shard.select(paths, key=[slide_id_of(p) for p in paths])
    out = Path(out)
    opts = SlideOptions(
        out=out, format=format, mpp=mpp, patch_size=patch_size, level=level,
        min_tissue=min_tissue, tissue=tissue,
        annotations=Path(annotations) if annotations is not None else None,
        allow_unannotated=allow_unannotated, mpp_overrides=_load_overrides(mpp_overrides),
        backend=backend, qc_dir=Path(qc_dir) if qc_dir is not None else None,
        batch_size=batch_size, num_workers=num_workers, overwrite=overwrite, dtype=dtype,
    )  # fmt: skip
    model = _ModelSpec(encoder, "imagenet" if weights is None else str(weights), seed, flatten,
                       precision, input_size)  # fmt: skip
    if len(device_list) > 1:
        from balnmp_cache.extract_workers import run_on_devices

        results = run_on_devices(paths, opts, model, device_list, skip_errors, progress)
    else:
        dev = device_list[0] if device_list else device
        results = run_slides(paths, opts, model, dev, skip_errors, progress)
    return ExtractSummary(results, out)


@dataclass
class _ModelSpec:
    """How to build the encoder (picklable, so worker processes can build their own)."""

    name: str
    weights: str
    seed: int = 0
    flatten: bool = False
    precision: str | None = None
    input_size: int | None = None


def _build_job(opts: SlideOptions, model: _ModelSpec, device: str | None) -> SlideJob:
    import torch

    from balnmp_cache.encoders import build_encoder
    from balnmp_cache.pipeline import EncoderRunner, default_device

    try:
        dev = torch.device(device) if device else default_device()
    except RuntimeError as exc:
        raise ExtractError(f"--device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError(f"--device {device}: no CUDA device is available; use --device cpu")
    enc = build_encoder(model.name, model.weights, seed=model.seed, flatten=model.flatten,
                        input_size=model.input_size)  # fmt: skip
    out_dtype = torch.float32 if opts.dtype == "float32" else torch.float16
    runner = EncoderRunner(enc, dev, model.precision, out_dtype=out_dtype)
    job = SlideJob(opts, enc, runner)
    if not opts.overwrite:
        _check_same_settings(job)
    return job


def _check_same_settings(job: SlideJob) -> None:
    """Resuming into a store made with another encoder or resolution would skip its slides as
    "finished" and leave a cohort of mixed features: refuse, naming what differs."""
    store, enc, o = job.store, job.encoder, job.opts
    done = store.slide_ids
    if not done:
        return
    have = store.attrs(done[0])
    want: dict[str, object] = {"encoder": enc.name, "weights": enc.weights_id,
                               "feature_dim": enc.feature_dim}
    if o.level is None and have.get("target_mpp") is not None:
        want.update(target_mpp=o.mpp, patch_size=o.patch_size)
    diff = [f"{k} {have.get(k)!r} (asked for {v!r})" for k, v in want.items()
            if k in have and not _same(have.get(k), v)]
    if diff:
        raise ExtractError(
            f"--out {o.out} already holds features of slide {done[0]!r} made with "
            f"{', '.join(diff)}; pass --overwrite to re-extract every slide, or choose another "
            "--out so each store holds one encoder and resolution"
        )


def _same(a: object, b: object) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-6  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)


def run_slides(
    paths: Sequence[Path],
    opts: SlideOptions,
    model: _ModelSpec,
    device: str | None,
    skip_errors: bool,
    progress: bool | None,
    position: int = 0,
    stop: Any = None,
) -> list[SlideResult]:
    """Process `paths` in order on one device, updating the manifest after every slide.

    `stop` (an Event shared between device workers) ends the loop between slides.
    """
    from tqdm.auto import tqdm

    job = _build_job(opts, model, device)
    results: list[SlideResult] = []
    known = read_manifest(opts.out)
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    bar = tqdm(total=len(paths), unit="slide", disable=disable, position=position,
               desc=f"extract {device or ''}".strip(), dynamic_ncols=True)  # fmt: skip
    pool = ThreadPoolExecutor(1, thread_name_prefix="balnmp-prepare")
    upcoming: Future | None = None
    try:
        for i, path in enumerate(paths):
            if stop is not None and stop.is_set():
                break  # another device's worker failed without --skip-errors
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
                update_manifest(opts.out, [row])
            if res.status == "failed" and not skip_errors:
                if stop is not None:
                    stop.set()
                raise SlideFailure(res)
    finally:
        discard(upcoming)
        pool.shutdown(wait=True)
        bar.close()
    return results


def _manifest_row(res: SlideResult, known: dict[str, SlideResult]) -> SlideResult | None:
    """The manifest row for an outcome; None when another job owns the slide's row."""
    if res.status != "skipped":
        return res
    if res.error == "finished" and res.slide_id not in known:
        return SlideResult(res.slide_id, res.path, "done", res.n_patches)  # manifest was lost
    return None

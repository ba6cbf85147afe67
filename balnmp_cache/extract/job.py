"""`extract_features`: the resumable batch job that turns slides into a feature store.

Finds the slides, keeps this job's shard, builds the encoder once per device and runs every
slide through `SlideJob` (extract_slide.py), recording each outcome in `<out>/manifest.csv`
as it happens. With several devices, one worker process per device pulls slides from the
same list; per-slide locks make them (and any other job on the same directory) share the
work without duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balnmp_cache.errors import ExtractError
from balnmp_cache.extract.run import ModelSpec, run_slides
from balnmp_cache.extract.sharding import Shard, parse_devices, resolve_shard
from balnmp_cache.extract.slide_job import (
    SLIDE_SUFFIXES,
    SlideFailure,
    SlideOptions,
    SlideResult,
    slide_id_of,
)
from balnmp_cache.slides.ids import is_slide_folder
from balnmp_cache.store._atomic import check_output

__all__ = [
    "ExtractError", "ExtractSummary", "SlideFailure", "SlideResult", "extract_features",
    "find_slides",
]  # fmt: skip

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
            sub = [d for d in dirs if is_slide_folder(d)]
            if not files and not sub and is_slide_folder(p):
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
    from balnmp_cache.slides.mpp import load_mpp_overrides

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
    model = ModelSpec(encoder, "imagenet" if weights is None else str(weights), seed, flatten,
                       precision, input_size)  # fmt: skip
    if len(device_list) > 1:
        from balnmp_cache.extract.workers import run_on_devices

        results = run_on_devices(paths, opts, model, device_list, skip_errors, progress)
    else:
        dev = device_list[0] if device_list else device
        results = run_slides(paths, opts, model, dev, skip_errors, progress)
    return ExtractSummary(results, out)



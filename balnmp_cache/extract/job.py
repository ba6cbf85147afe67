"""`extract_features`: the resumable batch job that turns slides into a feature store.

Finds the slides, keeps this job's shard, builds the encoder once per device and runs every
slide through `SlideJob` (`slide_job.py`), recording each outcome in `<out>/manifest.csv`
as it happens. With several devices, one worker process per device pulls slides from the
same list; per-slide locks make them (and any other job on the same directory) share the
work without duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from balnmp_cache._options import with_option_keywords
from balnmp_cache.errors import BalnmpError, ExtractError
from balnmp_cache.extract.options import ExtractOptions
from balnmp_cache.extract.run import run_slides
from balnmp_cache.extract.sharding import parse_devices, resolve_shard
from balnmp_cache.extract.slide_job import (
    SLIDE_SUFFIXES,
    JobSpec,
    SlideFailure,
    SlideResult,
    slide_id_of,
)
from balnmp_cache.slides.ids import is_slide_folder
from balnmp_cache.store._atomic import check_output
from balnmp_cache.store.backend import backend_class, existing_format

Slides = str | Path | Sequence[str | Path]

__all__ = [
    "ExtractError", "ExtractOptions", "ExtractSummary", "SlideFailure", "SlideResult",
    "extract_features", "find_slides", "run_extraction",
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


def _check_out(out: Path, slides: Slides, options: ExtractOptions) -> None:
    """`--out` must be a folder apart from the slide folders and annotations it reads
    (features written into a slide folder would be found as slides by the next job), under
    folders rather than files, and empty, new, or a store of `--format`."""
    items = [slides] if isinstance(slides, (str, Path)) else list(slides)
    folders = [("SLIDE_OR_DIR", p) for p in items if Path(p).is_dir() or Path(p) == out]
    check_output(out, [*folders, ("--annotations", options.annotations)], ExtractError)
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {out} is a file; a feature store is a folder (or a .zarr "
                           "store): choose another --out")
    above = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise ExtractError(f"--out {out}: {above} is a file, not a folder; choose another --out")
    found = existing_format(out)
    if found is not None and found != options.format:
        if backend_class(found).writable:
            raise ExtractError(f"--out {out} holds a {found!r} feature store: pass --format "
                               f"{found} to add to it, or choose another --out for "
                               f"--format {options.format}")
        raise ExtractError(f"--out {out} is a {found!r} store, which balnmp reads but does "
                           "not write: choose another --out")


def _load_overrides(
    mpp_overrides: str | Path | Mapping[str, float] | None,
) -> dict[str, float] | None:
    if mpp_overrides is None or isinstance(mpp_overrides, Mapping):
        return None if mpp_overrides is None else dict(mpp_overrides)
    from balnmp_cache.slides.mpp import load_mpp_overrides

    try:
        return load_mpp_overrides(mpp_overrides)
    except (OSError, BalnmpError) as exc:
        raise ExtractError(f"--mpp-overrides {mpp_overrides}: {exc}") from exc


def run_extraction(slides: Slides, out: str | Path, options: ExtractOptions) -> ExtractSummary:
    """`extract_features` with its options as one `ExtractOptions` object (what the command
    line calls): check the output, find and shard the slides, run one loop per device."""
    out = Path(out)
    shard = resolve_shard(options.shard)  # --shard, else the SLURM array's
    devices = parse_devices(options.devices)
    _check_out(out, slides, options)
    paths = find_slides(slides)
    if shard is not None:
        paths = shard.select(paths, key=[slide_id_of(p) for p in paths])
    spec = JobSpec(out, options, _load_overrides(options.mpp_overrides))
    if len(devices) > 1:
        from balnmp_cache.extract.workers import run_on_devices

        results = run_on_devices(paths, spec, devices)
    else:
        results = run_slides(paths, spec, devices[0] if devices else options.device)
    return ExtractSummary(results, out)


@with_option_keywords(ExtractOptions)
def extract_features(slides: Slides, out: str | Path, options: ExtractOptions) -> ExtractSummary:
    """Encode every slide in `slides` into the feature store `out`; see docs/extraction.md.

    The keywords after `out` are the fields of `ExtractOptions`, in its order and with its
    defaults (`encoder="resnet50"`, `weights=None` meaning ImageNet, `mpp=0.5`,
    `patch_size=256`, `format="h5"`, `device=None`, `batch_size=256`, ...); a value a field
    does not allow raises `OptionError` before any slide is touched. Finished slides are
    skipped unless `overwrite`. A failing slide raises `SlideFailure` unless `skip_errors`,
    in which case it is recorded and the job goes on. `progress=None` shows a bar only on a
    terminal.
    """
    return run_extraction(slides, out, options)

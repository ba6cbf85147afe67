"""`<out>/manifest.csv`: one row per slide (id, path, status, n_patches, seconds, error, stage).

Several jobs may share one output directory, so every update is a read-modify-write done
under a short lock file and published with an atomic rename: readers never see a torn file
and no job's rows are lost. A job keeps the rows it last wrote (`ManifestCache`) and reads
the file again only when it is no longer the file it wrote (another job published one since).
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from balnmp_cache import _signals as signals
from balnmp_cache.errors import ExtractError
from balnmp_cache.extract.locks import try_lock
from balnmp_cache.store._atomic import publish, side_name

MANIFEST_NAME = "manifest.csv"
COLUMNS = ("id", "path", "status", "n_patches", "seconds", "error", "stage")


@dataclass
class SlideResult:
    """One slide's outcome, as extraction returns it and as manifest.csv records it (the
    csv's `id` column is `slide_id`). `status` is "done", "empty", "failed" or
    "skipped"; `stage` names where a failure happened."""

    slide_id: str
    path: str
    status: str
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""
    stage: str = ""


def manifest_path(out: str | Path) -> Path:
    return Path(out) / MANIFEST_NAME


def read_manifest(out: str | Path) -> dict[str, SlideResult]:
    """Rows by slide id ({} when there is no manifest yet)."""
    path = manifest_path(out)
    if not path.exists():
        return {}
    try:
        return _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExtractError(
            f"{path} cannot be read ({exc}); move it aside (mv {path} {path}.damaged) and rerun: "
            "it is rebuilt as slides are processed (the store, not the manifest, says which "
            "slides are finished)"
        ) from exc


def _read_rows(path: Path) -> dict[str, SlideResult]:
    rows: dict[str, SlideResult] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            try:
                rows[rec["id"]] = SlideResult(
                    slide_id=rec["id"],
                    path=rec.get("path") or "",
                    status=rec.get("status") or "",
                    n_patches=int(float(rec.get("n_patches") or 0)),
                    seconds=float(rec.get("seconds") or 0.0),
                    error=rec.get("error") or "",
                    stage=rec.get("stage") or "",
                )
            except (KeyError, ValueError) as exc:
                raise ExtractError(
                    f"{path} has a malformed row {rec!r} ({exc}); fix the row, or move the file "
                    f"aside (mv {path} {path}.damaged) and rerun: it is rebuilt as slides are "
                    "processed"
                ) from exc
    return rows


@dataclass
class ManifestCache:
    """The rows a job last wrote and which file that was (`_identity`), so that its next
    update need not read the manifest back while no other job has replaced it."""

    identity: tuple[int, ...] | None = None
    rows: dict[str, SlideResult] = field(default_factory=dict)


def _identity(path: Path) -> tuple[int, ...] | None:
    """Device, inode, size and mtime of the file at `path` (None: none). Every update
    publishes a new file by a rename, so another job's update changes it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _write(path: Path, rows: Iterable[SlideResult]) -> None:
    tmp = side_name(path, "tmp")
    try:
        _write_rows(tmp, rows)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temp file behind (nor the old one)


def _write_rows(tmp: Path, rows: Iterable[SlideResult]) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in sorted(rows, key=lambda r: r.slide_id):
            error = " ".join(str(r.error).split())  # one line per slide
            writer.writerow((r.slide_id, r.path, r.status, r.n_patches, f"{r.seconds:.2f}",
                             error, r.stage))  # fmt: skip
        f.flush()
        os.fsync(f.fileno())


def update_manifest(out: str | Path, rows: Iterable[SlideResult], timeout: float = 120.0,
                    cache: ManifestCache | None = None) -> None:  # fmt: skip
    """Insert or replace `rows` (by id) in `<out>/manifest.csv`, atomically and race-free.
    With `cache` (one per job), the file is read only when another job replaced it."""
    rows = list(rows)
    if not rows:
        return
    path = manifest_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    deadline = time.monotonic() + timeout
    lock = None
    try:  # released whenever a signal comes, also just after the lock was taken
        while (lock := try_lock(lock_path, stale_after=timeout, heartbeat_s=0)) is None:
            if time.monotonic() > deadline:
                raise ExtractError(
                    f"could not lock {path} for {timeout:.0f} s; if no job is running, delete "
                    f"{lock_path}"
                )
            time.sleep(0.05)
        with signals.critical():  # a signal waits until the new manifest is in place
            _update(out, path, rows, cache)
    finally:
        if lock is not None:
            lock.release()


def _update(out: str | Path, path: Path, rows: list[SlideResult],
            cache: ManifestCache | None) -> None:  # fmt: skip
    """The read-modify-write itself (the caller holds the manifest's lock)."""
    if cache is not None and cache.identity is not None and _identity(path) == cache.identity:
        current = dict(cache.rows)
    else:
        current = read_manifest(out)
    for row in rows:
        current[row.slide_id] = row
    if cache is not None:
        cache.identity, cache.rows = None, {}  # unknown until the new file is in place
    _write(path, current.values())
    if cache is not None:
        cache.identity, cache.rows = _identity(path), current

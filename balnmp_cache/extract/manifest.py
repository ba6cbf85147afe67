"""`<out>/manifest.csv`: one row per slide (id, path, status, n_patches, seconds, error, stage).

Several jobs may share one output directory, so every update is a read-modify-write done
under a short lock file and published with an atomic rename: readers never see a torn file
and no job's rows are lost.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
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


def _write(path: Path, rows: Iterable[SlideResult]) -> None:
    tmp = side_name(path, "tmp")
    try:
        _write_rows(tmp, rows)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temp file behind (nor the old one)


def _write_rows(tmp: Path, rows: Iterable[SlideResult]) -> None:
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.slide_id):
            rec = asdict(row)
            rec["id"] = rec.pop("slide_id")
            rec["seconds"] = f"{row.seconds:.2f}"
            rec["error"] = " ".join(str(row.error).split())  # one line per slide
            writer.writerow(rec)
        f.flush()
        os.fsync(f.fileno())


def update_manifest(out: str | Path, rows: Iterable[SlideResult], timeout: float = 120.0) -> None:
    """Insert or replace `rows` (by id) in `<out>/manifest.csv`, atomically and race-free."""
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
            current = read_manifest(out)
            for row in rows:
                current[row.slide_id] = row
            _write(path, current.values())
    finally:
        if lock is not None:
            lock.release()

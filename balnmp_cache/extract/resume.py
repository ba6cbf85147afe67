""""Finished" means verified: what a resume checks before it skips a slide.

A slide already in the store is skipped only when it is complete and readable and was made
exactly as this job would make it: the same settings (`settings.py`), the same slide file
(`source_fingerprint`: its size and a hash of its first and last 64 KiB, so a copy to another
disk still matches while a rescan or another cohort's file of the same name does not), the
same annotation content (`annotations_sha256`) and, where `--mpp-overrides` gives one, the same
µm/px. A damaged slide is extracted again; any other difference is refused (`ExtractError`,
exit status 2) naming the slides, the flag, the stored and the asked value. Every finished
slide of the job's list is checked before any work, each one finished meanwhile by another
job when the loop reaches it, and all of them once more at the end (`finish`; a slide this job
published itself and that is still that file is not read back).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balnmp_cache.errors import ExtractError, StoreError
from balnmp_cache.extract.settings import (
    CORE,
    FLAGS,
    SettingsRecord,
    differences,
    recorded_settings,
    show,
    unrecorded,
)
from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of
from balnmp_cache.store.types import DAMAGED_FIX

if TYPE_CHECKING:
    from balnmp_cache.extract.options import ExtractOptions
    from balnmp_cache.store.feature_store import FeatureStore

__all__ = ["ResumeCheck", "ResumeWarning", "annotation_sha256", "source_fingerprint"]

FINGERPRINT_BYTES = 64 << 10


class ResumeWarning(UserWarning):
    """A finished slide that is extracted again (damaged) or not fully verifiable (old)."""


def _sha256_file(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if limit is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            size = os.fstat(f.fileno()).st_size
            h.update(f.read(limit))
            if size > limit:
                f.seek(max(limit, size - limit))
                h.update(f.read(limit))
    return h.hexdigest()


def source_fingerprint(path: str | os.PathLike[str]) -> str:
    """A slide's content, cheaply: `<size>:<sha256 of the first and last 64 KiB>` for a file
    (an MRXS file adds its data folder's listing), `dir:<files>:<sha256 of every file's
    relative name and size>` for a folder slide. Path and mtime are not part of it."""
    p = Path(path)
    if p.is_dir():
        return "dir:" + _listing(p)
    size = p.stat().st_size
    head_tail = _sha256_file(p, FINGERPRINT_BYTES)
    companion = p.with_suffix("")
    if p.suffix.lower() == ".mrxs" and companion.is_dir():
        head_tail = hashlib.sha256(f"{head_tail}:{_listing(companion)}".encode()).hexdigest()
    return f"{size}:{head_tail}"


def _listing(folder: Path) -> str:
    entries = sorted(
        (str(Path(root, name).relative_to(folder)), os.stat(os.path.join(root, name)).st_size)
        for root, _, names in os.walk(folder) for name in names
    )  # fmt: skip
    digest = hashlib.sha256(repr(entries).encode()).hexdigest()
    return f"{len(entries)}:{digest}"


def _identity(entry: str | os.PathLike[str]) -> tuple[int, ...]:
    """Which file (or folder) is at `entry` now: device, inode, size and mtime. Every writer
    publishes a new file by a rename, so another job's entry under the same name differs."""
    st = os.stat(entry)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _show_fingerprint(fp: str) -> str:
    kind, _, rest = fp.partition(":")
    if kind == "dir":
        n, _, digest = rest.partition(":")
        return f"{n} files, sha256 {digest[:12]}"
    return f"{kind} bytes, sha256 {rest[:12]}"


def annotation_sha256(annotations: str | Path | None, slide_id: str) -> str:
    """sha256 of the annotation file a slide is tiled with under `--annotations`, or "none"."""
    from balnmp_cache.tiling.annotations import find_annotation

    found = find_annotation(annotations, slide_id) if annotations is not None else None
    return _sha256_file(found) if found is not None else "none"


def _slides(ids: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(s) for s in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"slide{'s' if len(ids) > 1 else ''} {shown}{more}"


def _grouped(problems: Mapping[str, Sequence[str]], limit: int = 6) -> str:
    """`slides 'a', 'b': what differs; slide 'c': ...` (slides with the same problems together)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for sid, items in problems.items():
        groups.setdefault(tuple(items), []).append(sid)
    parts = [f"{_slides(ids)}: {', '.join(items)}" for items, ids in list(groups.items())[:limit]]
    more = "; and more" if len(groups) > limit else ""
    return "; ".join(parts) + more


class ResumeCheck:
    """Decides, for one job, whether a stored slide is finished (see the module docstring)."""

    def __init__(self, out: Path, options: ExtractOptions, overrides: Mapping[str, float] | None,
                 asked: Mapping[str, Any], store: FeatureStore) -> None:  # fmt: skip
        self.out, self.options, self.overrides = Path(out), options, overrides
        self.asked = dict(asked)
        self.store = store
        self.record = SettingsRecord(self.out, self.asked)
        self._verified: set[str] = set()
        self._warned: set[str] = set()
        self._published: dict[str, tuple[Path, tuple[int, ...]]] = {}

    def start(self, paths: Sequence[Path]) -> None:
        """Before any work: the store's record, then every finished slide of `paths`."""
        if self.options.overwrite:
            self._overwrite(paths)
            return
        self.record.check()
        problems: dict[str, list[str]] = {}
        unverified: dict[str, list[str]] = {}
        for path in paths:
            sid = slide_id_of(path)
            info = self._info(sid)
            if info is None:
                continue
            diffs, missing = self.problems(Path(path), info)
            if diffs:
                problems[sid] = diffs
            elif missing:
                unverified[sid] = missing
            else:
                self._verified.add(sid)
        if problems:
            raise ExtractError(
                f"--out {self.out} holds slides made otherwise than this job would: "
                f"{_grouped(problems)}. Pass --overwrite to re-extract them with this job's "
                "settings, or choose another --out (one store holds one kind of features)"
            )
        self._warn_unverified(unverified)
        self._verified.update(unverified)
        self.record.claim()

    def _overwrite(self, paths: Sequence[Path]) -> None:
        """`--overwrite`: this job's settings become the store's; slides outside its list
        that keep other settings are named (the next resume would refuse them)."""
        changed = self.record.mismatch()
        self.record.replace()
        others = sorted(set(self.store.slide_ids) - {slide_id_of(p) for p in paths})
        if changed and others:
            warnings.warn(
                f"--out {self.out}: --overwrite changes the store's settings ({', '.join(changed)}) "
                f"but {_slides(others)} are not among this job's slides and keep the old ones; "
                "extract them too with --overwrite (a resume refuses them), or use another --out",
                ResumeWarning, stacklevel=3,
            )  # fmt: skip

    def state(self, path: Path) -> str:
        """"finished" (verified), "absent" or "damaged" (to extract again); other settings
        raise `ExtractError`."""
        sid = slide_id_of(path)
        if sid in self._verified:
            return "finished"
        if not self.store.backend.has(sid):
            return "absent"
        info = self._info(sid)
        if info is None:
            return "damaged"
        diffs, missing = self.problems(Path(path), info)
        if diffs:
            raise ExtractError(
                f"--out {self.out}: {_slides([sid])}, finished by another job meanwhile, was "
                f"made otherwise than this job would: {', '.join(diffs)}. Pass --overwrite to "
                "re-extract it with this job's settings, or choose another --out"
            )
        self._warn_unverified({sid: missing} if missing else {})
        self._verified.add(sid)
        return "finished"

    def check_record(self) -> None:
        """Between slides: the store's record must still hold this job's settings."""
        self.record.check_unchanged()

    def published(self, sid: str, entry: Path) -> None:
        """This job published `sid` at `entry` (its file or group): `finish` need not read it
        back while it is still that very file (see `_identity`)."""
        with contextlib.suppress(OSError):
            self._published[sid] = (Path(entry), _identity(entry))

    def finish(self, paths: Sequence[Path]) -> None:
        """After the loop: no slide of `paths` was written with other settings meanwhile (by a
        job that held its lock when this one passed it). A slide this job published and that
        is still the same file is its own: not read again."""
        self.record.check_unchanged()
        problems = {}
        for path in paths:
            sid = slide_id_of(path)
            if self._still_ours(sid) or not self.store.backend.has(sid):
                continue
            try:
                info = self.store.backend.info(sid)
            except StoreError:
                continue  # damaged: the next run extracts it again
            diffs = differences(recorded_settings(info, self.asked), self.asked)
            if diffs:
                problems[sid] = diffs
        if problems:
            raise ExtractError(
                f"another job wrote slides into --out {self.out} with other settings while this "
                f"one ran: {_grouped(problems)}. Rerun with --overwrite to re-extract them with "
                "this job's settings, or give each kind of features its own --out"
            )

    def _still_ours(self, sid: str) -> bool:
        entry, ident = self._published.get(sid, (None, None))
        if entry is None:
            return False
        try:
            return _identity(entry) == ident
        except OSError:
            return False

    def _info(self, sid: str) -> Any:
        """The slide's `SlideInfo`; None when absent, or damaged (warned, to extract again)."""
        if not self.store.backend.has(sid):
            return None
        try:
            return self.store.backend.info(sid)
        except StoreError as exc:
            if sid not in self._warned:
                self._warned.add(sid)
                what = str(exc).split(DAMAGED_FIX)[0].rstrip(" :;")
                warnings.warn(f"slide {sid!r}: the stored features are damaged ({what}); "
                              "extracting it again", ResumeWarning, stacklevel=2)  # fmt: skip
            return None

    def problems(self, path: Path, info: Any) -> tuple[list[str], list[str]]:
        """(what differs from this job, what the slide does not record) for a stored slide."""
        stored = recorded_settings(info, self.asked)
        diffs = differences(stored, self.asked)
        missing = [FLAGS.get(k, k) for k in unrecorded(stored, self.asked)]
        lacking = [k for k in CORE if k not in stored]
        if lacking:
            diffs.append(f"records no {', '.join(lacking)} (not written by extract-features)")
        diffs += self._source(path, info.attrs, missing)
        if "annotations" in stored and (stored["annotations"] is None) == (
                self.options.annotations is None):  # fmt: skip
            diffs += self._annotation(info.slide_id, info.attrs, missing)
        diffs += self._override(path, info.slide_id, info.attrs)
        return diffs, missing

    def _source(self, path: Path, attrs: Mapping[str, Any], missing: list[str]) -> list[str]:
        stored = attrs.get("source_fingerprint")
        if stored is None:
            missing.append("the slide file's fingerprint")
            return []
        try:
            now = source_fingerprint(path)
        except OSError as exc:  # the slide vanished meanwhile: nothing to compare
            missing.append(f"its slide file ({exc.strerror or exc})")
            return []
        if now == stored:
            return []
        return [f"its slide file {path} differs from the one its features were made from "
                f"({_show_fingerprint(str(stored))} then, {_show_fingerprint(now)} now)"]

    def _annotation(self, sid: str, attrs: Mapping[str, Any], missing: list[str]) -> list[str]:
        o = self.options
        if o.annotations is None:
            return []
        out = []
        stored = attrs.get("annotations_sha256")
        if stored is None:
            missing.append("the annotation's content")
        else:
            asked = annotation_sha256(o.annotations, sid)
            if asked != stored:
                out.append(self._annotation_change(sid, str(stored), asked))
        if not o.allow_unannotated and not attrs.get("annotations"):
            out.append("its features were made from all tissue under --allow-unannotated (it "
                       "had no usable annotation); pass --allow-unannotated as that job did")
        return out

    def _annotation_change(self, sid: str, stored: str, asked: str) -> str:
        from balnmp_cache.tiling.annotations import find_annotation

        found = find_annotation(self.options.annotations, sid)  # type: ignore[arg-type]
        if found is None:
            return (f"--annotations: it was tiled inside an annotation (sha256 {stored[:12]}) "
                    f"but {self.options.annotations} holds no {sid}.json or .geojson now")
        if stored == "none":
            return (f"--annotations {found} exists now, but its features were made from all "
                    "tissue, without an annotation")
        return (f"--annotations {found} differs from the annotation its features were tiled "
                f"in (sha256 {stored[:12]} then, {asked[:12]} now)")

    def _override(self, path: Path, sid: str, attrs: Mapping[str, Any]) -> list[str]:
        if not self.overrides:
            return []
        from balnmp_cache.slides.mpp import resolve_override

        want = resolve_override(path, sid, None, self.overrides)
        have = attrs.get("slide_mpp")
        if want is None or (have is not None and math.isclose(float(have), want, rel_tol=1e-6)):
            return []
        return [f"--mpp-overrides gives {want!r} µm/px for it, but its features were made at "
                f"{show(have)} µm/px"]

    def _warn_unverified(self, unverified: Mapping[str, Sequence[str]]) -> None:
        if not unverified:
            return
        warnings.warn(
            f"--out {self.out}: {_grouped({s: [', '.join(m)] for s, m in unverified.items()})} "
            "not recorded (written by an older balnmp): skipped as finished on the settings "
            "they do record; pass --overwrite to re-extract them", ResumeWarning, stacklevel=3,
        )  # fmt: skip

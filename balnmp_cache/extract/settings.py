"""The settings that shape a slide's features, recorded once per store and with every slide.

`job_settings` is what a job would make features with. Every slide records it (the
`extract_settings` attribute) and the store records it once in `<out>/extract_settings.json`,
created atomically by the first job (`create_new`: whoever comes second compares). Every later
job compares the record before doing any work and again before each slide, so two jobs of
different settings on one `--out` cannot both succeed; `differences` says what differs, with
the flag that sets it. `--overwrite` replaces the record with the job's own settings.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balnmp_cache import _signals as signals
from balnmp_cache._version import __version__
from balnmp_cache.encoders.preprocess import RESAMPLE_LEGACY
from balnmp_cache.errors import ExtractError
from balnmp_cache.store._atomic import create_new, publish, side_name

if TYPE_CHECKING:
    from balnmp_cache.encoders.base import Encoder
    from balnmp_cache.extract.options import ExtractOptions
    from balnmp_cache.store.types import SlideInfo

__all__ = ["FLAGS", "SETTINGS_ATTR", "SETTINGS_NAME", "SettingsRecord", "differences",
           "job_settings", "recorded_settings"]  # fmt: skip

SETTINGS_NAME = "extract_settings.json"
SETTINGS_ATTR = "extract_settings"
RECORD_VERSION = 1
# Each setting that shapes features -> the flag that sets it (the order of messages).
FLAGS = {
    "encoder": "--encoder", "weights": "--weights", "feature_dim": "--encoder/--flatten",
    "mpp": "--mpp", "level": "--level", "patch_size": "--patch-size",
    "input_size": "--input-size", "tissue": "--tissue", "min_tissue": "--min-tissue",
    "annotations": "--annotations", "dtype": "--dtype",
    "resample": "the resize kernel (resample, set by the encoder and balnmp's version)",
}  # fmt: skip
# A slide that does not record these is not known to be this job's kind (a foreign file).
CORE = ("encoder", "weights", "patch_size")


def job_settings(options: ExtractOptions, encoder: Encoder) -> dict[str, Any]:
    """What this job makes features with (JSON-able). `mpp` and `level` are the tiling asked
    for: a fixed `--level` (or none and no µm/px: level 0) ignores `--mpp`."""
    level = options.level if options.level is not None or options.mpp is not None else 0
    return {
        "encoder": encoder.name,
        "weights": encoder.weights_id,
        "feature_dim": int(encoder.feature_dim),
        "mpp": None if level is not None else float(options.mpp),  # type: ignore[arg-type]
        "level": None if level is None else int(level),
        "patch_size": int(options.patch_size),
        "input_size": int(encoder.input_size),
        "tissue": options.tissue,
        "min_tissue": float(options.min_tissue),
        "annotations": None if options.annotations is None else str(options.annotations),
        "dtype": options.dtype,
        "resample": encoder.preprocess.resample,
    }


def recorded_settings(info: SlideInfo, asked: Mapping[str, Any]) -> dict[str, Any]:
    """What a stored slide was made with: its `extract_settings` attribute, or (slides written
    before it existed) what its other attributes tell; `feature_dim` and `dtype` come from the
    data itself. A setting the slide does not tell is absent."""
    attrs = info.attrs
    stored = attrs.get(SETTINGS_ATTR)
    if isinstance(stored, dict):
        out = dict(stored)
    else:
        named = {"encoder": "encoder", "weights": "weights", "patch_size": "patch_size",
                 "tissue": "tissue", "min_tissue": "min_tissue",
                 "input_size": "encoder_input_size"}  # fmt: skip
        out = {k: attrs[a] for k, a in named.items() if attrs.get(a) is not None}
        if attrs.get("annotations") is not None:  # our writers always wrote it ("" = none)
            out["annotations"] = attrs["annotations"] or None
        if asked.get("level") is None and attrs.get("target_mpp") is not None:
            out.update(mpp=attrs["target_mpp"], level=None)
        elif asked.get("level") is not None and attrs.get("level") is not None:
            out.update(level=attrs["level"], mpp=None)
    out.update(feature_dim=int(info.feature_dim), dtype=info.dtype.name)
    if "resample" not in out and asked.get("resample") is not None:
        kernel = _legacy_resample(attrs, str(asked["resample"]))
        if kernel is not None:
            out["resample"] = kernel
    return out


def _legacy_resample(attrs: Mapping[str, Any], asked: str) -> str | None:
    """A slide written before `resample` was recorded: balnmp then resized the patches of
    that kind of encoder with another kernel (`RESAMPLE_LEGACY`); a slide whose patches were
    read at the encoder's side was not resized at all, so any kernel is its kernel. None: the
    slide does not tell (no `read_size` or `encoder_input_size`: not written by balnmp)."""
    old = RESAMPLE_LEGACY.get(asked)
    read, side = attrs.get("read_size"), attrs.get("encoder_input_size")
    if old is None:
        return asked
    if read is None or side is None:
        return None
    return old if int(read) != int(side) else asked


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "annotations":  # a folder moved or copied elsewhere is the same setting
        return (a is None) == (b is None)
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return str(a) == str(b)


def show(value: Any) -> str:
    """A value as messages print it: `none`, numbers as they are, strings quoted."""
    return "none" if value is None else repr(value)


def differences(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """`--flag <stored> (asked for <asked>)` for every recorded setting that differs."""
    return [f"{FLAGS.get(k, k)} {show(stored[k])} (asked for {show(v)})"
            for k, v in asked.items() if k in stored and not _same(k, stored[k], v)]  # fmt: skip


def unrecorded(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """The settings a slide does not record (written by an older balnmp or another tool)."""
    return [k for k in asked if k not in stored]


class SettingsRecord:
    """`<out>/extract_settings.json`: the settings the store is made with."""

    def __init__(self, out: Path, asked: Mapping[str, Any]) -> None:
        self.out = Path(out)
        self.path = self.out / SETTINGS_NAME
        self.asked = dict(asked)

    def _text(self) -> bytes:
        record = {"balnmp_extract_settings": RECORD_VERSION, "settings": self.asked,
                  "balnmp_version": __version__, "host": socket.gethostname(),
                  "pid": os.getpid(),
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        return (json.dumps(record, indent=2) + "\n").encode()

    def read(self) -> dict[str, Any] | None:
        """The recorded settings, None when there is no record; a damaged record or one of a
        newer balnmp is an `ExtractError`."""
        for attempt in range(20):  # a record being written in place (no hard links) settles
            try:
                raw = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            try:
                record = json.loads(raw)
                break
            except ValueError as exc:
                if attempt == 19:
                    raise ExtractError(
                        f"{self.path} is damaged ({exc}); it records the settings this store "
                        f"is made with. Move it aside (mv {self.path} {self.path}.damaged) and "
                        "rerun: the job checks every finished slide of its list against its own "
                        "settings and records them again"
                    ) from exc
                time.sleep(0.05)
        version = record.get("balnmp_extract_settings") if isinstance(record, dict) else None
        if not isinstance(version, int) or version > RECORD_VERSION:
            raise ExtractError(
                f"{self.path} is not a settings record this balnmp ({__version__}) can read "
                f"(version {version!r}; this one reads up to {RECORD_VERSION}): upgrade balnmp, "
                "or choose another --out"
            )
        return dict(record.get("settings") or {})

    def mismatch(self) -> list[str]:
        """How the record differs from this job's settings ([] when equal or absent)."""
        stored = self.read()
        return [] if stored is None else differences(stored, self.asked)

    def check(self) -> None:
        """Refuse a store recorded with other settings (before any work)."""
        diffs = self.mismatch()
        if diffs:
            raise ExtractError(
                f"--out {self.out} is made with other settings ({self.path}): "
                f"{', '.join(diffs)}. Pass --overwrite to re-extract every slide with this "
                "job's settings, or choose another --out (one store holds one kind of features)"
            )

    def claim(self) -> None:
        """Record this job's settings unless a record exists; a record written meanwhile by
        another job is compared (exactly one of two racing jobs creates it)."""
        with signals.critical():
            created = create_new(self.path, self._text())
        if not created:
            self.check()

    def replace(self) -> None:
        """`--overwrite`: this job's settings become the store's (any running job of other
        settings stops at its next slide)."""
        self.out.mkdir(parents=True, exist_ok=True)
        staged = side_name(self.path, "tmp")
        with signals.critical():
            try:
                staged.write_bytes(self._text())
                publish(staged, self.path)
            finally:
                staged.unlink(missing_ok=True)

    def check_unchanged(self) -> None:
        """Between slides: stop when another job replaced the record with other settings."""
        stored = self.read()
        if stored is None:
            self.claim()  # deleted meanwhile: record it again
            return
        diffs = differences(stored, self.asked)
        if diffs:
            theirs = ", ".join(d.replace(" (asked for ", " (this job: ") for d in diffs)
            raise ExtractError(
                f"the settings of --out {self.out} were changed by another job while this one "
                f"ran ({self.path} now records {theirs}); this job stops. Rerun with the "
                "settings the store should hold (--overwrite replaces the others), or choose "
                "another --out"
            )

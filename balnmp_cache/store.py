"""Feature store: per-slide bags of patch embeddings on disk, and the cohort loader.

`FeatureStore` is a thin front that dispatches to one backend per on-disk format through a
registry (`BACKENDS`): per-slide HDF5 (``store_h5``), Zarr v3 (``store_zarr``), existing
CLAM / TRIDENT caches (``store_foreign``) and cohort packs (``pack``). `load_bags` is the one
loader the MIL stage uses: any store or pack -> packed arrays + offsets, validated.
"""

from __future__ import annotations

import abc
import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Root attributes every slide written by balnmp carries (DESIGN.md). Missing ones read as None.
KNOWN_ATTRS = (
    "slide_id", "source_path", "encoder", "weights", "feature_dim", "patch_size",
    "patch_size_level0", "target_mpp", "slide_mpp", "level", "tissue", "annotations",
    "balnmp_version", "created",
)  # fmt: skip
COORDS_ATTRS = (
    "patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
)  # fmt: skip
FEATURE_DTYPES = ("float16", "float32")
# Attributes a cohort shares; a pack records them on its root when every slide agrees.
COMMON_ATTRS = ("encoder", "weights", "target_mpp", "patch_size", "patch_size_level0", "tissue")


class StoreError(Exception):
    """A feature store, slide file or pack cannot be used; the message names it and the fix."""


class MissingSlideError(StoreError, KeyError):
    """A slide id is not in the store (also a KeyError so mapping idioms work)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Bag:
    """One slide's patch embeddings: features (N, D), coords (N, 2) int64 level-0 top-left."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict
    coords_attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


@dataclass
class SlideInfo:
    """What a backend knows about one slide without reading its features."""

    slide_id: str
    n_patches: int
    feature_dim: int
    dtype: np.dtype
    attrs: dict
    coords_attrs: dict
    source: str  # file (or group) that holds the slide, for error messages


def check_slide_id(slide_id: str) -> str:
    """Slide ids become file / group names: refuse separators and hidden or empty names."""
    sid = str(slide_id)
    if not sid or sid.startswith(".") or "/" in sid or "\\" in sid or "\0" in sid:
        raise StoreError(
            f"slide id {sid!r} cannot be stored: ids must be non-empty, must not start with "
            "'.' and must not contain '/' or '\\'; rename the slide file"
        )
    return sid


def check_dtype(dtype: Any) -> np.dtype:
    """Feature dtype of a new slide: float16 (default, half the disk) or float32."""
    dt = np.dtype(dtype)
    if dt.name not in FEATURE_DTYPES:
        raise StoreError(f"feature dtype {dt.name!r} is not supported; use one of {FEATURE_DTYPES}")
    return dt


def plain(value: Any) -> Any:
    """numpy scalars/arrays/bytes -> plain Python values (JSON-able)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()] if value.dtype.kind in "OS" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def with_known(attrs: dict) -> dict:
    """Fill the DESIGN.md attribute names that are absent with None (HDF5 has no null: a None
    value is written as an absent attribute). Other values, "" included, read back as is."""
    out = {k: None for k in KNOWN_ATTRS}
    out.update(attrs)
    return out


def root_attrs(slide_id: str, feature_dim: int, attrs: dict) -> dict:
    """A writer's file-root attributes: version and creation time, the caller's, then the
    slide id and feature dimension (which the caller cannot override)."""
    from datetime import datetime, timezone

    from balnmp_cache._version import __version__

    root = {"balnmp_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    root.update(attrs)
    root.update(slide_id=slide_id, feature_dim=feature_dim)
    return root


def check_batch(slide_id: str, feature_dim: int, closed: bool, features: Any,
                coords: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one writer batch (features (b, D), coords (b, 2)); StoreError names the slide."""
    if closed:
        raise StoreError(f"slide {slide_id!r}: writer already closed")
    features, coords = np.asarray(features), np.asarray(coords)
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise StoreError(f"slide {slide_id!r}: features batch has shape "
                         f"{features.shape}, expected (b, {feature_dim})")
    if coords.shape != (features.shape[0], 2):
        raise StoreError(f"slide {slide_id!r}: coords batch has shape {coords.shape}, "
                         f"expected ({features.shape[0]}, 2)")
    return features, coords


class StoreBackend(abc.ABC):
    """One on-disk format. Subclasses implement `slide_ids`, `info`, `read_into`; writable
    ones also `writer` and `remove`."""

    writable = False

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.mode = mode

    @abc.abstractmethod
    def slide_ids(self) -> list[str]:
        """Complete slides, sorted."""

    def has(self, slide_id: str) -> bool:
        """Is this complete slide present? (backends override with a cheaper test)"""
        return slide_id in set(self.slide_ids())

    @abc.abstractmethod
    def info(self, slide_id: str) -> SlideInfo:
        """Shape, dtype and attributes of one slide, without reading its features."""

    @abc.abstractmethod
    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        """Read a slide straight into preallocated row slices (no intermediate copy)."""

    def read_many(
        self, slide_ids: Sequence[str], features: np.ndarray, coords: np.ndarray,
        offsets: np.ndarray,
    ) -> None:  # fmt: skip
        """Fill packed arrays; packs override this with one contiguous read."""
        for i, sid in enumerate(slide_ids):
            a, b = int(offsets[i]), int(offsets[i + 1])
            if b > a:
                self.read_into(sid, features[a:b], coords[a:b])

    def nonfinite_rows(self, slide_ids: Sequence[str]) -> np.ndarray | None:
        """Per-slide NaN/Inf row counts known without reading (packs), else None (scan)."""
        return None

    def problems(self) -> list[tuple[str, list[str]]]:
        """Problems found when opening (e.g. duplicate ids in a pack): (message, slides)."""
        return []

    def writer(self, slide_id: str, feature_dim: int, dtype: Any, attrs: dict,
               coords_attrs: dict) -> Any:  # fmt: skip
        raise StoreError(f"{self.path}: this {type(self).__name__} store is read-only")

    def remove(self, slide_id: str) -> None:
        raise StoreError(f"{self.path}: this {type(self).__name__} store is read-only")

    def close(self) -> None:  # noqa: B027 (optional hook, default: nothing to release)
        """Release open handles (most backends open files per call and hold none)."""


# name -> "module:Class" (imported on first use, so `h5` never imports zarr or torch)
BACKENDS: dict[str, str | type[StoreBackend]] = {
    "h5": "balnmp_cache.store_h5:H5Backend",
    "zarr": "balnmp_cache.store_zarr:ZarrBackend",
    "clam": "balnmp_cache.store_foreign:ClamBackend",
    "trident": "balnmp_cache.store_foreign:TridentBackend",
    "pack": "balnmp_cache.pack:PackBackend",
}


def register_backend(name: str, backend: str | type[StoreBackend]) -> None:
    """Add a format: `backend` is a StoreBackend subclass or a lazy "module:Class" path."""
    BACKENDS[name] = backend


def backend_class(name: str) -> type[StoreBackend]:
    target = BACKENDS.get(name)
    if target is None:
        raise StoreError(f"unknown feature store format {name!r}; known: {sorted(BACKENDS)}")
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
        BACKENDS[name] = target
    return target


_TRIDENT_PATCH_DIR = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")


def _is_zarr(p: Path) -> bool:
    return p.suffix == ".zarr" or (p.is_dir() and (p / "zarr.json").is_file())


def _is_pack(p: Path) -> bool:
    if p.is_file():
        return True  # per-slide stores are directories; a single file can only be a pack
    return _is_zarr(p) and p.is_dir() and '"balnmp_pack"' in _read_text(p / "zarr.json")


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except OSError:
        return ""


def _is_clam(p: Path) -> bool:
    return (p / "h5_files").is_dir() or (p / "pt_files").is_dir()


def _is_trident(p: Path) -> bool:
    if p.name.startswith("features_") and _TRIDENT_PATCH_DIR.match(p.parent.name):
        return True
    if _TRIDENT_PATCH_DIR.match(p.name):
        return any(c.name.startswith("features_") for c in p.iterdir() if c.is_dir())
    return p.is_dir() and any(
        _TRIDENT_PATCH_DIR.match(c.name) for c in p.iterdir() if c.is_dir()
    )


# Format detectors, tried in order; the first match wins (h5 is the directory fallback).
DETECTORS: list[tuple[str, Callable[[Path], bool]]] = [
    ("pack", _is_pack),
    ("zarr", _is_zarr),
    ("clam", _is_clam),
    ("trident", _is_trident),
    ("h5", lambda p: p.is_dir() or not p.exists()),
]


def infer_format(path: str | Path) -> str:
    """Guess the store format from the path (see DETECTORS)."""
    p = Path(path)
    for name, detect in DETECTORS:
        if detect(p):
            return name
    raise StoreError(f"{p}: not a feature store (expected a directory of .h5 files, a .zarr "
                     "store, a CLAM or TRIDENT output directory, or a pack file)")


class FeatureStore:
    """Slides -> bags on disk. `mode="r"` reads; `mode="a"` also creates and writes slides.

    Only complete slides are listed: writers finalise atomically, temp files are invisible.
    """

    def __init__(self, path: str | Path, mode: str = "r", format: str | None = None) -> None:
        if mode not in ("r", "a"):
            raise StoreError(f"{path}: mode must be 'r' or 'a', not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.format = format or infer_format(self.path)
        cls = backend_class(self.format)
        if mode == "a" and not cls.writable:
            raise StoreError(f"{self.path}: the {self.format!r} format is read-only; write a "
                             "new store with format='h5' or 'zarr'")
        if mode == "r" and not self.path.exists():
            raise StoreError(f"{self.path}: no such feature store; check the path")
        self.backend = cls(self.path, mode)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, mode={self.mode!r}, format={self.format!r})"

    @property
    def slide_ids(self) -> list[str]:
        return sorted(self.backend.slide_ids())

    def __len__(self) -> int:
        return len(self.backend.slide_ids())

    def __contains__(self, slide_id: object) -> bool:
        sid = str(slide_id)
        return bool(sid) and not sid.startswith(".") and "/" not in sid and self.backend.has(sid)

    def __iter__(self) -> Iterator[str]:
        return iter(self.slide_ids)

    def _known(self, slide_id: str) -> str:
        sid = str(slide_id)
        if sid not in self:
            raise MissingSlideError(f"slide {sid!r} is not in the feature store {self.path}")
        return sid

    def info(self, slide_id: str) -> SlideInfo:
        """Shape, dtype and attributes of one slide, without reading its features."""
        return self.backend.info(self._known(slide_id))

    def __getitem__(self, slide_id: str) -> Bag:
        info = self.info(slide_id)
        features = np.empty((info.n_patches, info.feature_dim), dtype=info.dtype)
        coords = np.empty((info.n_patches, 2), dtype=np.int64)
        if info.n_patches:
            self.backend.read_into(info.slide_id, features, coords)
        return Bag(info.slide_id, features, coords, info.attrs, info.coords_attrs)

    def attrs(self, slide_id: str) -> dict:
        """Root attributes of one slide (no feature read); unknown DESIGN.md names are None."""
        return self.info(slide_id).attrs

    def is_complete(self, slide_id: str) -> bool:
        """True once a slide was finalised (a crashed or running writer leaves it absent)."""
        return str(slide_id) in self

    def remove(self, slide_id: str) -> None:
        self.backend.remove(self._known(slide_id))

    def writer(self, slide_id: str, feature_dim: int, dtype: Any = "float16",
               attrs: dict | None = None, coords_attrs: dict | None = None) -> Any:  # fmt: skip
        """Context manager with `.append(features (b, D), coords (b, 2))`; finalises on clean
        exit, discards everything on exception."""
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only; use FeatureStore(path, mode='a')")
        return self.backend.writer(check_slide_id(slide_id), int(feature_dim),
                                   check_dtype(dtype), dict(attrs or {}), dict(coords_attrs or {}))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PackedBags:
    """All bags of a cohort concatenated: bag i is rows offsets[i]:offsets[i+1]."""

    features: np.ndarray  # (P, D) float16 or float32
    coords: np.ndarray  # (P, 2) int64
    offsets: np.ndarray  # (B + 1,) int64, offsets[0] == 0, offsets[-1] == P
    slide_ids: list[str]
    attrs: list[dict]
    coords_attrs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # warnings raised (on_problem="warn")
    source: str = ""

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_patches(self) -> np.ndarray:
        return np.diff(self.offsets)

    def bag(self, i: int) -> Bag:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        ca = self.coords_attrs[i] if self.coords_attrs else {}
        return Bag(self.slide_ids[i], self.features[a:b], self.coords[a:b], self.attrs[i], ca)


def load_bags(
    source: str | Path | FeatureStore, slide_ids: Sequence[str] | None = None,
    on_problem: str = "error", allow_mixed: bool = False,
) -> PackedBags:  # fmt: skip
    """Load a per-slide store or a pack into packed arrays, validated.

    Problems (unreadable files, NaN/Inf, feature-dim mismatch, duplicate ids, empty bags,
    requested slides missing, mixed encoders / weights / µm/px unless `allow_mixed`) raise
    one StoreError naming the slides, or with on_problem="warn" warn and skip those slides.
    """
    from balnmp_cache.store_load import load_packed

    return load_packed(source, slide_ids, on_problem, allow_mixed)


__all__ = [
    "Bag", "FeatureStore", "MissingSlideError", "PackedBags", "SlideInfo", "StoreBackend",
    "StoreError", "infer_format", "load_bags", "register_backend",
]  # fmt: skip

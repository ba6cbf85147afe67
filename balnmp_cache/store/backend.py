"""The contract of one on-disk format (`StoreBackend`), the format registry and detection.

Formats: per-slide HDF5 (`h5`), Zarr v3 (`zarr`), existing CLAM / TRIDENT caches (`clam`,
`trident`, read-only) and cohort packs (`pack`). A new format is a `StoreBackend` subclass
registered with `register_backend` and, when it can be told from its path, a detector.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from balnmp_cache._registry import Registry
from balnmp_cache.errors import StoreError
from balnmp_cache.store.types import SlideInfo, SlideWriter


class StoreBackend(abc.ABC):
    """One on-disk format. Subclasses implement `slide_ids`, `info`, `read_into`; writable
    ones also `writer` and `remove`."""

    writable: ClassVar[bool] = False  # can `FeatureStore(path, mode="a")` write slides?

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

    def patch_files(self, slide_id: str) -> np.ndarray | None:
        """Each row's source file (N,) str for a slide read from a folder of patches; None
        when the slide records none (other slides, stores written before names were kept,
        formats that have no names)."""
        return None

    def nonfinite_rows(self, slide_ids: Sequence[str]) -> np.ndarray | None:
        """Per-slide NaN/Inf row counts known without reading (packs), else None (scan)."""
        return None

    def problems(self) -> list[tuple[str, list[str]]]:
        """Problems found when opening (e.g. duplicate ids in a pack): (message, slides)."""
        return []

    def writer(self, slide_id: str, feature_dim: int, dtype: np.dtype, attrs: dict,
               coords_attrs: dict) -> SlideWriter:  # fmt: skip
        raise StoreError(f"{self.path}: this {type(self).__name__} store is read-only")

    def remove(self, slide_id: str) -> None:
        raise StoreError(f"{self.path}: this {type(self).__name__} store is read-only")

    def close(self) -> None:  # noqa: B027 (optional hook, default: nothing to release)
        """Release open handles (most backends open files per call and hold none)."""


# Lazy "module:Class" entries, imported on first use (so `h5` never imports zarr or torch).
BACKENDS: Registry[type[StoreBackend]] = Registry("feature store format", "--format")
BACKENDS.register("h5", "balnmp_cache.store.h5:H5Backend")
BACKENDS.register("zarr", "balnmp_cache.store.zarr:ZarrBackend")
BACKENDS.register("clam", "balnmp_cache.store.foreign:ClamBackend")
BACKENDS.register("trident", "balnmp_cache.store.foreign:TridentBackend")
BACKENDS.register("pack", "balnmp_cache.store.pack:PackBackend")


def register_backend(name: str, backend: str | type[StoreBackend], replace: bool = False) -> None:
    """Add a format: `backend` is a `StoreBackend` subclass or a lazy "module:Class" path."""
    BACKENDS.register(name, backend, replace=replace)


def writable_formats() -> list[str]:
    """Formats whose backend can write slides (`writable`): the `--format` choices."""
    return [name for name, cls in BACKENDS.items() if cls.writable]


def backend_class(name: str) -> type[StoreBackend]:
    """The backend class of a registered format (imports it on first use)."""
    if name not in BACKENDS:
        raise StoreError(BACKENDS.unknown(name))
    return BACKENDS.get(name)


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


def existing_format(path: str | Path) -> str | None:
    """The format of what already lies at `path`, or None when nothing store-like is there
    (missing, an empty folder, a folder of other files). Unlike `infer_format` there is no
    fallback: a folder counts as `h5` only when it holds a visible `.h5` file."""
    p = Path(path)
    if not p.exists():
        return None
    for name, detect in DETECTORS:
        if name != "h5" and detect(p):
            return name
    if p.is_dir() and any(c.suffix == ".h5" and not c.name.startswith(".") for c in p.iterdir()):
        return "h5"
    return None


def infer_format(path: str | Path) -> str:
    """Guess the store format from the path (see DETECTORS)."""
    p = Path(path)
    for name, detect in DETECTORS:
        if detect(p):
            return name
    raise StoreError(f"{p}: not a feature store (expected a directory of .h5 files, a .zarr "
                     "store, a CLAM or TRIDENT output directory, or a pack file)")



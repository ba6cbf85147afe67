"""What a feature store holds: a slide's `Bag`, its `SlideInfo`, a cohort's `PackedBags`, and
the attribute names and checks every format shares (see docs/format.md)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from balnmp_cache.errors import StoreError

# Root attributes every slide written by balnmp carries (docs/format.md). Missing ones read as None.
KNOWN_ATTRS = (
    "slide_id", "source_path", "encoder", "weights", "feature_dim", "patch_size",
    "patch_size_level0", "target_mpp", "slide_mpp", "level", "tissue", "annotations",
    "balnmp_version", "created",
)  # fmt: skip
COORDS_ATTRS = (
    "patch_size", "patch_size_level0", "level0_magnification", "target_magnification",
)  # fmt: skip
FEATURE_DTYPES = ("float16", "float32")
# What to do about a damaged slide, for every format's message: a resume extracts it again.
DAMAGED_FIX = ("rerun `extract-features` with the options that made the store: it extracts "
               "damaged slides again (--overwrite redoes every slide)")
# Attributes a cohort shares; a pack records them on its root when every slide agrees.
COMMON_ATTRS = ("encoder", "weights", "target_mpp", "patch_size", "patch_size_level0", "tissue")
# The array of each row's source file (slides read from a folder of patches, and packs).
PATCH_FILES = "patch_files"


@dataclass
class Bag:
    """One slide's patch embeddings: features (N, D), coords (N, 2) int64 level-0 top-left.

    `patch_files` (N,) str: for a slide read from a folder of patches, the file each row came
    from (its path relative to the folder, e.g. `4_0_256_512.jpg`); None for other slides.
    """

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    attrs: dict
    coords_attrs: dict = field(default_factory=dict)
    patch_files: np.ndarray | None = None

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
    has_patch_files: bool = False  # records each row's source file (`patch_files`)


def check_slide_id(slide_id: str) -> str:
    """Slide ids become file / group names: refuse separators and hidden or empty names."""
    sid = str(slide_id)
    if not sid or sid.startswith(".") or "/" in sid or "\\" in sid or "\0" in sid:
        raise StoreError(
            f"slide id {sid!r} cannot be stored: ids must be non-empty, must not start with "
            "'.' and must not contain '/' or '\\'; rename the slide file"
        )
    return sid


class SlideWriter(abc.ABC):
    """Streams one slide into a store: `append` batches inside a `with` block; a clean exit
    publishes the slide (`commit`), an exception discards it (`abort`), and so does a commit
    that fails (a full disk): no temp file is left behind either way."""

    @abc.abstractmethod
    def append(self, features: np.ndarray, coords: np.ndarray,
               patch_files: np.ndarray | None = None) -> None:
        """Add a batch: features (b, D), coords (b, 2) level-0 top-left (x, y) and, for a slide
        read from a folder of patches, each row's source file (b,) (see `PatchFileLog`)."""

    @abc.abstractmethod
    def commit(self) -> Path: ...

    @abc.abstractmethod
    def abort(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


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
    """Fill the attribute names of docs/format.md that are absent with None (HDF5 has no
    null: a None value is written as an absent attribute). Other values, "" included, read
    back as is."""
    out = {k: None for k in KNOWN_ATTRS}
    out.update(attrs)
    return out


def root_attrs(slide_id: str, feature_dim: int, attrs: dict) -> dict:
    """A writer's file-root attributes: version and creation time, the caller's, then the
    slide id and feature dimension (which the caller cannot override)."""
    from datetime import datetime, timezone

    from balnmp_cache._version import __version__

    root: dict[str, Any] = {"balnmp_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    root.update(attrs)
    root.update(slide_id=slide_id, feature_dim=feature_dim)
    return root


def check_batch(slide_id: str, feature_dim: int, closed: bool, features: Any, coords: Any,
                patch_files: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one writer batch (features (b, D), coords (b, 2), optional patch_files (b,)
    non-empty str); StoreError names the slide."""
    if closed:
        raise StoreError(f"slide {slide_id!r}: writer already closed")
    features, coords = np.asarray(features), np.asarray(coords)
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise StoreError(f"slide {slide_id!r}: features batch has shape "
                         f"{features.shape}, expected (b, {feature_dim})")
    if coords.shape != (features.shape[0], 2):
        raise StoreError(f"slide {slide_id!r}: coords batch has shape {coords.shape}, "
                         f"expected ({features.shape[0]}, 2)")
    if patch_files is None:
        return features, coords, None
    files = np.asarray(patch_files)
    if files.shape != (features.shape[0],) or (files.size and files.dtype.kind not in "UOT"):
        raise StoreError(f"slide {slide_id!r}: patch_files batch has shape {files.shape} "
                         f"({files.dtype}), expected ({features.shape[0]},) str")
    if not all(isinstance(f, str) and f and "\0" not in f for f in files.tolist()):
        raise StoreError(f"slide {slide_id!r}: patch_files must be non-empty str without NUL")
    return features, coords, files.astype(str)


class PatchFileLog:
    """The source file names a writer was given, batch by batch (`SlideWriter.append`).

    A slide records names for every row or for none: the first batch with rows decides, and
    a later batch that differs is refused, so a stored `patch_files` is always aligned with
    `coords`. `names` is None when no batch gave any."""

    def __init__(self, slide_id: str) -> None:
        self.slide_id = slide_id
        self.rows = 0
        self.names: list[str] | None = None

    def add(self, files: np.ndarray | None, rows: int) -> None:
        """Record a validated batch's names (`check_batch`) before its rows are written."""
        if rows == 0:
            return
        if self.rows and (files is None) != (self.names is None):
            given = "without" if files is None else "with"
            raise StoreError(f"slide {self.slide_id!r}: a batch {given} patch_files after "
                             f"{self.rows} rows that were not: give them for every row or none")
        if files is not None:
            if self.names is None:
                self.names = []
            self.names.extend(files.tolist())
        self.rows += rows


def checked_patch_files(source: str, files: Any, n: int, fix: str = DAMAGED_FIX) -> np.ndarray:
    """A stored `patch_files` read back: (n,) str, else it is damaged (StoreError, `fix`)."""
    out = np.asarray(plain(np.asarray(files)), dtype=str)
    if out.shape != (n,):
        raise StoreError(f"{source}: 'patch_files' has shape {out.shape}, expected ({n},); "
                         f"{fix}")
    return out


@dataclass
class PackedBags:
    """All bags of a cohort concatenated: bag i is rows offsets[i]:offsets[i+1].

    `patch_files` (P,) str, aligned with the rows: each row's source file for slides read from
    a folder of patches, "" for rows of other slides; None when no slide recorded them.
    """

    features: np.ndarray  # (P, D) float16 or float32
    coords: np.ndarray  # (P, 2) int64
    offsets: np.ndarray  # (B + 1,) int64, offsets[0] == 0, offsets[-1] == P
    slide_ids: list[str]
    attrs: list[dict]
    coords_attrs: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # warnings raised (on_problem="warn")
    source: str = ""
    patch_files: np.ndarray | None = None

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
        files = None if self.patch_files is None else self.patch_files[a:b]
        if files is not None and not any(files):
            files = None
        return Bag(self.slide_ids[i], self.features[a:b], self.coords[a:b], self.attrs[i], ca,
                   files)

"""`FeatureStore`: slides -> bags on disk, one front over every registered format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from balnmp_cache.errors import MissingSlideError, StoreError
from balnmp_cache.store.backend import backend_class, infer_format
from balnmp_cache.store.types import Bag, SlideInfo, SlideWriter, check_dtype, check_slide_id

__all__ = ["FeatureStore"]


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
        files = self.backend.patch_files(info.slide_id) if info.has_patch_files else None
        return Bag(info.slide_id, features, coords, info.attrs, info.coords_attrs, files)

    def attrs(self, slide_id: str) -> dict:
        """Root attributes of one slide (no feature read); names of docs/format.md that the
        slide lacks are None."""
        return self.info(slide_id).attrs

    def is_complete(self, slide_id: str) -> bool:
        """True once a slide was finalised (a crashed or running writer leaves it absent)."""
        return str(slide_id) in self

    def remove(self, slide_id: str) -> None:
        self.backend.remove(self._known(slide_id))

    def writer(self, slide_id: str, feature_dim: int, dtype: DTypeLike = "float16",
               attrs: dict | None = None, coords_attrs: dict | None = None) -> SlideWriter:  # fmt: skip
        """Context manager with `.append(features (b, D), coords (b, 2), patch_files=None)`
        (`patch_files` (b,): each row's source file, for a folder of patches); finalises on
        clean exit, discards everything on exception."""
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

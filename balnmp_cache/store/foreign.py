"""Read caches extracted by other tools, unchanged: CLAM and TRIDENT output directories.

CLAM: `<dir>/h5_files/<slide_id>.h5` (features + coords) and/or `<dir>/pt_files/<slide_id>.pt`
(a torch tensor (N, D), loaded with weights_only=True; no coordinates: coords read as -1).
TRIDENT: `<job>/<mag>x_<ps>px_<ovl>px_overlap/features_<encoder>/<slide_id>.h5`; the store
path may be the job directory, the patch directory or the features directory itself (when
several encoders / magnifications exist, point at the one you want).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from balnmp_cache.errors import StoreError
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.h5 import H5Backend, open_h5, read_file_into, slide_info
from balnmp_cache.store.types import SlideInfo, with_known

TRIDENT_PATCH_DIR = re.compile(r"^(?P<mag>\d+(?:\.\d+)?)x_(?P<ps>\d+)px_(?P<ovl>\d+)px_overlap$")


def _load_pt(path: Path) -> Any:
    """A CLAM .pt feature tensor, memory-mapped (no full read until sliced); never unpickles
    arbitrary objects (weights_only=True)."""
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged pickle stream can fail with almost any error type
        raise StoreError(f"{path}: cannot be loaded as a torch tensor ({e}); the file is "
                         "corrupted or truncated - re-extract the slide") from e
    if isinstance(obj, dict) and "features" in obj:
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor) or obj.ndim not in (2, 3):
        raise StoreError(f"{path}: expected a (N, D) feature tensor, found {type(obj).__name__}")
    return obj.reshape(-1, obj.shape[-1]) if obj.ndim == 3 else obj


def _numpy_dtype(tensor: Any) -> np.dtype:
    return np.dtype("float16") if str(tensor.dtype) == "torch.float16" else np.dtype("float32")


class ClamBackend(StoreBackend):
    """A CLAM feature directory: `h5_files/` preferred (it has coords), `pt_files/` otherwise."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self.h5_dir, self.pt_dir = path / "h5_files", path / "pt_files"

    def _stems(self, folder: Path, suffix: str) -> set[str]:
        if not folder.is_dir():
            return set()
        return {p.name[: -len(suffix)] for p in folder.iterdir()
                if p.name.endswith(suffix) and not p.name.startswith(".")}  # fmt: skip

    def slide_ids(self) -> list[str]:
        return sorted(self._stems(self.h5_dir, ".h5") | self._stems(self.pt_dir, ".pt"))

    def _h5_has_features(self, slide_id: str) -> bool:
        h5 = self.h5_dir / f"{slide_id}.h5"
        if not h5.is_file():
            return False
        with open_h5(h5) as f:
            return "features" in f

    def info(self, slide_id: str) -> SlideInfo:
        h5 = self.h5_dir / f"{slide_id}.h5"
        if self._h5_has_features(slide_id):
            with open_h5(h5) as f:
                return slide_info(h5, slide_id, f)
        pt = self.pt_dir / f"{slide_id}.pt"
        if not pt.is_file():
            raise StoreError(f"{h5}: has no 'features' dataset and there is no {pt}")
        tensor = _load_pt(pt)
        n, dim = (int(x) for x in tensor.shape)
        attrs = with_known({"slide_id": slide_id, "feature_dim": dim})
        return SlideInfo(slide_id, n, dim, _numpy_dtype(tensor), attrs, {}, str(pt))

    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        h5 = self.h5_dir / f"{slide_id}.h5"
        if self._h5_has_features(slide_id):
            read_file_into(h5, features, coords)
            return
        pt = self.pt_dir / f"{slide_id}.pt"
        tensor = _load_pt(pt)
        if tuple(tensor.shape) != features.shape:
            raise StoreError(f"{pt}: shape {tuple(tensor.shape)} changed while reading")
        try:
            features[...] = tensor.float().numpy() if features.dtype == np.float32 else tensor
        except (RuntimeError, TypeError) as e:
            raise StoreError(f"{pt}: reading the tensor failed ({e}); re-extract the slide") from e
        coords.fill(-1)
        if h5.is_file():  # a CLAM patch file beside it may still hold the coordinates
            with open_h5(h5) as f:
                if "coords" in f and f["coords"].shape == coords.shape:
                    coords[...] = f["coords"][()]


def _single(candidates: list[Path], where: Path, what: str) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise StoreError(f"{where}: no TRIDENT {what} directory found")
    names = ", ".join(str(c.relative_to(where)) for c in candidates)
    raise StoreError(f"{where}: several TRIDENT {what} directories ({names}); pass the one "
                     "to use as FEATURES")


def trident_features_dir(path: Path) -> Path:
    """Resolve a job / patch / features directory to one `features_<encoder>` directory."""
    if path.name.startswith("features_") and TRIDENT_PATCH_DIR.match(path.parent.name):
        return path
    if TRIDENT_PATCH_DIR.match(path.name):
        subdirs = sorted(p for p in path.glob("features_*") if p.is_dir())
        return _single(subdirs, path, "features_<encoder>")
    subdirs = sorted(p for p in path.glob("*/features_*")
                     if p.is_dir() and TRIDENT_PATCH_DIR.match(p.parent.name))  # fmt: skip
    return _single(subdirs, path, "<mag>x_<ps>px_<ovl>px_overlap/features_<encoder>")


class TridentBackend(H5Backend):
    """A TRIDENT features directory; encoder / patch size come from the directory names."""

    writable = False

    def __init__(self, path: Path, mode: str) -> None:
        features_dir = trident_features_dir(path)
        super().__init__(features_dir, "r")
        m = TRIDENT_PATCH_DIR.match(features_dir.parent.name)
        assert m is not None  # guaranteed by trident_features_dir
        self.defaults = {"encoder": features_dir.name[len("features_"):],
                         "patch_size": int(m["ps"]), "overlap": int(m["ovl"]),
                         "target_magnification": float(m["mag"])}  # fmt: skip

    def info(self, slide_id: str) -> SlideInfo:
        info = super().info(slide_id)
        for key, value in self.defaults.items():
            if info.attrs.get(key) is None:
                info.attrs[key] = value
        return info

    def writer(self, *args: Any, **kwargs: Any) -> Any:
        return StoreBackend.writer(self, *args, **kwargs)

    def remove(self, slide_id: str) -> None:
        StoreBackend.remove(self, slide_id)

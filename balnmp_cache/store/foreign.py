"""Read caches extracted by other tools, unchanged: CLAM and TRIDENT output directories.

CLAM (53e2409): `<dir>/h5_files/<slide_id>.h5` (`features` float32, `coords` int32, no
attributes) and/or `<dir>/pt_files/<slide_id>.pt` (a float32 tensor (N, D), loaded with
`weights_only=True`; no coordinates). The footprint lives only in CLAM's patch files,
`patches/<slide_id>.h5` (`create_patches_fp.py`): when `<dir>` also holds `patches/`, they give
the coordinates of `.pt`-only slides and the level-0 patch side; otherwise both are unknown
(coords read as -1, `patch_size_level0` as None).
TRIDENT (a91fa84): `<job>/<mag>x_<ps>px_<ovl>px_overlap/features_<encoder>/<slide_id>.h5`, or
`.pt` (`saveas='pt'`: a pickled numpy array, loaded allowing numpy float arrays and nothing
else; its coordinates come from `../patches/<slide_id>_patches.h5`). A slide without patches
has `features` of shape (0,): an empty bag. The store path may be the job, the patch or the
features directory (with several encoders / magnifications, point at the one you want).
"""

from __future__ import annotations

import codecs
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from balnmp_cache.errors import StoreError
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.h5 import decode_attrs, open_h5, read_file_into, slide_info
from balnmp_cache.store.peer_attrs import clam_footprint
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


# The globals a pickled numpy array refers to (numpy 2 and 1.x names; `bytes` for an empty
# array): TRIDENT's `.pt` is unpickled with these and nothing else.
_NUMPY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("__builtin__", "bytes"), ("builtins", "bytes"),
}  # fmt: skip


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays and refuses every other global (and any torch storage)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not a numpy array's")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own, whatever its module
        if name == "encode":
            return codecs.encode
        return {"ndarray": np.ndarray, "dtype": np.dtype, "bytes": bytes}[name]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("holds a torch tensor, not a numpy array")


def _unpickle_numpy(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(names) != 1:
            raise pickle.UnpicklingError("not a torch.save archive (no <name>/data.pkl)")
        with archive.open(names[0]) as stream:
            return _NumpyOnly(stream).load()


def load_numpy_pt(path: Path) -> np.ndarray:
    """A TRIDENT `.pt` (`torch.save` of a numpy array), unpickled allowing numpy arrays and
    nothing else (a float tensor is read as CLAM's). Shape (N, D); (0, 0) for TRIDENT's (0,)."""
    try:
        array = _unpickle_numpy(path)
    except pickle.UnpicklingError as e:
        if "torch tensor" not in str(e):
            raise StoreError(f"{path}: cannot be loaded as a numpy array ({e}); nothing else "
                             "is unpickled - re-extract the slide") from e
        array = _load_pt(path).float().numpy()
    except Exception as e:  # a damaged zip or pickle stream can fail with many error types
        raise StoreError(f"{path}: cannot be loaded as a numpy array ({e}); the file is "
                         "corrupted or truncated - re-extract the slide") from e
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or not (
            array.ndim == 2 or array.shape == (0,)):  # fmt: skip
        raise StoreError(f"{path}: expected a (N, D) float feature array, found "
                         f"{type(array).__name__} {getattr(array, 'dtype', '')} "
                         f"{getattr(array, 'shape', '')}")
    return array.reshape(0, 0) if array.ndim == 1 else array


def _numpy_dtype(tensor: Any) -> np.dtype:
    return np.dtype("float16") if str(tensor.dtype) in ("torch.float16", "float16") else (
        np.dtype("float32"))


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir()
            if p.name.endswith(suffix) and not p.name.startswith(".")}  # fmt: skip


def _patch_file(path: Path, n: int, features: Path) -> tuple[dict, Path] | None:
    """The `coords` attributes of a peer's patch file, which must list the bag's `n` patches."""
    if not path.is_file():
        return None
    with open_h5(path) as f:
        if "coords" not in f:
            raise StoreError(f"{path}: has no 'coords' dataset; not a patch file")
        found = int(f["coords"].shape[0])
        attrs = decode_attrs(f["coords"].attrs)
    if found != n:
        raise StoreError(f"{path} lists {found} patches but {features} holds {n}: they come "
                         "from different runs; re-extract the features or remove the patch file")
    return attrs, path


def _read_coords(path: Path, coords: np.ndarray) -> bool:
    """Fill `coords` from a peer's patch file when it has them in that shape."""
    if not path.is_file():
        return False
    with open_h5(path) as f:
        if "coords" not in f or f["coords"].shape != coords.shape:
            return False
        coords[...] = f["coords"][()]
    return True


class ClamBackend(StoreBackend):
    """A CLAM feature directory: `h5_files/` preferred (it has coords), `pt_files/` otherwise;
    `patches/` (CLAM's patch files), when beside them, gives the footprint."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self.h5_dir, self.pt_dir = path / "h5_files", path / "pt_files"
        self.patch_dir = path / "patches"

    def slide_ids(self) -> list[str]:
        return sorted(_stems(self.h5_dir, ".h5") | _stems(self.pt_dir, ".pt"))

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
                info = slide_info(h5, slide_id, f)
        else:
            pt = self.pt_dir / f"{slide_id}.pt"
            if not pt.is_file():
                raise StoreError(f"{h5}: has no 'features' dataset and there is no {pt}")
            tensor = _load_pt(pt)
            n, dim = (int(x) for x in tensor.shape)
            attrs = with_known({"slide_id": slide_id, "feature_dim": dim})
            info = SlideInfo(slide_id, n, dim, _numpy_dtype(tensor), attrs, {}, str(pt))
        found = _patch_file(self.patch_dir / f"{slide_id}.h5", info.n_patches, Path(info.source))
        if found is not None:
            info.coords_attrs = {**found[0], **info.coords_attrs}
        return _with_clam_footprint(info)

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
        if not (_read_coords(h5, coords) or _read_coords(self.patch_dir / f"{slide_id}.h5",
                                                         coords)):  # fmt: skip
            coords.fill(-1)  # no coordinates anywhere: unknown


def _with_clam_footprint(info: SlideInfo) -> SlideInfo:
    """CLAM's `patch_size` px at `patch_level` as our attributes: `level`, `read_size`
    and the level-0 footprint `patch_size_level0` (left None when CLAM's attributes lack)."""
    size0 = clam_footprint(info.coords_attrs)
    if size0 is None:
        return info
    ca, attrs = info.coords_attrs, info.attrs
    for key, value in (("level", ca["patch_level"]), ("read_size", ca["patch_size"]),
                       ("patch_size", ca["patch_size"]), ("patch_size_level0", size0)):
        if attrs.get(key) is None:
            attrs[key] = int(value)
    return info


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


class TridentBackend(StoreBackend):
    """A TRIDENT features directory of `.h5` (or `.pt`) files; encoder, patch size, overlap
    and magnification default to the values in the directory names."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self.features_dir = trident_features_dir(path)
        self.patch_dir = self.features_dir.parent / "patches"
        m = TRIDENT_PATCH_DIR.match(self.features_dir.parent.name)
        assert m is not None  # guaranteed by trident_features_dir
        self.defaults = {"encoder": self.features_dir.name[len("features_"):],
                         "patch_size": int(m["ps"]), "overlap": int(m["ovl"]),
                         "target_magnification": float(m["mag"])}  # fmt: skip
        self._dim: int | None = None

    def slide_ids(self) -> list[str]:
        return sorted(_stems(self.features_dir, ".h5") | _stems(self.features_dir, ".pt"))

    def _h5(self, slide_id: str) -> Path:
        return self.features_dir / f"{slide_id}.h5"

    def info(self, slide_id: str) -> SlideInfo:
        h5 = self._h5(slide_id)
        if h5.is_file():
            info = self._h5_info(h5, slide_id)
        else:
            pt = self.features_dir / f"{slide_id}.pt"
            array = load_numpy_pt(pt)
            n, dim = array.shape
            attrs = with_known({"slide_id": slide_id, "feature_dim": dim})
            info = SlideInfo(slide_id, n, dim, _numpy_dtype(array), attrs, {}, str(pt))
            found = _patch_file(self.patch_dir / f"{slide_id}_patches.h5", n, pt)
            if found is not None:
                info.coords_attrs = found[0]
                for key in ("patch_size", "patch_size_level0"):
                    info.attrs[key] = found[0].get(key)
        if info.n_patches == 0 and info.feature_dim == 0:
            info.feature_dim = info.attrs["feature_dim"] = self._cohort_dim()
        for key, value in self.defaults.items():
            if info.attrs.get(key) is None:
                info.attrs[key] = value
        return info

    def _h5_info(self, h5: Path, slide_id: str) -> SlideInfo:
        with open_h5(h5) as f:
            feats = f.get("features")
            if feats is None or feats.shape != (0,):
                info = slide_info(h5, slide_id, f)
            else:  # TRIDENT's file of a slide without patches: features of shape (0,)
                attrs = with_known({"slide_id": slide_id, "feature_dim": 0})
                cattrs = decode_attrs(f["coords"].attrs) if "coords" in f else {}
                for key in ("patch_size", "patch_size_level0"):
                    attrs[key] = cattrs.get(key)
                info = SlideInfo(slide_id, 0, 0, np.dtype(feats.dtype), attrs, cattrs, str(h5))
            encoder = decode_attrs(feats.attrs).get("encoder") if feats is not None else None
        if encoder not in (None, "None") and info.attrs.get("encoder") is None:
            info.attrs["encoder"] = encoder
        return info

    def _cohort_dim(self) -> int:
        """D of the directory's first non-empty bag (one encoder, one D): an empty slide's."""
        if self._dim is None:
            self._dim = 0
            for sid in self.slide_ids():
                info = self.info(sid)
                if info.n_patches:
                    self._dim = info.feature_dim
                    break
        return self._dim

    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        h5 = self._h5(slide_id)
        if h5.is_file():
            read_file_into(h5, features, coords)
            return
        pt = self.features_dir / f"{slide_id}.pt"
        array = load_numpy_pt(pt)
        if array.shape != features.shape:
            raise StoreError(f"{pt}: shape {array.shape} changed while reading")
        features[...] = array
        if not _read_coords(self.patch_dir / f"{slide_id}_patches.h5", coords):
            coords.fill(-1)

"""Per-slide HDF5 feature store: `<dir>/<slide_id>.h5`, readable by CLAM and TRIDENT code.

Each file holds `features` (N, D) float16/float32 and `coords` (N, 2) int64 plus the
attributes of docs/format.md, and for a folder of patches `patch_files` (N,) str. Files are
written under a hidden temp name and renamed into place, so a listed slide is always
complete. See docs/format.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5s, h5t
from h5py._hl import base as h5py_base

from balnmp_cache.errors import StoreError
from balnmp_cache.store._atomic import fsync_file, publish
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.types import (
    COORDS_ATTRS,
    DAMAGED_FIX,
    PATCH_FILES,
    PatchFileLog,
    SlideInfo,
    SlideWriter,
    check_batch,
    checked_patch_files,
    plain,
    root_attrs,
    with_known,
)

JSON_ATTRS = "balnmp_json_attrs"  # names of attributes whose string value is JSON text
CHUNK_BYTES = 64 << 10  # feature chunk target; HDF5 allocates whole chunks, keep pads small


def encode_attrs(target: h5py.AttributeManager, attrs: dict) -> None:
    """Write attributes HDF5-natively; None is omitted (absent = unknown), dict/nested -> JSON."""
    as_json = []
    for key, value in attrs.items():
        value = plain(value)
        if value is None:
            continue
        if isinstance(value, (dict, list)) and not _numeric_list(value):
            _put(target, key, json.dumps(value))
            as_json.append(key)
        else:
            _put(target, key, np.asarray(value) if isinstance(value, list) else value)
    if as_json:
        _put(target, JSON_ATTRS, np.array(as_json, dtype=h5py.string_dtype()))


_TYPES: dict[tuple[str, str], tuple[Any, Any]] = {}
_SPACES: dict[tuple[int, ...], Any] = {}
# How h5py turns a value into the array it writes (h5py's own, internal; an h5py without it
# writes through `attrs[name] = value`, the same file, only slower).
_AS_ARRAY = getattr(h5py_base, "array_for_new_object", None)


def _put(target: h5py.AttributeManager, name: str, value: Any) -> None:
    """`target[name] = value` as h5py does it (the same HDF5 calls, types and bytes in the
    file: tested), with its per-call HDF5 type and dataspace objects made once per kind: a
    slide's ~36 attributes cost a third of the time."""
    if _AS_ARRAY is None:
        target[name] = value
        return
    data = _AS_ARRAY(value)
    key = (data.dtype.str, repr(data.dtype.metadata))
    types = _TYPES.get(key)
    if types is None:
        types = _TYPES[key] = (h5t.py_create(data.dtype, logical=True), h5t.py_create(data.dtype))
    space = _SPACES.get(data.shape)
    if space is None:
        space = _SPACES[data.shape] = h5s.create_simple(data.shape)
    oid, bname = target._id, name.encode()  # noqa: SLF001 - the manager's object, as h5py's own
    with h5py_base.phil:
        if h5a.exists(oid, bname):
            h5a.delete(oid, bname)
        attr = h5a.create(oid, bname, types[0], space)
        try:
            attr.write(data, mtype=types[1])
        except BaseException:
            attr.close()
            h5a.delete(oid, bname)
            raise
        attr.close()


def _numeric_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )


def decode_attrs(source: h5py.AttributeManager) -> dict:
    """Read attributes back as plain Python values (inverse of `encode_attrs`)."""
    out = {}
    json_names = set(plain(source[JSON_ATTRS])) if JSON_ATTRS in source else set()
    for key in source.keys():
        if key == JSON_ATTRS:
            continue
        value = source[key]
        value = None if isinstance(value, h5py.Empty) else plain(value)
        if key in json_names and isinstance(value, str):
            value = json.loads(value)
        out[key] = value
    return out


def open_h5(path: Path, mode: str = "r") -> h5py.File:
    """h5py.File with unreadable / truncated files reported by name."""
    try:
        return h5py.File(path, mode)
    except OSError as e:
        raise StoreError(
            f"{path}: cannot be opened as HDF5 ({e}); the file is corrupted or truncated: "
            f"{DAMAGED_FIX}"
        ) from e


def slide_info(path: Path, slide_id: str, f: h5py.File) -> SlideInfo:
    """SlideInfo of an open per-slide file (ours, CLAM's or TRIDENT's)."""
    if "features" not in f:
        raise StoreError(f"{path}: has no 'features' dataset; not a feature file")
    feats = f["features"]
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools save (1, N, D)
        shape = feats.shape[1:]
    else:
        shape = feats.shape
    if len(shape) != 2:
        raise StoreError(f"{path}: 'features' has shape {feats.shape}, expected (N, D)")
    n, dim = int(shape[0]), int(shape[1])
    coords_attrs = {}
    if "coords" in f:
        cshape = f["coords"].shape
        cshape = cshape[1:] if len(cshape) == 3 and cshape[0] == 1 else cshape
        if tuple(cshape) != (n, 2):
            raise StoreError(f"{path}: 'coords' has shape {f['coords'].shape}, expected ({n}, 2)")
        coords_attrs = decode_attrs(f["coords"].attrs)
    attrs = with_known(decode_attrs(f.attrs))
    attrs["slide_id"] = attrs["slide_id"] or slide_id
    if attrs["feature_dim"] is None:
        attrs["feature_dim"] = dim
    for key in ("patch_size", "patch_size_level0"):  # TRIDENT/CLAM keep these on coords
        if attrs[key] is None and coords_attrs.get(key) is not None:
            attrs[key] = coords_attrs[key]
    return SlideInfo(slide_id, n, dim, np.dtype(feats.dtype), attrs, coords_attrs, str(path),
                     PATCH_FILES in f)


def read_file_into(path: Path, features: np.ndarray, coords: np.ndarray) -> None:
    """Read one per-slide file directly into preallocated slices (`read_direct`, no copy)."""
    with open_h5(path) as f:
        try:
            feats = f["features"]
            if feats.ndim == 3:
                feats.read_direct(features[None])
            else:
                feats.read_direct(features)
            if "coords" in f:
                c = f["coords"]
                buf = np.empty(c.shape, dtype=c.dtype) if c.dtype != np.int64 else None
                if buf is None:
                    c.read_direct(coords[None] if c.ndim == 3 else coords)
                else:
                    c.read_direct(buf)
                    coords[...] = np.rint(buf.reshape(coords.shape)).astype(np.int64)
            else:
                coords.fill(-1)  # CLAM .pt-only slides have no coordinates
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise StoreError(
                f"{path}: reading the features failed ({e}); the file is corrupted or "
                f"truncated: {DAMAGED_FIX}"
            ) from e


_H5_ERRNO = re.compile(r"errno = (\d+)")


def _as_os_error(exc: BaseException, path: Path) -> BaseException:
    """h5py reports a failed write (disk full, quota) as a RuntimeError, or an OSError without
    `errno`, with HDF5's `errno = N` in its text: the `OSError` it is, naming `path`."""
    if isinstance(exc, OSError) and exc.errno:
        return exc
    found = _H5_ERRNO.search(str(exc))
    if found is None:
        return exc
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def _abandon(file: h5py.File) -> None:
    """Give up a file whose write failed, without closing it.

    After a failed write or flush, HDF5 (2.0) cannot close the file: closing it, or letting
    h5py free its handles, crashes the process at exit (SIGSEGV in the library's shutdown).
    So its handles are kept for the life of the process and its disk blocks are given back
    (truncated to 0 bytes); the caller removes its name.
    """
    ids = [file.id, *(obj.id for obj in file.values())]
    for handle in ids:  # never freed: h5py's free is what crashes
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(handle))
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        os.ftruncate(file.id.get_vfd_handle(), 0)


class H5Writer(SlideWriter):
    """Streams one slide into a temp file; `commit` renames it into place atomically."""

    def __init__(self, final: Path, slide_id: str, feature_dim: int, dtype: np.dtype,
                 attrs: dict, coords_attrs: dict) -> None:  # fmt: skip
        if feature_dim < 1:
            raise StoreError(f"slide {slide_id!r}: feature_dim must be >= 1, got {feature_dim}")
        self.final = final
        self.slide_id = slide_id
        self.feature_dim = feature_dim
        self.dtype = dtype
        self.tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        self.n = 0
        self.files = PatchFileLog(slide_id)
        self._done = False
        self._file = h5py.File(self.tmp, "w")
        self._abandoned = False
        try:
            with self._writing():
                rows = max(1, CHUNK_BYTES // (feature_dim * dtype.itemsize))
                self._feats = self._file.create_dataset(
                    "features", shape=(0, feature_dim), maxshape=(None, feature_dim),
                    dtype=dtype, chunks=(rows, feature_dim),
                )  # fmt: skip
                self._coords = self._file.create_dataset(
                    "coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64,
                    chunks=(1024, 2),
                )  # fmt: skip
                encode_attrs(self._file.attrs, root_attrs(slide_id, feature_dim, attrs))
                encode_attrs(self._coords.attrs, coords_attrs)
        except BaseException:
            self.abort()
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Around HDF5 calls that write: a failure abandons the temp file (see `_abandon`) and
        surfaces as the `OSError` it is (disk full, quota), so the job can stop on it."""
        try:
            yield
        except (RuntimeError, OSError) as exc:
            self._done = self._abandoned = True
            _abandon(self._file)
            self.tmp.unlink(missing_ok=True)
            err = _as_os_error(exc, self.tmp)
            if err is exc:
                raise
            raise err from exc

    def append(self, features: np.ndarray, coords: np.ndarray,
               patch_files: np.ndarray | None = None) -> None:
        """Add a batch: features (b, D), coords (b, 2) level-0 top-left (x, y), and each row's
        source file (b,) for a folder of patches (written as `patch_files` on commit)."""
        features, coords, files = check_batch(self.slide_id, self.feature_dim, self._done,
                                              features, coords, patch_files)
        b = features.shape[0]
        self.files.add(files, b)
        if b == 0:
            return
        with self._writing():
            self._feats.resize(self.n + b, axis=0)
            self._coords.resize(self.n + b, axis=0)
            self._feats[self.n : self.n + b] = features.astype(self.dtype, copy=False)
            self._coords[self.n : self.n + b] = coords.astype(np.int64, copy=False)
        self.n += b

    def commit(self) -> Path:
        """flush + fsync the temp file, then os.replace it onto `<slide_id>.h5`."""
        if self._done:
            return self.final
        with self._writing():
            if self.files.names is not None:
                self._file.create_dataset(PATCH_FILES, data=np.array(self.files.names, object),
                                          dtype=h5py.string_dtype())
            self._file.flush()
            self._file.close()
        self._done = True
        fsync_file(self.tmp)
        publish(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Discard the temp file; the store is left as it was."""
        self._done = True
        if self._abandoned:
            return  # already given up after a failed write; never close it
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class H5Backend(StoreBackend):
    """A directory of `<slide_id>.h5` files; hidden names (temp files) are never slides."""

    writable = True
    suffix = ".h5"

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        if mode == "a":
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise StoreError(f"{path}: not a directory of .h5 feature files")

    def file(self, slide_id: str) -> Path:
        return self.path / f"{slide_id}{self.suffix}"

    def slide_ids(self) -> list[str]:
        n = len(self.suffix)
        with os.scandir(self.path) as it:
            return sorted(
                e.name[:-n] for e in it
                if e.name.endswith(self.suffix) and not e.name.startswith(".") and e.is_file()
            )  # fmt: skip

    def has(self, slide_id: str) -> bool:
        return self.file(slide_id).is_file()

    def info(self, slide_id: str) -> SlideInfo:
        path = self.file(slide_id)
        with open_h5(path) as f:
            return slide_info(path, slide_id, f)

    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        read_file_into(self.file(slide_id), features, coords)

    def patch_files(self, slide_id: str) -> np.ndarray | None:
        path = self.file(slide_id)
        with open_h5(path) as f:
            if PATCH_FILES not in f:
                return None
            try:
                names = f[PATCH_FILES][()]
            except (OSError, KeyError, TypeError, ValueError) as e:
                raise StoreError(f"{path}: reading 'patch_files' failed ({e}); the file is "
                                 f"corrupted or truncated: {DAMAGED_FIX}") from e
            return checked_patch_files(str(path), names, slide_info(path, slide_id, f).n_patches)

    def writer(self, slide_id: str, feature_dim: int, dtype: np.dtype, attrs: dict,
               coords_attrs: dict) -> H5Writer:  # fmt: skip
        missing = [k for k in COORDS_ATTRS if k not in coords_attrs and k in attrs]
        cattrs = {**{k: attrs[k] for k in missing}, **coords_attrs}
        return H5Writer(self.file(slide_id), slide_id, feature_dim, dtype, attrs, cattrs)

    def remove(self, slide_id: str) -> None:
        self.file(slide_id).unlink(missing_ok=True)

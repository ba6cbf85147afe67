"""Zarr v3 feature store (one group per slide in one store) and Zarr cohort packs.

Layout (LocalStore directory, see docs/format.md):
    <store>.zarr/zarr.json                 root group, attribute balnmp_store = 1
    <store>.zarr/<slide_id>/zarr.json      slide group; attributes: those of docs/format.md
    <store>.zarr/<slide_id>/features/      (N, D) float16 | float32, zstd, row chunks
    <store>.zarr/<slide_id>/coords/        (N, 2) int64; attributes = the coords attributes
    <store>.zarr/<slide_id>/patch_files/   (N,) string (vlen-utf8): folders of patches only
Parallel writers on distinct slides are safe: each builds its group in a hidden directory
`.<slide_id>.tmp-<pid>-<token>` inside the store, fsyncs it and renames it to `<slide_id>`
(atomic on POSIX), so a listed slide is always complete and the root is never rewritten.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.core.buffer import default_buffer_prototype

from balnmp_cache._signals import critical
from balnmp_cache.errors import StoreError
from balnmp_cache.store._atomic import fsync_tree, publish
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.pack_index import INDEX_ARRAYS, make_index
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

ZARR_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, zarr.errors.BaseZarrError)
ROOT_META = {"zarr_format": 3, "node_type": "group", "attributes": {"balnmp_store": 1}}
CHUNK_BYTES = 1 << 20  # per-slide feature chunks (zstd squeezes the zero pad of the last one)
PACK_CHUNK_BYTES = 8 << 20  # uncompressed pack chunks: large sequential reads, small edge pad
NAME_CHUNK = 8192  # rows per `patch_files` chunk


def _write_root(path: Path) -> None:
    """Create the root group metadata atomically (concurrent writers may race here)."""
    path.mkdir(parents=True, exist_ok=True)
    meta = path / "zarr.json"
    if meta.exists():
        return
    tmp = path / f".zarr.json.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(ROOT_META, indent=2), encoding="utf-8")
    os.replace(tmp, meta)


def _row_chunks(dim: int, itemsize: int, target: int) -> int:
    return max(1, target // max(1, dim * itemsize))


def _fail(where: Path, e: Exception) -> StoreError:
    return StoreError(f"{where}: cannot be read as Zarr ({type(e).__name__}: {e}); the slide is "
                      f"corrupted or truncated: {DAMAGED_FIX}")


def missing_chunks(arr: zarr.Array, name: str) -> str | None:
    """What is missing when some of `arr`'s chunk files are absent, else None.

    Zarr reads an absent chunk as its fill value (zeros); balnmp writes every chunk (empty
    ones too), so a missing chunk file is damage, found here by listing the chunk keys.
    """
    expected, present = int(arr.nchunks), int(arr.nchunks_initialized)
    if present >= expected:
        return None
    return (f"{expected - present} of the {expected} chunk files of {name!r} are missing "
            "(they would read as zeros)")


def array_of(group: zarr.Group, name: str) -> zarr.Array:
    """`group[name]`, which must be an array (a group in its place is damage)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{name!r} is a group, not an array")  # callers name the store
    return node


def read_array_into(arr: zarr.Array, a: int, b: int, out: np.ndarray) -> None:
    """Decode rows a:b of a zarr array directly into `out` (no intermediate copy)."""
    buf = default_buffer_prototype().nd_buffer.from_numpy_array(out)
    arr.get_basic_selection(slice(a, b), out=buf)


class ZarrWriter(SlideWriter):
    """Streams one slide into a hidden temp group, then renames it into the store.

    zarr runs its writes on its own event-loop thread; a signal raised in the main thread while
    it waits would leave a write running into the folder `abort` removes (and an asyncio
    traceback on stderr). So each write holds signals back until it is done (`critical`)."""

    def __init__(self, root: Path, slide_id: str, feature_dim: int, dtype: np.dtype,
                 attrs: dict, coords_attrs: dict) -> None:  # fmt: skip
        if feature_dim < 1:
            raise StoreError(f"slide {slide_id!r}: feature_dim must be >= 1, got {feature_dim}")
        self.final = root / slide_id
        self.slide_id = slide_id
        self.feature_dim = feature_dim
        self.tmp = root / f".{slide_id}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self.n = 0
        self.files = PatchFileLog(slide_id)
        self._done = False
        try:
            with critical():
                self.group = zarr.open_group(self.tmp, mode="w")
                rows = _row_chunks(feature_dim, dtype.itemsize, CHUNK_BYTES)
                self.features = self.group.create_array(
                    "features", shape=(0, feature_dim), chunks=(rows, feature_dim), dtype=dtype,
                    config={"write_empty_chunks": True},
                )  # fmt: skip
                self.coords = self.group.create_array(
                    "coords", shape=(0, 2), chunks=(8192, 2), dtype=np.int64,
                    attributes=plain(coords_attrs), config={"write_empty_chunks": True},
                )  # fmt: skip
                self.attrs = root_attrs(slide_id, feature_dim, plain(attrs))
        except BaseException:
            self.abort()
            raise

    def append(self, features: np.ndarray, coords: np.ndarray,
               patch_files: np.ndarray | None = None) -> None:
        """Add a batch: features (b, D), coords (b, 2) level-0 top-left (x, y), and each row's
        source file (b,) for a folder of patches (written as `patch_files` on commit)."""
        features, coords, files = check_batch(self.slide_id, self.feature_dim, self._done,
                                              features, coords, patch_files)
        self.files.add(files, features.shape[0])
        if features.shape[0]:
            with critical():
                self.features.append(features.astype(self.features.dtype, copy=False), axis=0)
                self.coords.append(coords.astype(np.int64, copy=False), axis=0)
            self.n += features.shape[0]

    def commit(self) -> Path:
        if self._done:
            return self.final
        with critical():
            names = self.files.names
            if names is not None:
                arr = self.group.create_array(
                    PATCH_FILES, shape=(len(names),), chunks=(NAME_CHUNK,), dtype=str,
                    config={"write_empty_chunks": True},
                )  # fmt: skip
                arr[:] = np.array(names, dtype=str)
            self.group.attrs.update(self.attrs)
        self._done = True
        fsync_tree(self.tmp)
        publish(self.tmp, self.final)  # an overwrite swaps the old group out in one step
        return self.final

    def abort(self) -> None:
        self._done = True
        shutil.rmtree(self.tmp, ignore_errors=True)


class ZarrBackend(StoreBackend):
    """One Zarr v3 store (LocalStore directory), one group per slide."""

    writable = True

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        if mode == "a":
            _write_root(path)
        elif not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a Zarr store (no zarr.json)")

    def slide_ids(self) -> list[str]:
        with os.scandir(self.path) as it:
            return sorted(
                e.name for e in it
                if not e.name.startswith(".") and e.is_dir()
                and os.path.isfile(os.path.join(e.path, "zarr.json"))
            )  # fmt: skip

    def has(self, slide_id: str) -> bool:
        return (self.path / slide_id / "zarr.json").is_file()

    def _group(self, slide_id: str) -> zarr.Group:
        where = self.path / slide_id
        try:
            return zarr.open_group(where, mode="r")
        except ZARR_ERRORS as e:
            raise _fail(where, e) from e

    def info(self, slide_id: str) -> SlideInfo:
        where = self.path / slide_id
        g = self._group(slide_id)
        try:
            feats, coords = array_of(g, "features"), array_of(g, "coords")
            attrs = with_known(dict(g.attrs))
            cattrs = dict(coords.attrs)
            missing = missing_chunks(feats, "features") or missing_chunks(coords, "coords")
            named = PATCH_FILES in g
            if named:
                missing = missing or missing_chunks(array_of(g, PATCH_FILES), PATCH_FILES)
        except ZARR_ERRORS as e:
            raise _fail(where, e) from e
        if missing:
            raise StoreError(f"{where}: the slide is damaged: {missing}; {DAMAGED_FIX}")
        if len(feats.shape) != 2 or tuple(coords.shape) != (feats.shape[0], 2):
            raise StoreError(f"{where}: features {feats.shape} / coords {coords.shape} do not "
                             f"match; {DAMAGED_FIX}")
        n, dim = (int(x) for x in feats.shape)
        attrs["slide_id"] = attrs["slide_id"] or slide_id
        return SlideInfo(slide_id, n, dim, np.dtype(feats.dtype), attrs, cattrs, str(where),
                         named)

    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        where = self.path / slide_id
        g = self._group(slide_id)
        try:
            feats, coords_arr = array_of(g, "features"), array_of(g, "coords")
            missing = missing_chunks(feats, "features") or missing_chunks(coords_arr, "coords")
            if not missing:
                read_array_into(feats, 0, features.shape[0], features)
                read_array_into(coords_arr, 0, coords.shape[0], coords)
        except ZARR_ERRORS as e:
            raise _fail(where, e) from e
        if missing:  # checked again: the slide may have been damaged since `info`
            raise StoreError(f"{where}: the slide is damaged: {missing}; {DAMAGED_FIX}")

    def patch_files(self, slide_id: str) -> np.ndarray | None:
        where = self.path / slide_id
        g = self._group(slide_id)
        try:
            if PATCH_FILES not in g:
                return None
            arr = array_of(g, PATCH_FILES)
            missing = missing_chunks(arr, PATCH_FILES)
            names = None if missing else arr[:]
            n = int(array_of(g, "features").shape[0])
        except ZARR_ERRORS as e:
            raise _fail(where, e) from e
        if names is None:
            raise StoreError(f"{where}: the slide is damaged: {missing}; {DAMAGED_FIX}")
        return checked_patch_files(str(where), names, n)

    def writer(self, slide_id: str, feature_dim: int, dtype: np.dtype, attrs: dict,
               coords_attrs: dict) -> ZarrWriter:  # fmt: skip
        missing = {k: attrs[k] for k in COORDS_ATTRS if k not in coords_attrs and k in attrs}
        return ZarrWriter(self.path, slide_id, feature_dim, dtype, attrs,
                          {**missing, **coords_attrs})

    def remove(self, slide_id: str) -> None:
        target = self.path / slide_id
        if target.is_dir():  # rename first so readers never see a half-deleted group
            gone = self.path / f".{slide_id}.rm-{os.getpid()}-{secrets.token_hex(4)}"
            os.replace(target, gone)
            shutil.rmtree(gone, ignore_errors=True)


class ZarrPackSink:
    """Zarr pack writer: uncompressed row chunks so a load is a few large reads."""

    def __init__(self, path: Path, n_rows: int, dim: int, dtype: np.dtype, n_slides: int) -> None:
        self.group = zarr.open_group(path, mode="w")
        rows = min(_row_chunks(dim, dtype.itemsize, PACK_CHUNK_BYTES), max(1, n_rows))
        self.features = self.group.create_array(
            "features", shape=(n_rows, dim), chunks=(rows, dim), dtype=dtype, compressors=None,
            config={"write_empty_chunks": True},
        )  # fmt: skip
        self.coords = self.group.create_array(
            "coords", shape=(n_rows, 2), chunks=(min(1 << 18, max(1, n_rows)), 2),
            dtype=np.int64, compressors=None,
            config={"write_empty_chunks": True},
        )  # fmt: skip
        self.path = path

    def finish(self, index: dict[str, Any], root_attrs: dict) -> None:
        g = self.group
        for name, values in index.items():
            if isinstance(values, np.ndarray):
                g.create_array(name, data=values)
            else:  # lists of str: Zarr "string" arrays
                arr = g.create_array(name, shape=(len(values),), dtype=str)
                if values:
                    arr[:] = np.array(values, dtype=str)
        g.attrs.update(plain(root_attrs))
        fsync_tree(self.path)

    def abort(self) -> None:
        """Nothing held open; the caller removes the temp directory."""


class ZarrPackReader:
    """Reads a Zarr pack group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            g = zarr.open_group(path, mode="r")
            self.group = g
            self.features, self.coords = array_of(g, "features"), array_of(g, "coords")
            missing = missing_chunks(self.features, "features") or missing_chunks(self.coords,
                                                                                  "coords")
            if missing:  # (the index arrays may skip chunks of fill values: not checked)
                raise StoreError(f"{path}: the pack is damaged: {missing}; pack it again "
                                 "(`balnmp-mil pack FEATURES --out PACK --format zarr "
                                 "--overwrite`)")
            arrays = {n: array_of(g, n)[:] for n in INDEX_ARRAYS if n in g}
            for name in (n for n, required in INDEX_ARRAYS.items() if required):
                if name not in arrays:
                    raise StoreError(f"{path}: not a pack (no {name!r} array); make one with "
                                     "`balnmp-mil pack FEATURES --out PACK --format zarr`")
            self.index = make_index(path, arrays, self.features.shape, self.features.dtype,
                                    dict(g.attrs))
        except StoreError:
            raise
        except ZARR_ERRORS as e:
            raise StoreError(f"{path}: Zarr pack cannot be read ({type(e).__name__}: {e}); "
                             "pack it again") from e

    def read_runs(self, runs: list[tuple[int, int, int, int]], features: np.ndarray,
                  coords: np.ndarray) -> None:  # fmt: skip
        """Rows src_a:src_b -> dst_a:dst_b per run (zarr decodes chunks concurrently)."""
        try:
            for a, b, da, db in runs:
                read_array_into(self.features, a, b, features[da:db])
                read_array_into(self.coords, a, b, coords[da:db])
        except ZARR_ERRORS as e:
            raise StoreError(f"{self.path}: reading the pack failed ({e}); the pack is "
                             "corrupted or truncated - pack it again") from e

    def patch_files(self) -> np.ndarray | None:
        try:
            if PATCH_FILES not in self.group:
                return None
            names = array_of(self.group, PATCH_FILES)[:]
        except ZARR_ERRORS as e:
            raise StoreError(f"{self.path}: reading 'patch_files' failed ({e}); pack it "
                             "again") from e
        return checked_patch_files(str(self.path), names, int(self.features.shape[0]),
                                   "pack it again")

    def close(self) -> None:
        """Zarr holds no open file handles between reads."""

"""Cohort packs: every bag of a store concatenated into one file, loadable in one read.

A pack holds `features` (P, D), `coords` (P, 2), `offsets` (B + 1,), `slide_ids` (B,) and
per-slide attributes as JSON text (`slide_attrs`, `slide_coords_attrs`). HDF5 packs are one
file with contiguous datasets; Zarr packs are one uncompressed v3 group (see store_zarr).
`pack_store` streams slide by slide, so memory stays at the largest bag, never the cohort.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from balnmp_cache._version import __version__
from balnmp_cache.errors import StoreError
from balnmp_cache.store._atomic import check_output, fsync_tree, publish, remove, side_name
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.feature_store import FeatureStore
from balnmp_cache.store.h5 import decode_attrs, encode_attrs, open_h5
from balnmp_cache.store.load import finite_rows, majority, run_parallel
from balnmp_cache.store.types import COMMON_ATTRS, SlideInfo, plain, with_known

PACK_VERSION = 1
STR = h5py.string_dtype(encoding="utf-8")
PREAD_BLOCK = 32 << 20  # bytes per parallel read


@dataclass
class PackIndex:
    """A pack's metadata, read once when it is opened (small: O(B))."""

    slide_ids: list[str]
    offsets: np.ndarray
    attrs: list[dict]
    coords_attrs: list[dict]
    feature_dim: int
    dtype: np.dtype
    root_attrs: dict
    nonfinite_rows: np.ndarray | None = None  # per slide, counted when packing (None: unknown)


Run = tuple[int, int, int, int]  # (src_a, src_b, dst_a, dst_b) row ranges


class PackReader(Protocol):
    index: PackIndex

    def read_runs(self, runs: list[Run], features: np.ndarray, coords: np.ndarray) -> None:
        """Copy pack rows src_a:src_b to features/coords rows dst_a:dst_b for each run."""

    def close(self) -> None: ...


class PackSink(Protocol):
    """Where `pack_store` writes: slice-assignable `features` / `coords`, then `finish`."""

    features: Any
    coords: Any

    def finish(self, index: dict[str, Any], root_attrs: dict) -> None:
        """Write the per-slide index arrays (INDEX_ARRAYS) and the root attributes."""


def _json_list(values: Any, path: Path, name: str) -> list[dict]:
    try:
        return [json.loads(v) for v in plain(values)]
    except (TypeError, ValueError) as e:
        raise StoreError(f"{path}: dataset {name!r} is not JSON text per slide ({e})") from e


# Per-slide index arrays of a pack: name -> required. JSON text arrays hold one object per slide.
INDEX_ARRAYS = {"offsets": True, "slide_ids": True, "slide_attrs": False,
                "slide_coords_attrs": False, "nonfinite_rows": False}  # fmt: skip


def make_index(path: Path, arrays: dict[str, Any], shape: tuple, dtype: Any,
               root: dict) -> PackIndex:  # fmt: skip
    """Validate a pack's index arrays (shared by the HDF5 and Zarr readers)."""
    ids = [str(s) for s in plain(arrays["slide_ids"])]
    offsets = np.asarray(arrays["offsets"], dtype=np.int64)
    slide_attrs, slide_coords_attrs = arrays.get("slide_attrs"), arrays.get("slide_coords_attrs")
    nonfinite = arrays.get("nonfinite_rows")
    if nonfinite is not None:
        nonfinite = np.asarray(nonfinite, dtype=np.int64)
        if nonfinite.shape != (len(ids),):
            raise StoreError(f"{path}: pack 'nonfinite_rows' has shape {nonfinite.shape}, "
                             f"expected ({len(ids)},); pack it again")
    if len(shape) != 2:
        raise StoreError(f"{path}: pack 'features' has shape {shape}, expected (P, D)")
    if (len(offsets) != len(ids) + 1 or (len(offsets) and offsets[0] != 0)
            or np.any(np.diff(offsets) < 0) or (len(offsets) and offsets[-1] != shape[0])):
        raise StoreError(f"{path}: pack 'offsets' is inconsistent with 'slide_ids' / "
                         "'features' (truncated or hand-edited pack?); pack it again")
    attrs = _json_list(slide_attrs, path, "slide_attrs") if slide_attrs is not None else []
    cattrs = (_json_list(slide_coords_attrs, path, "slide_coords_attrs")
              if slide_coords_attrs is not None else [])  # fmt: skip
    attrs = [with_known(a) for a in (attrs or [{} for _ in ids])]
    for sid, a in zip(ids, attrs):
        a["slide_id"] = a["slide_id"] or sid
    cattrs = cattrs or [{} for _ in ids]
    return PackIndex(ids, offsets, attrs, cattrs, int(shape[1]), np.dtype(dtype), root,
                     nonfinite)


class H5PackReader:
    """Reads an HDF5 pack; holds the file open until `close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open_h5(path)
        f = self.file
        try:
            required = ["features", "coords", *(n for n, r in INDEX_ARRAYS.items() if r)]
            for name in required:
                if name not in f:
                    raise StoreError(f"{path}: not a pack (no {name!r} dataset); make one with "
                                     "`balnmp-mil pack FEATURES --out PACK`")
            arrays = {n: f[n][()] for n in INDEX_ARRAYS if n in f}
            self.index = make_index(path, arrays, f["features"].shape, f["features"].dtype,
                                    decode_attrs(f.attrs))
        except (OSError, KeyError, ValueError) as e:
            self.file.close()
            raise StoreError(f"{path}: pack cannot be read ({e}); pack it again") from e
        except StoreError:
            self.file.close()
            raise
        self.fd = os.open(path, os.O_RDONLY)
        self.raw = {n: _raw_offset(f[n]) for n in ("features", "coords")}

    def read_runs(self, runs: list[Run], features: np.ndarray, coords: np.ndarray) -> None:
        """All runs in one thread pool: contiguous unfiltered datasets are read with parallel
        `os.preadv` straight into the output (no HDF5 call, no copy); others by read_direct."""
        tasks: list[tuple[memoryview, int, int, int]] = []  # (buffer, start, end, file offset)
        try:
            for name, out in (("features", features), ("coords", coords)):
                ds, offset = self.file[name], self.raw[name]
                if offset is None or out.dtype != ds.dtype or not out.flags.c_contiguous:
                    for a, b, da, db in runs:
                        if b > a:
                            ds.read_direct(out, source_sel=np.s_[a:b], dest_sel=np.s_[da:db])
                    continue
                row = out.itemsize * int(np.prod(out.shape[1:]))
                buf = memoryview(out.reshape(-1).view(np.uint8))
                for a, _b, da, db in runs:
                    for start in range(da * row, db * row, PREAD_BLOCK):
                        end = min(start + PREAD_BLOCK, db * row)
                        tasks.append((buf, start, end, offset + a * row + start - da * row))
            run_parallel(self._pread, tasks)
        except (OSError, ValueError, TypeError) as e:
            raise StoreError(f"{self.path}: reading the pack failed ({e}); the pack is "
                             "corrupted or truncated - pack it again") from e

    def _pread(self, task: tuple[memoryview, int, int, int]) -> None:
        buf, start, end, where = task
        while start < end:
            n = os.preadv(self.fd, [buf[start:end]], where)
            if n <= 0:
                raise OSError(f"unexpected end of file at byte {where}")
            start, where = start + n, where + n

    def close(self) -> None:
        os.close(self.fd)
        self.file.close()


def _raw_offset(ds: h5py.Dataset) -> int | None:
    """File offset of a contiguous, unfiltered, native little-endian dataset, else None."""
    plist = ds.id.get_create_plist()
    if ds.chunks is not None or plist.get_nfilters() or ds.dtype.byteorder == ">":
        return None
    if sys.byteorder != "little" and ds.dtype.itemsize > 1:
        return None
    return ds.id.get_offset()


class H5PackSink:
    """Contiguous (unchunked) datasets: a later load is one sequential read."""

    def __init__(self, path: Path, n_rows: int, dim: int, dtype: np.dtype, n_slides: int) -> None:
        self.file = h5py.File(path, "w")
        self.features = self.file.create_dataset("features", shape=(n_rows, dim), dtype=dtype)
        self.coords = self.file.create_dataset("coords", shape=(n_rows, 2), dtype=np.int64)

    def finish(self, index: dict[str, Any], root_attrs: dict) -> None:
        f = self.file
        for name, values in index.items():
            if isinstance(values, np.ndarray):
                f.create_dataset(name, data=values)
            else:  # lists of str: variable-length UTF-8
                f.create_dataset(name, data=np.array(values, dtype=object), dtype=STR)
        encode_attrs(f.attrs, root_attrs)
        f.flush()
        f.close()

    def abort(self) -> None:
        self.file.close()


# Pack formats: name -> "module:Class" of the sink (writer) and of the reader.
PACK_SINKS = {"h5": "balnmp_cache.store.pack:H5PackSink", "zarr": "balnmp_cache.store.zarr:ZarrPackSink"}
PACK_READERS = {"h5": "balnmp_cache.store.pack:H5PackReader",
                "zarr": "balnmp_cache.store.zarr:ZarrPackReader"}


def _load(target: str) -> Any:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def open_pack(path: Path) -> PackReader:
    """Open an HDF5 pack (a file) or a Zarr pack (a directory)."""
    return _load(PACK_READERS["zarr" if path.is_dir() else "h5"])(path)


class PackBackend(StoreBackend):
    """A pack seen as a read-only store; `read_many` merges adjacent bags into one read."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self.reader = open_pack(path)
        index = self.reader.index
        self.rows = {}
        self.dups: list[str] = []
        for i, sid in enumerate(index.slide_ids):
            if sid in self.rows:
                self.dups.append(sid)
            else:
                self.rows[sid] = i

    def slide_ids(self) -> list[str]:
        return list(self.rows)

    def has(self, slide_id: str) -> bool:
        return slide_id in self.rows

    def nonfinite_rows(self, slide_ids: Sequence[str]) -> np.ndarray | None:
        """NaN/Inf row counts recorded when packing: a pack load needs no scan."""
        counts = self.reader.index.nonfinite_rows
        return None if counts is None else counts[[self.rows[s] for s in slide_ids]]

    def problems(self) -> list[tuple[str, list[str]]]:
        return [("duplicate slide ids in the pack (the first copy is used)", self.dups)]

    def info(self, slide_id: str) -> SlideInfo:
        ix = self.reader.index
        i = self.rows[slide_id]
        n = int(ix.offsets[i + 1] - ix.offsets[i])
        return SlideInfo(slide_id, n, ix.feature_dim, ix.dtype, dict(ix.attrs[i]),
                         dict(ix.coords_attrs[i]), f"{self.path} (slide {slide_id})")

    def read_into(self, slide_id: str, features: np.ndarray, coords: np.ndarray) -> None:
        i = self.rows[slide_id]
        a, b = (int(x) for x in self.reader.index.offsets[i : i + 2])
        self.reader.read_runs([(a, b, 0, b - a)], features, coords)

    def read_many(self, slide_ids: Sequence[str], features: np.ndarray, coords: np.ndarray,
                  offsets: np.ndarray) -> None:  # fmt: skip
        """Adjacent bags merge into one run: the whole pack in order is a single read."""
        off = self.reader.index.offsets
        runs: list[list[int]] = []  # [src_a, src_b, dst_a, dst_b]
        for k, sid in enumerate(slide_ids):
            i = self.rows[sid]
            a, b = int(off[i]), int(off[i + 1])
            if runs and runs[-1][1] == a:
                runs[-1][1] = b
                runs[-1][3] = int(offsets[k + 1])
            elif b > a:
                runs.append([a, b, int(offsets[k]), int(offsets[k + 1])])
        self.reader.read_runs([(a, b, da, db) for a, b, da, db in runs], features, coords)

    def close(self) -> None:
        self.reader.close()


def _common(infos: list[SlideInfo]) -> dict:
    """Root attributes shared by every slide (encoder, weights, µm/px, ...)."""
    out = {}
    for key in COMMON_ATTRS:
        values = {json.dumps(plain(i.attrs.get(key))) for i in infos}
        if len(values) == 1 and infos and infos[0].attrs.get(key) is not None:
            out[key] = infos[0].attrs[key]
    return out


def is_pack(path: Path) -> bool:
    """True for a pack that `pack_store` wrote (HDF5 file or Zarr directory)."""
    if path.is_dir():
        return '"balnmp_pack"' in _read_text(path / "zarr.json")
    try:
        with open_h5(path, "r") as f:
            return "balnmp_pack" in f.attrs
    except (OSError, StoreError):
        return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _check_out(src: FeatureStore, out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an `out` that would destroy an input or someone else's file."""
    check_output(out, [("FEATURES", src.path)], StoreError)
    if not out.exists():
        return
    if not overwrite:
        raise StoreError(f"{out}: already exists; choose another --out or pass --overwrite")
    if not is_pack(out):
        raise StoreError(f"{out}: exists and is not a balnmp pack, so --overwrite will not "
                         "replace it; choose another --out")


def pack_store(store: str | Path | FeatureStore, out: str | Path, format: str = "h5",
               slide_ids: Sequence[str] | None = None, overwrite: bool = False,
               progress: bool | None = None) -> Path:  # fmt: skip
    """Concatenate a store's bags into one pack at `out`, streaming slide by slide.

    Peak memory is one bag (the largest), not the cohort. The pack appears only when complete
    (temp name beside `out`, then rename). Refuses mixed feature dimensions.
    """
    from tqdm.auto import tqdm

    if format not in PACK_SINKS:
        raise StoreError(f"pack format {format!r} is not supported; use one of {list(PACK_SINKS)}")
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as src:
            return pack_store(src, out, format, slide_ids, overwrite, progress)
    src = store
    out = Path(out)
    _check_out(src, out, overwrite)
    ids = src.slide_ids if slide_ids is None else [str(s) for s in slide_ids]
    infos = [src.info(sid) for sid in ids]
    if not infos:
        raise StoreError(f"{src.path}: no slides to pack")
    dim = int(majority([i.feature_dim for i in infos]))
    odd = [f"{i.slide_id} (D={i.feature_dim})" for i in infos if i.feature_dim != dim]
    if odd:
        raise StoreError(f"{src.path}: slides have different feature dimensions; a pack needs "
                         f"one. Differing from D={dim}: {', '.join(odd[:12])}")
    counts = np.array([i.n_patches for i in infos], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dtype = np.result_type(*{i.dtype for i in infos})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = side_name(out, "tmp")
    sink = _load(PACK_SINKS[format])(tmp, int(offsets[-1]), dim, dtype, len(infos))
    nonfinite = np.zeros(len(infos), dtype=np.int64)
    try:
        show = sys.stderr.isatty() if progress is None else progress
        for k, info in enumerate(tqdm(infos, desc="pack", unit="slide", disable=not show)):
            a, b = int(offsets[k]), int(offsets[k + 1])
            if b == a:
                continue
            feats = np.empty((b - a, info.feature_dim), dtype=info.dtype)
            coords = np.empty((b - a, 2), dtype=np.int64)
            src.backend.read_into(info.slide_id, feats, coords)
            nonfinite[k] = int(np.count_nonzero(~finite_rows(feats)))
            sink.features[a:b] = feats
            sink.coords[a:b] = coords
        root = {"balnmp_pack": PACK_VERSION, "n_slides": len(infos), "n_patches": int(offsets[-1]),
                "feature_dim": dim, "source": str(src.path), "source_format": src.format,
                "balnmp_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **_common(infos)}  # fmt: skip
        sink.finish({"offsets": offsets, "slide_ids": [i.slide_id for i in infos],
                     "slide_attrs": [json.dumps(plain(i.attrs)) for i in infos],
                     "slide_coords_attrs": [json.dumps(plain(i.coords_attrs)) for i in infos],
                     "nonfinite_rows": nonfinite}, root)  # fmt: skip
        fsync_tree(tmp)
        _check_out(src, out, overwrite)  # another job may have written `out` meanwhile
        publish(tmp, out)
    except BaseException:
        sink.abort()
        remove(tmp)
        raise
    return out

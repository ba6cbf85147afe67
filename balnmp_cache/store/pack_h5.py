"""HDF5 cohort packs: one file of contiguous datasets, read with parallel `preadv`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from balnmp_cache.errors import StoreError
from balnmp_cache.store.h5 import decode_attrs, encode_attrs, open_h5
from balnmp_cache.store.load import run_parallel
from balnmp_cache.store.pack_index import INDEX_ARRAYS, Run, make_index
from balnmp_cache.store.types import PATCH_FILES, checked_patch_files

__all__ = ["H5PackReader", "H5PackSink"]

STR = h5py.string_dtype(encoding="utf-8")
PREAD_BLOCK = 32 << 20  # bytes per parallel read


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
                buf = out.reshape(-1).view(np.uint8).data  # a memoryview of `out`
                for a, _b, da, db in runs:
                    for start in range(da * row, db * row, PREAD_BLOCK):
                        end = min(start + PREAD_BLOCK, db * row)
                        tasks.append((buf, start, end, offset + a * row + start - da * row))
            run_parallel(self._pread, tasks)
        except (OSError, ValueError, TypeError) as e:
            raise StoreError(f"{self.path}: reading the pack failed ({e}); the pack is "
                             "corrupted or truncated - pack it again") from e

    def patch_files(self) -> np.ndarray | None:
        if PATCH_FILES not in self.file:
            return None
        try:
            names = self.file[PATCH_FILES][()]
        except (OSError, KeyError, ValueError) as e:
            raise StoreError(f"{self.path}: reading 'patch_files' failed ({e}); pack it "
                             "again") from e
        return checked_patch_files(str(self.path), names, int(self.file["features"].shape[0]),
                                   "pack it again")

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

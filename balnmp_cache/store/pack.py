"""Cohort packs: every bag of a store concatenated into one file, loadable in one read.

What a pack holds is in `pack_index` (and docs/format.md); HDF5 packs (`pack_h5`) are one file
with contiguous datasets, Zarr packs (`zarr`) one uncompressed v3 group. Here: the pack-format
registries, a pack seen as a read-only store (`PackBackend`) and `pack_store`, which streams
slide by slide, so memory stays at the largest bag, never the cohort.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from balnmp_cache._options import OneOf, check_options, option
from balnmp_cache._registry import Registry
from balnmp_cache._signals import critical
from balnmp_cache._version import __version__
from balnmp_cache.errors import StoreError
from balnmp_cache.store._atomic import (
    check_replaceable,
    fsync_tree,
    publish,
    remove,
    side_name,
)
from balnmp_cache.store.backend import StoreBackend
from balnmp_cache.store.feature_store import FeatureStore
from balnmp_cache.store.h5 import open_h5
from balnmp_cache.store.load import finite_rows, joined_names, majority
from balnmp_cache.store.pack_index import INDEX_ARRAYS, PackIndex, PackReader, PackSink, make_index
from balnmp_cache.store.types import COMMON_ATTRS, PATCH_FILES, SlideInfo, plain

__all__ = [
    "INDEX_ARRAYS", "PACK_READERS", "PACK_SINKS", "PackBackend", "PackIndex", "PackOptions",
    "is_pack", "make_index", "open_pack", "pack_store",
]  # fmt: skip

PACK_VERSION = 1

# Pack formats (the `balnmp-mil pack --format` choices): the sink that writes one and the
# reader that opens one, as lazy "module:Class" entries.
PACK_SINKS: Registry[type[PackSink]] = Registry("pack format", "--format")
PACK_SINKS.register("h5", "balnmp_cache.store.pack_h5:H5PackSink")
PACK_SINKS.register("zarr", "balnmp_cache.store.zarr:ZarrPackSink")
PACK_READERS: Registry[type[PackReader]] = Registry("pack format")
PACK_READERS.register("h5", "balnmp_cache.store.pack_h5:H5PackReader")
PACK_READERS.register("zarr", "balnmp_cache.store.zarr:ZarrPackReader")


@dataclass(kw_only=True)
class PackOptions:
    """The options of `balnmp-mil pack` (besides FEATURES, `--out` and `--overwrite`), declared
    once (`balnmp_cache._options`); `pack_store` takes them as keywords with these defaults."""

    format: str = option("h5", OneOf(PACK_SINKS), help="Pack container.")

    def __post_init__(self) -> None:
        check_options(self)


def open_pack(path: Path) -> PackReader:
    """Open an HDF5 pack (a file) or a Zarr pack (a directory)."""
    return PACK_READERS.get("zarr" if path.is_dir() else "h5")(path)


class PackBackend(StoreBackend):
    """A pack seen as a read-only store; `read_many` merges adjacent bags into one read."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__(path, mode)
        self.reader = open_pack(path)
        self._names: np.ndarray | None = None
        self._names_read = False
        index = self.reader.index
        self.rows: dict[str, int] = {}
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
                         dict(ix.coords_attrs[i]), f"{self.path} (slide {slide_id})",
                         self.patch_files(slide_id) is not None)

    def patch_files(self, slide_id: str) -> np.ndarray | None:
        """The slide's rows of the pack's `patch_files` (read once, on first use); None when
        the pack has none or the slide's rows are all "" (a slide without names)."""
        if not self._names_read:
            self._names, self._names_read = self.reader.patch_files(), True
        if self._names is None:
            return None
        i = self.rows[slide_id]
        a, b = (int(x) for x in self.reader.index.offsets[i : i + 2])
        names = self._names[a:b]
        return names if (names != "").any() else None

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
    check_replaceable(out, [("FEATURES", src.path)], overwrite, StoreError, is_pack,
                      "a balnmp pack")


def pack_store(store: str | Path | FeatureStore, out: str | Path, format: str = "h5",
               slide_ids: Sequence[str] | None = None, overwrite: bool = False,
               progress: bool | None = None) -> Path:  # fmt: skip
    """Concatenate a store's bags into one pack at `out`, streaming slide by slide.

    Peak memory is one bag (the largest), not the cohort. The pack appears only when complete
    (temp name beside `out`, then rename). Refuses mixed feature dimensions.
    """
    if format not in PACK_SINKS:
        raise StoreError(PACK_SINKS.unknown(format))
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as src:
            return pack_store(src, out, format, slide_ids, overwrite, progress)
    src, out = store, Path(out)
    _check_out(src, out, overwrite)
    infos = [src.info(sid) for sid in (src.slide_ids if slide_ids is None else map(str, slide_ids))]
    dim = _one_dimension(src, infos)
    offsets = np.concatenate([[0], np.cumsum([i.n_patches for i in infos])]).astype(np.int64)
    dtype = np.result_type(*{i.dtype for i in infos})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = side_name(out, "tmp")
    sink = PACK_SINKS.get(format)(tmp, int(offsets[-1]), dim, dtype, len(infos))
    try:
        nonfinite, names = _copy_bags(src, infos, offsets, sink, progress)
        root = {"balnmp_pack": PACK_VERSION, "n_slides": len(infos), "n_patches": int(offsets[-1]),
                "feature_dim": dim, "source": str(src.path), "source_format": src.format,
                "balnmp_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **_common(infos)}  # fmt: skip
        with critical():
            sink.finish({"offsets": offsets, "slide_ids": [i.slide_id for i in infos],
                         "slide_attrs": [json.dumps(plain(i.attrs)) for i in infos],
                         "slide_coords_attrs": [json.dumps(plain(i.coords_attrs))
                                                for i in infos],
                         "nonfinite_rows": nonfinite,
                         **({} if names is None else {PATCH_FILES: names.tolist()})},
                        root)  # fmt: skip
        fsync_tree(tmp)
        _check_out(src, out, overwrite)  # another job may have written `out` meanwhile
        publish(tmp, out)
    except BaseException:
        sink.abort()
        remove(tmp)
        raise
    return out


def _one_dimension(src: FeatureStore, infos: list[SlideInfo]) -> int:
    """The one feature dimension of the slides to pack (a pack cannot mix them)."""
    if not infos:
        raise StoreError(f"{src.path}: no slides to pack")
    dim = int(majority([i.feature_dim for i in infos]))
    odd = [f"{i.slide_id} (D={i.feature_dim})" for i in infos if i.feature_dim != dim]
    if odd:
        raise StoreError(f"{src.path}: slides have different feature dimensions; a pack needs "
                         f"one. Differing from D={dim}: {', '.join(odd[:12])}")
    return dim


def _copy_bags(src: FeatureStore, infos: list[SlideInfo], offsets: np.ndarray, sink: PackSink,
               progress: bool | None) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """Copy each bag into its rows of the sink; returns the NaN/Inf row count per slide and
    the rows' source file names (`load.joined_names`: "" for slides without, None if none)."""
    from tqdm.auto import tqdm

    nonfinite = np.zeros(len(infos), dtype=np.int64)
    names = [src.backend.patch_files(i.slide_id) if i.has_patch_files else None for i in infos]
    show = sys.stderr.isatty() if progress is None else progress
    for k, info in enumerate(tqdm(infos, desc="pack", unit="slide", disable=not show)):
        a, b = int(offsets[k]), int(offsets[k + 1])
        if b == a:
            continue
        feats = np.empty((b - a, info.feature_dim), dtype=info.dtype)
        coords = np.empty((b - a, 2), dtype=np.int64)
        src.backend.read_into(info.slide_id, feats, coords)
        nonfinite[k] = int(np.count_nonzero(~finite_rows(feats)))
        with critical():  # a Zarr write runs on zarr's thread: let it finish (see ZarrWriter)
            sink.features[a:b] = feats
            sink.coords[a:b] = coords
    return nonfinite, joined_names(names, np.diff(offsets))

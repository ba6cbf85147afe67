"""`export_store`: a feature store in CLAM's or TRIDENT's own layout, for their code to read.

`clam` (CLAM 53e2409): `h5_files/<id>.h5` (`features` float32, `coords` int32, chunks of 32
rows, with CLAM's patch attributes on `coords`), `pt_files/<id>.pt` (a float32 tensor: what
CLAM's training and evaluation read) and `patches/<id>.h5` (CLAM's patch file: what its
patch readers, `StitchCoords` and `extract_features_fp.py --data_h5_dir` read). A slide without
patches is left out, as CLAM writes no file for one.
`trident` (TRIDENT a91fa84): `<mag>x_<ps>px_<ov>px_overlap/patches/<id>_patches.h5` and
`.../features_<encoder>/<id>.h5` (`features` float32, `coords` int64, chunks of one row,
TRIDENT's attributes); a slide without patches has `features` of shape (0,), as TRIDENT's.
The attributes are those of `peer_attrs`. Like `pack_store`, slides are copied one at a time
(memory: the largest bag) into a hidden folder beside `out`, which is renamed into place
when complete; `balnmp_export.json` in it records the source and the slides.
"""

from __future__ import annotations

import abc
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from balnmp_cache._options import OneOf, check_options, option
from balnmp_cache._registry import Registry
from balnmp_cache._version import __version__
from balnmp_cache.errors import StoreError
from balnmp_cache.store._atomic import (
    check_replaceable,
    fsync_tree,
    publish,
    remove,
    side_name,
)
from balnmp_cache.store.feature_store import FeatureStore
from balnmp_cache.store.load import majority
from balnmp_cache.store.peer_attrs import clam_patch_attrs, trident_attrs, trident_dir_name
from balnmp_cache.store.types import SlideInfo

__all__ = ["EXPORTERS", "ExportOptions", "ExportResult", "PeerLayout", "export_store"]

MARKER = "balnmp_export.json"
EXPORT_VERSION = 1
INT32_MAX = 2**31 - 1


def _dataset(f: h5py.File, name: str, array: np.ndarray, rows: int) -> h5py.Dataset:
    """A resizable dataset the way both peers create theirs (unlimited first axis, chunks of
    `rows` rows, no filters), not yet written: callers rebind one variable to each new dataset,
    as the peers do, so the files come out byte for byte as theirs for the same content."""
    return f.create_dataset(name, shape=array.shape, maxshape=(None, *array.shape[1:]),
                            chunks=(rows, *array.shape[1:]), dtype=array.dtype)  # fmt: skip


class PeerLayout(abc.ABC):
    """One peer's layout under `root` (the temporary folder; `final` is where it will be).
    The constructor checks every slide before anything is written."""

    peer: ClassVar[str]

    def __init__(self, root: Path, final: Path, infos: Sequence[SlideInfo]) -> None:
        self.root, self.final = root, final

    def skip(self, info: SlideInfo) -> str | None:
        """Why the peer has no file for this slide, or None to write it."""
        return None

    @abc.abstractmethod
    def write(self, info: SlideInfo, features: np.ndarray, coords: np.ndarray) -> None:
        """Write one slide: features float32 (N, D), coords int64 (N, 2) at level 0."""


class ClamLayout(PeerLayout):
    """CLAM's `h5_files/`, `pt_files/` and `patches/` (see the module docstring)."""

    peer = "CLAM"

    def __init__(self, root: Path, final: Path, infos: Sequence[SlideInfo]) -> None:
        super().__init__(root, final, infos)
        save_path = str(final / "patches")
        self.attrs = {i.slide_id: clam_patch_attrs(i, save_path) for i in infos if i.n_patches}
        for folder in ("h5_files", "pt_files", "patches"):
            (root / folder).mkdir()

    def skip(self, info: SlideInfo) -> str | None:
        return None if info.n_patches else "no patches (CLAM writes no file for such a slide)"

    def write(self, info: SlideInfo, features: np.ndarray, coords: np.ndarray) -> None:
        import torch

        sid, attrs = info.slide_id, self.attrs[info.slide_id]
        if int(coords.max()) > INT32_MAX:
            raise StoreError(f"slide {sid!r}: coordinates beyond 2^31 do not fit CLAM's int32")
        small = coords.astype(np.int32)
        with h5py.File(self.root / "h5_files" / f"{sid}.h5", "w") as f:
            d = _dataset(f, "features", features, 32)
            d[:] = features
            d = _dataset(f, "coords", small, 32)
            d[:] = small
            d.attrs.update(attrs)  # CLAM's own h5_files have none; its patch readers need them
        with h5py.File(self.root / "patches" / f"{sid}.h5", "w") as f:
            d = _dataset(f, "coords", coords, 1)
            d[:] = coords
            d.attrs.update(attrs)
        # Saved under its final name (inside the temporary folder): torch names the archive's
        # root folder after the file, as CLAM's own files are.
        torch.save(torch.from_numpy(features), self.root / "pt_files" / f"{sid}.pt")


class TridentLayout(PeerLayout):
    """TRIDENT's `<mag>x_<ps>px_<ov>px_overlap/{patches,features_<encoder>}/`."""

    peer = "TRIDENT"

    def __init__(self, root: Path, final: Path, infos: Sequence[SlideInfo]) -> None:
        super().__init__(root, final, infos)
        coords_dir = self._one(infos, trident_dir_name, "patch grids (<mag>x_<ps>px_<ov>px)")
        encoder = self._one(infos, lambda i: i.attrs.get("encoder"), "encoders")
        if encoder is None:
            raise StoreError("the store does not record its encoder, which names TRIDENT's "
                             "features_<encoder> folder; it cannot be exported to TRIDENT")
        self.encoder = str(encoder)
        self.coords_dir = root / coords_dir
        self.features_dir = self.coords_dir / f"features_{self.encoder.replace('/', '_')}"
        final_coords = final / coords_dir
        self.final_features = str(final_coords / self.features_dir.name)
        self.attrs = {i.slide_id: trident_attrs(i, str(final_coords)) for i in infos}
        (self.coords_dir / "patches").mkdir(parents=True)
        self.features_dir.mkdir()

    @staticmethod
    def _one(infos: Sequence[SlideInfo], key: Any, what: str) -> Any:
        values = [key(i) for i in infos]
        common = majority(values)
        odd = [f"{i.slide_id} ({v})" for i, v in zip(infos, values) if v != common]
        if odd:
            raise StoreError(f"slides differ in their {what}, and one TRIDENT folder holds one; "
                             f"differing from {common}: {', '.join(odd[:12])}")
        return common

    def write(self, info: SlideInfo, features: np.ndarray, coords: np.ndarray) -> None:
        sid, attrs = info.slide_id, self.attrs[info.slide_id]
        with h5py.File(self.coords_dir / "patches" / f"{sid}_patches.h5", "w") as f:
            d = _dataset(f, "coords", coords, 1)
            d[:] = coords
            d.attrs.update(attrs)
        if not len(features):
            features = np.empty((0,), np.float32)  # TRIDENT's features of a slide without patches
        with h5py.File(self.features_dir / f"{sid}.h5", "w") as f:
            d = _dataset(f, "features", features, 1)
            d[:] = features
            d.attrs.update({"name": sid, "savetodir": self.final_features, "encoder": self.encoder})
            d = _dataset(f, "coords", coords, 1)
            d[:] = coords
            d.attrs.update(sorted(attrs.items()))  # TRIDENT copies them as h5py reads them back


EXPORTERS: Registry[type[PeerLayout]] = Registry("export layout", "--to")
EXPORTERS.register("clam", ClamLayout)
EXPORTERS.register("trident", TridentLayout)


@dataclass(kw_only=True)
class ExportOptions:
    """The options of `balnmp-mil export` (besides FEATURES, `--out` and `--overwrite`),
    declared once (`balnmp_cache._options`); `export_store` takes them as keywords."""

    to: str = option(check=OneOf(EXPORTERS), help=(
        "Whose layout: CLAM's (h5_files/, pt_files/, patches/) or TRIDENT's "
        "(<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/)."))

    def __post_init__(self) -> None:
        check_options(self)


@dataclass
class ExportResult:
    """Where the export went, the slides written and those the peer has no file for."""

    path: Path
    to: str
    slides: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        peer = EXPORTERS.get(self.to).peer
        text = f"exported {len(self.slides)} slides in {peer}'s layout (float32) -> {self.path}"
        for sid, why in self.skipped.items():
            text += f"\n  skipped {sid}: {why}"
        return text


def _check_out(src: FeatureStore, out: Path, overwrite: bool) -> None:
    check_replaceable(out, [("FEATURES", src.path)], overwrite, StoreError,
                      lambda path: (path / MARKER).is_file(),
                      f"a balnmp export (no {MARKER})")


def _one_dimension(src: FeatureStore, infos: Sequence[SlideInfo]) -> None:
    dims = [i.feature_dim for i in infos if i.n_patches]
    if not dims:
        raise StoreError(f"{src.path}: no slide has patches; nothing to export")
    dim = majority(dims)
    odd = [f"{i.slide_id} (D={i.feature_dim})" for i in infos
           if i.n_patches and i.feature_dim != dim]  # fmt: skip
    if odd:
        raise StoreError(f"{src.path}: slides have different feature dimensions, and the peers' "
                         f"models take one; differing from D={dim}: {', '.join(odd[:12])}")


def export_store(store: str | Path | FeatureStore, out: str | Path, to: str,
                 overwrite: bool = False, progress: bool | None = None) -> ExportResult:  # fmt: skip
    """Write every slide of `store` in peer `to`'s layout (`EXPORTERS`: clam, trident) at
    `out`, float32, streaming slide by slide; `out` appears only when complete. Refuses what
    the peer cannot express (see `peer_attrs`), naming the slide."""
    if to not in EXPORTERS:
        raise StoreError(EXPORTERS.unknown(to))
    if not isinstance(store, FeatureStore):
        with FeatureStore(store) as src:
            return export_store(src, out, to, overwrite, progress)
    src, out = store, Path(out)
    _check_out(src, out, overwrite)
    infos = [src.info(sid) for sid in src.slide_ids]
    _one_dimension(src, infos)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = side_name(out, "tmp")
    tmp.mkdir()
    try:
        layout = EXPORTERS.get(to)(tmp, out.resolve(), infos)
        result = ExportResult(out, to)
        _copy(src, infos, layout, result, progress)
        record = {"balnmp_export": EXPORT_VERSION, "to": to, "source": str(src.path),
                  "source_format": src.format, "slides": result.slides,
                  "skipped": result.skipped, "balnmp_version": __version__,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        fsync_tree(tmp)
        _check_out(src, out, overwrite)  # another job may have written `out` meanwhile
        publish(tmp, out)
    except BaseException:
        remove(tmp)
        raise
    return result


def _copy(src: FeatureStore, infos: Sequence[SlideInfo], layout: PeerLayout,
          result: ExportResult, progress: bool | None) -> None:  # fmt: skip
    """Read each bag and hand it to the layout, float32 (what both peers' models take)."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    for info in tqdm(infos, desc=f"export {layout.peer}", unit="slide", disable=not show):
        why = layout.skip(info)
        if why is not None:
            result.skipped[info.slide_id] = why
            continue
        features = np.empty((info.n_patches, info.feature_dim), dtype=info.dtype)
        coords = np.empty((info.n_patches, 2), dtype=np.int64)
        if info.n_patches:
            src.backend.read_into(info.slide_id, features, coords)
        if (coords < 0).any():
            raise StoreError(f"slide {info.slide_id!r} ({info.source}) has no patch "
                             "coordinates (a CLAM pt_files cache stores none), which the peers' "
                             "patch files need; export a store that has them")
        layout.write(info, np.ascontiguousarray(features, dtype=np.float32), coords)
        result.slides.append(info.slide_id)

"""What a cohort pack holds, read and validated once when it is opened, and the reader and sink
contracts each pack format implements (HDF5: `pack_h5`, Zarr: `zarr`).

A pack holds `features` (P, D), `coords` (P, 2), `offsets` (B + 1,), `slide_ids` (B,),
per-slide attributes as JSON text (`slide_attrs`, `slide_coords_attrs`) and, when some slide
recorded them, each row's source file (`patch_files` (P,), read only on demand); see
docs/format.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from balnmp_cache.errors import StoreError
from balnmp_cache.store.types import plain, with_known

__all__ = ["INDEX_ARRAYS", "PackIndex", "PackReader", "PackSink", "Run", "make_index"]


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
    """Reads one pack format; `index` is read when it is opened."""

    index: PackIndex

    def __init__(self, path: Path) -> None: ...

    def read_runs(self, runs: list[Run], features: np.ndarray, coords: np.ndarray) -> None:
        """Copy pack rows src_a:src_b to features/coords rows dst_a:dst_b for each run."""

    def patch_files(self) -> np.ndarray | None:
        """The pack's (P,) `patch_files` ("" for rows of slides without), None if absent."""

    def close(self) -> None: ...


class PackSink(Protocol):
    """Where `pack_store` writes: slice-assignable `features` / `coords`, then `finish`."""

    features: Any
    coords: Any

    def __init__(self, path: Path, n_rows: int, dim: int, dtype: np.dtype,
                 n_slides: int) -> None: ...  # fmt: skip

    def finish(self, index: dict[str, Any], root_attrs: dict) -> None:
        """Write the per-slide index arrays (INDEX_ARRAYS), `patch_files` when given (a list
        of P str) and the root attributes."""

    def abort(self) -> None:
        """Release what is open after a failure (the caller removes the file)."""


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

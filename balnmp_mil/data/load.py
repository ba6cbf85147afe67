"""Chunked loading of a feature store into one preallocated tensor.

`load_bags` returns the whole cohort as one numpy array in the store's dtype (float16 by
default); converting that to float32 holds both at once (1.5x the float32 bytes). Loading a few
hundred MB of slides at a time into a preallocated tensor keeps the peak near 1x.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from balnmp_cache.store import FeatureStore

__all__ = ["LoadedBags", "load_chunked", "CHUNK_ELEMENTS"]

CHUNK_ELEMENTS = 1 << 26  # features per load_bags call (128 MiB of float16)


@dataclass
class LoadedBags:
    """PackedBags with `features` already a tensor of the requested dtype/device;
    `patch_files` as `PackedBags.patch_files` (each row's source file, or None)."""

    features: torch.Tensor
    coords: np.ndarray
    offsets: np.ndarray
    slide_ids: list[str]
    attrs: list[dict]
    patch_files: np.ndarray | None = None


def _chunks(sizes: list[int], dim: int) -> list[tuple[int, int]]:
    out, start, acc = [], 0, 0
    for i, n in enumerate(sizes):
        if acc and (acc + n) * dim > CHUNK_ELEMENTS:
            out.append((start, i))
            start, acc = i, 0
        acc += n
    out.append((start, len(sizes)))
    return out


def load_chunked(store: FeatureStore, slide_ids: list[str], on_problem: str, allow_mixed: bool,
                 dtype: torch.dtype, device: torch.device) -> LoadedBags:
    """Load `slide_ids` from `store` in bounded chunks; the whole cohort is checked first
    by the store's own rule (`check_cohort`: one dimension, encoder, weights, µm/px)."""
    from balnmp_cache.store import StoreError, check_cohort, load_bags

    infos = []
    for sid in slide_ids:
        try:
            infos.append(store.info(sid))
        except StoreError as exc:
            if on_problem == "error":
                raise
            warnings.warn(f"skipping slide {sid}: {exc}", stacklevel=3)
    infos = check_cohort(store.path, infos, on_problem, allow_mixed) if infos else infos
    slide_ids = [i.slide_id for i in infos]
    dim = infos[0].feature_dim if infos else 0
    total = sum(i.n_patches for i in infos)
    out = torch.empty((total, dim), dtype=dtype, device=device)
    coords, offsets, ids, attrs, files = [], [0], [], [], []
    pos = 0
    for a, b in _chunks([i.n_patches for i in infos], max(dim, 1)):
        part = load_bags(store, slide_ids=slide_ids[a:b], on_problem=on_problem,
                         allow_mixed=allow_mixed)
        n = part.features.shape[0]
        out[pos : pos + n].copy_(torch.from_numpy(part.features))  # converts without a temp
        coords.append(part.coords)
        offsets.extend((np.asarray(part.offsets[1:]) + pos).tolist())
        ids.extend(part.slide_ids)
        attrs.extend(part.attrs)
        files.append(part.patch_files if part.patch_files is not None else np.full(n, ""))
        pos += n
        del part
    if pos < total:  # slides skipped with on_problem="warn"
        out = out[:pos].clone()
    names = np.concatenate(files).astype(str) if files else None
    return LoadedBags(out, np.concatenate(coords) if coords else np.zeros((0, 2), np.int64),
                      np.asarray(offsets, dtype=np.int64), ids, attrs,
                      names if names is not None and (names != "").any() else None)

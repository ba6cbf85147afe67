"""Shared fixtures for the feature-store tests: tiny random cohorts written by our writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from balnmp_cache.store import FeatureStore

ATTRS = {
    "source_path": "/slides/x.svs", "encoder": "resnet50", "weights": "imagenet",
    "patch_size": 224, "patch_size_level0": 448, "target_mpp": 0.5, "slide_mpp": 0.25,
    "level": 0, "tissue": "biopsy", "annotations": None,
}  # fmt: skip
COORDS_ATTRS = {"patch_size": 224, "patch_size_level0": 448, "level0_magnification": 40.0,
                "target_magnification": 20.0}  # fmt: skip


def make_bag(rng: np.random.Generator, n: int, dim: int, dtype: str = "float16"):
    feats = rng.normal(size=(n, dim)).astype(dtype)
    coords = rng.integers(0, 100_000, size=(n, 2)).astype(np.int64)
    return feats, coords


def write_store(path: Path, sizes: dict[str, int], dim: int = 16, dtype: str = "float16",
                format: str | None = None, seed: int = 0, attrs: dict | None = None,
                batch: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Write slides {id: n_patches} in batches; returns the exact arrays written."""
    rng = np.random.default_rng(seed)
    store = FeatureStore(path, mode="a", format=format)
    written = {}
    for sid, n in sizes.items():
        feats, coords = make_bag(rng, n, dim, dtype)
        with store.writer(sid, dim, dtype=dtype, attrs={**ATTRS, **(attrs or {})},
                          coords_attrs=COORDS_ATTRS) as w:  # fmt: skip
            for a in range(0, n, batch):
                w.append(feats[a : a + batch], coords[a : a + batch])
        written[sid] = (feats, coords)
    return written

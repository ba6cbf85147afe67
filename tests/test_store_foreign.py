"""Existing caches load unchanged: CLAM (h5_files / pt_files) and TRIDENT layouts."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from balnmp_cache.store import FeatureStore, StoreError, load_bags


def _clam_h5(path, feats, coords):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:  # what CLAM's extract_features_fp.py writes
        f.create_dataset("features", data=feats)
        c = f.create_dataset("coords", data=coords)
        c.attrs["patch_level"] = 0
        c.attrs["patch_size"] = 256


def test_clam_h5_and_pt_files(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 32)).astype(np.float32)
    b = rng.normal(size=(4, 32)).astype(np.float32)
    coords = rng.integers(0, 5000, size=(7, 2))
    _clam_h5(tmp_path / "h5_files" / "a.h5", a, coords)
    (tmp_path / "pt_files").mkdir()
    torch.save(torch.from_numpy(a), tmp_path / "pt_files" / "a.pt")
    torch.save(torch.from_numpy(b), tmp_path / "pt_files" / "b.pt")  # pt only: no coords
    store = FeatureStore(tmp_path)
    assert store.format == "clam" and store.slide_ids == ["a", "b"]
    bag = store["a"]
    np.testing.assert_array_equal(bag.features, a)
    np.testing.assert_array_equal(bag.coords, coords)
    assert bag.attrs["patch_size"] == 256 and bag.attrs["encoder"] is None
    bag = store["b"]
    np.testing.assert_array_equal(bag.features, b)
    assert (bag.coords == -1).all() and bag.features.dtype == np.float32
    packed = load_bags(tmp_path)
    np.testing.assert_array_equal(packed.offsets, [0, 7, 11])


def test_clam_pt_is_loaded_without_unpickling_objects(tmp_path):
    (tmp_path / "pt_files").mkdir()
    torch.save({"features": torch.ones(3, 4), "evil": object()}, tmp_path / "pt_files" / "x.pt")
    (tmp_path / "pt_files" / "y.pt").write_bytes(b"truncated")
    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match=r"x\.pt: cannot be loaded"):
        store.info("x")
    with pytest.raises(StoreError, match=r"y\.pt: cannot be loaded.*corrupted or truncated"):
        store["y"]


def _trident(job, mag, ps, encoder, slides, dim=16):
    folder = job / f"{mag}x_{ps}px_0px_overlap" / f"features_{encoder}"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    out = {}
    for sid, n in slides.items():
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        coords = rng.integers(0, 9000, size=(n, 2)).astype(np.int64)
        with h5py.File(folder / f"{sid}.h5", "w") as f:  # TRIDENT's save_h5 layout
            f.create_dataset("features", data=feats)
            c = f.create_dataset("coords", data=coords)
            c.attrs.update(patch_size=ps, patch_size_level0=2 * ps, level0_magnification=40,
                           target_magnification=mag, overlap=0, name=sid)  # fmt: skip
        out[sid] = (feats, coords)
    return folder


def test_trident_job_patch_and_features_dirs(tmp_path):
    job = tmp_path / "job"
    folder = _trident(job, 20, 256, "uni_v1", {"s1": 5, "s2": 3})
    for path in (job, folder.parent, folder):
        store = FeatureStore(path)
        assert store.format == "trident" and store.slide_ids == ["s1", "s2"]
        bag = store["s1"]
        assert bag.features.shape == (5, 16) and bag.attrs["encoder"] == "uni_v1"
        assert bag.attrs["patch_size"] == 256 and bag.attrs["patch_size_level0"] == 512
        assert bag.coords_attrs["target_magnification"] == 20
    with h5py.File(folder / "s2.h5") as f:
        np.testing.assert_array_equal(FeatureStore(job)["s2"].features, f["features"][:])
    assert load_bags(job).features.shape == (8, 16)
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore(job, mode="a")


def test_trident_ambiguous_job_asks_for_one(tmp_path):
    job = tmp_path / "job"
    _trident(job, 20, 256, "uni_v1", {"s1": 2})
    _trident(job, 20, 256, "conch_v15", {"s1": 2})
    with pytest.raises(StoreError, match="several TRIDENT .*features_conch_v15.*features_uni_v1"):
        FeatureStore(job)
    assert FeatureStore(job / "20x_256px_0px_overlap" / "features_uni_v1").slide_ids == ["s1"]

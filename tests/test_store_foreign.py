"""CLAM's and TRIDENT's caches load as they are, and the peer attributes of our own files.

The peers' files are made by `_data`'s builders, which reproduce byte for byte what CLAM
53e2409 and TRIDENT a91fa84 write (see docs/format.md, "Checked with the peers' code").
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _data import (
    clam_features,
    clam_patches_h5,
    trident_coords_attrs,
    trident_slide,
)

from balnmp_cache.store import FeatureStore, StoreError, load_bags
from balnmp_cache.store.peer_attrs import (
    clam_footprint,
    coords_attrs_for,
    trident_magnification,
)

RNG = np.random.default_rng(0)


def _bag(n, dim=24):
    feats = RNG.normal(size=(n, dim)).astype(np.float32)
    coords = np.stack([np.arange(n) * 256 + 100, np.full(n, 300)], axis=1).astype(np.int64)
    return feats, coords


# ---------------------------------------------------------------------------------- CLAM
def test_clam_feature_dir_loads_but_does_not_know_the_footprint(tmp_path):
    a, ca = _bag(40)
    b, _ = _bag(9)
    clam_features(tmp_path, "a", a, ca, batch_size=16)
    torch.save(torch.from_numpy(b), tmp_path / "pt_files" / "b.pt")  # pt only: no coords
    store = FeatureStore(tmp_path)
    assert store.format == "clam" and store.slide_ids == ["a", "b"]
    bag = store["a"]
    np.testing.assert_array_equal(bag.features, a)
    np.testing.assert_array_equal(bag.coords, ca)  # int32 on disk, int64 here
    assert bag.coords.dtype == np.int64 and bag.coords_attrs == {}
    assert bag.attrs["patch_size_level0"] is None and bag.attrs["encoder"] is None
    bag = store["b"]
    np.testing.assert_array_equal(bag.features, b)
    assert (bag.coords == -1).all() and bag.attrs["patch_size_level0"] is None
    np.testing.assert_array_equal(load_bags(tmp_path).offsets, [0, 40, 49])


def test_clam_job_dir_with_patches_gives_the_footprint_and_coordinates(tmp_path):
    """CLAM's patch files (`patches/`, from create_patches_fp.py) beside the features: 128 px
    at level 1 of a slide whose level 1 is 2x smaller covers 256 level-0 px."""
    (tmp_path / "patches").mkdir()
    bags = {"a": _bag(40), "b": _bag(7)}
    for sid, (feats, coords) in bags.items():
        clam_features(tmp_path, sid, feats, coords)
        clam_patches_h5(tmp_path / "patches" / f"{sid}.h5", coords, patch_size=128,
                        patch_level=1, downsample=(2.0, 2.0), level_dim=(8192, 6144),
                        parts=[3, len(coords) - 3])  # fmt: skip
    (tmp_path / "h5_files" / "b.h5").unlink()  # b: pt_files only, coords from patches/
    store = FeatureStore(tmp_path)
    for sid, (feats, coords) in bags.items():
        bag = store[sid]
        np.testing.assert_array_equal(bag.features, feats)
        np.testing.assert_array_equal(bag.coords, coords)
        assert bag.attrs["patch_size_level0"] == 256 and bag.attrs["level"] == 1
        assert bag.attrs["read_size"] == 128 and bag.coords_attrs["name"] == sid


def test_clam_patch_file_of_another_run_is_refused(tmp_path):
    feats, coords = _bag(10)
    clam_features(tmp_path, "a", feats, coords)
    (tmp_path / "patches").mkdir()
    clam_patches_h5(tmp_path / "patches" / "a.h5", coords[:6], patch_size=256, patch_level=0,
                    downsample=(1.0, 1.0), level_dim=(4096, 4096))  # fmt: skip
    with pytest.raises(StoreError, match=r"patches/a\.h5 lists 6 patches but .*a\.h5 holds 10"):
        FeatureStore(tmp_path).info("a")


def test_clam_pt_is_loaded_without_unpickling_objects(tmp_path):
    (tmp_path / "pt_files").mkdir()
    torch.save({"features": torch.ones(3, 4), "evil": object()}, tmp_path / "pt_files" / "x.pt")
    (tmp_path / "pt_files" / "y.pt").write_bytes(b"truncated")
    store = FeatureStore(tmp_path)
    with pytest.raises(StoreError, match=r"x\.pt: cannot be loaded"):
        store.info("x")
    with pytest.raises(StoreError, match=r"y\.pt: cannot be loaded.*corrupted or truncated"):
        store["y"]


# ------------------------------------------------------------------------------- TRIDENT
def _trident(job, slides, target=20, encoder="uni_v1", saveas="h5", ps=256):
    coords_dir = job / f"{target:g}x_{ps}px_0px_overlap"
    out = {}
    for sid, n in slides.items():
        feats, coords = _bag(n, 16)
        attrs = trident_coords_attrs(sid, coords_dir, patch_size=ps, target=target)
        trident_slide(coords_dir, encoder, sid, feats, coords, attrs, saveas=saveas)
        out[sid] = (feats, coords)
    return coords_dir / f"features_{encoder}", out


@pytest.mark.parametrize("target", [20, 20.0], ids=["api-int", "cli-float"])
def test_trident_job_patch_and_features_dirs(tmp_path, target):
    job = tmp_path / "job"
    folder, bags = _trident(job, {"s1": 5, "s2": 3}, target=target)
    for path in (job, folder.parent, folder):
        store = FeatureStore(path)
        assert store.format == "trident" and store.slide_ids == ["s1", "s2"]
        bag = store["s1"]
        np.testing.assert_array_equal(bag.features, bags["s1"][0])
        np.testing.assert_array_equal(bag.coords, bags["s1"][1])
        assert bag.attrs["encoder"] == "uni_v1" and bag.attrs["patch_size"] == 256
        assert bag.attrs["patch_size_level0"] == 512
        assert bag.coords_attrs["target_magnification"] == 20
    assert load_bags(job).features.shape == (8, 16)
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore(job, mode="a")


def test_trident_slide_without_patches_is_an_empty_bag(tmp_path):
    """TRIDENT stores `features` of shape (0,) for such a slide: an empty bag of the cohort's
    dimension, which a load reports (or skips) like any empty bag."""
    folder, _ = _trident(tmp_path / "job", {"e": 0, "s": 4})
    store = FeatureStore(folder)
    info = store.info("e")
    assert (info.n_patches, info.feature_dim) == (0, 16)
    assert store["e"].features.shape == (0, 16) and store["e"].attrs["patch_size_level0"] == 512
    with pytest.raises(StoreError, match="empty bags.*: e"):
        load_bags(folder)
    with pytest.warns(UserWarning, match="empty bags"):
        assert load_bags(folder, on_problem="warn").slide_ids == ["s"]


def test_trident_pt_cache_loads_numpy_arrays_and_nothing_else(tmp_path):
    """`saveas='pt'`: a pickled numpy array per slide, coordinates in `../patches/`."""
    folder, bags = _trident(tmp_path / "job", {"a": 6, "b": 3, "e": 0}, saveas="pt")
    store = FeatureStore(folder)
    assert store.slide_ids == ["a", "b", "e"]
    for sid in ("a", "b"):
        bag = store[sid]
        np.testing.assert_array_equal(bag.features, bags[sid][0])
        np.testing.assert_array_equal(bag.coords, bags[sid][1])
        assert bag.attrs["patch_size_level0"] == 512
    assert store["e"].features.shape == (0, 16)

    marker = tmp_path / "unpickling-ran-code"

    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    torch.save(Evil(), folder / "x.pt")
    torch.save(np.arange(6).reshape(3, 2), folder / "y.pt")  # not float features
    with pytest.raises(StoreError, match=r"x\.pt: cannot be loaded as a numpy array .*mkdir"):
        store.info("x")
    assert not marker.exists()
    with pytest.raises(StoreError, match=r"y\.pt: expected a \(N, D\) float feature array"):
        store.info("y")


def test_trident_ambiguous_job_asks_for_one(tmp_path):
    job = tmp_path / "job"
    _trident(job, {"s1": 2})
    _trident(job, {"s1": 2}, encoder="conch_v15")
    with pytest.raises(StoreError, match="several TRIDENT .*features_conch_v15.*features_uni_v1"):
        FeatureStore(job)
    assert FeatureStore(job / "20x_256px_0px_overlap" / "features_uni_v1").slide_ids == ["s1"]


# ------------------------------------------------------------- our files, peers' meaning
@pytest.mark.parametrize(("mpp", "mag"), [
    (0.2527, 40), (0.25, 40), (0.2, 40), (0.16, 60), (0.15, 80), (0.3, 20), (0.5, 20),
    (0.6, 10), (1.2, 5), (2.4, None), (None, None),
])  # fmt: skip
def test_level0_magnification_is_snapped_as_trident_does(mpp, mag):
    assert trident_magnification(mpp) == mag


def _attrs_at(mpp, read_size, ps0):
    dims, downsamples = ((40000, 30000), (20000, 15000)), (1.0, 2.0)
    return coords_attrs_for("s", patch_size=256, patch_size_level0=ps0, read_size=read_size,
                            level=1, overlap=0, slide_mpp=mpp, level_dimensions=dims,
                            level_downsamples=downsamples)  # fmt: skip


def test_our_coords_attrs_mean_what_the_peers_read():
    """0.2527 µm/px, 256 px at 0.5 µm/px = 507 level-0 px, read as 253 px at level 1 and
    resized: TRIDENT's readers must compute 507, and CLAM's `patch_level` is left out
    (CLAM would read 256 px there). At 0.25 µm/px nothing is resized: CLAM's meaning holds."""
    a = _attrs_at(0.2527, 253, 507)
    assert a["level0_magnification"] == 40 and isinstance(a["level0_magnification"], int)
    assert round(a["patch_size"] * a["level0_magnification"] / a["target_magnification"]) == 507
    assert "patch_level" not in a and a["name"] == "s" and a["level"] == 1
    assert (a["level0_width"], a["level0_height"], a["downsample"]) == (40000, 30000, (2.0, 2.0))
    b = _attrs_at(0.25, 256, 512)
    assert b["patch_level"] == 1 and b["target_magnification"] == 20
    assert clam_footprint(b) == 512
    folder = coords_attrs_for("s", patch_size=224, patch_size_level0=224, read_size=224,
                              level=0, overlap=0, slide_mpp=None, level_dimensions=None,
                              level_downsamples=None)  # fmt: skip
    assert "patch_level" not in folder and "level0_magnification" not in folder

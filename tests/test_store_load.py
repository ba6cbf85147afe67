"""load_bags: packed arrays from a per-slide store, and every validation problem named."""

from __future__ import annotations

import numpy as np
import pytest
from _data import write_store

from balnmp_cache.store import BACKENDS, FeatureStore, StoreError, load_bags
from balnmp_cache.store.load import StoreWarning

# Every registered format, by what its class says it can do (a new one is tested unedited).
WRITABLE = [name for name, cls in BACKENDS.items() if cls.writable]
READ_ONLY = [name for name, cls in BACKENDS.items() if not cls.writable]


def _poke(path, sid, feats):
    """Rewrite one slide with given features (keeps the other attributes of the helpers)."""
    store = FeatureStore(path, mode="a")
    with store.writer(sid, feats.shape[1], dtype=feats.dtype, attrs=store.attrs(sid)) as w:
        w.append(feats, np.zeros((len(feats), 2), np.int64))


def test_packs_bags_in_order_with_offsets(tmp_path):
    written = write_store(tmp_path / "f", {"b": 4, "a": 6, "c": 1}, dim=8)
    packed = load_bags(tmp_path / "f")
    assert packed.slide_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(packed.offsets, [0, 6, 10, 11])
    assert packed.features.shape == (11, 8) and packed.features.dtype == np.float16
    assert packed.features.flags.c_contiguous and packed.coords.dtype == np.int64
    for i, sid in enumerate(packed.slide_ids):
        bag = packed.bag(i)
        np.testing.assert_array_equal(bag.features, written[sid][0])
        np.testing.assert_array_equal(bag.coords, written[sid][1])
        assert bag.attrs["encoder"] == "resnet50" and bag.coords_attrs["patch_size"] == 224
    assert len(packed) == 3 and packed.feature_dim == 8 and packed.problems == []


@pytest.mark.parametrize("fmt", WRITABLE)
def test_every_writable_format_round_trips_through_load_bags(tmp_path, fmt):
    """What a writable format's writer took, its reader and `load_bags` give back."""
    written = write_store(tmp_path / "f", {"b": 9, "a": 1, "e": 0}, dim=6, format=fmt)
    store = FeatureStore(tmp_path / "f", format=fmt)
    assert store.slide_ids == ["a", "b", "e"]
    for sid, (feats, coords) in written.items():
        bag = store[sid]
        assert bag.features.dtype == feats.dtype and bag.features.shape == (len(feats), 6)
        np.testing.assert_array_equal(bag.features, feats)
        np.testing.assert_array_equal(bag.coords, coords)
        assert bag.attrs["slide_id"] == sid and bag.attrs["encoder"] == "resnet50"
    packed = load_bags(store, slide_ids=["b", "a"])
    np.testing.assert_array_equal(packed.offsets, [0, 9, 10])
    np.testing.assert_array_equal(packed.features, np.concatenate([written["b"][0],
                                                                   written["a"][0]]))


@pytest.mark.parametrize("fmt", READ_ONLY)
def test_read_only_formats_refuse_to_write(tmp_path, fmt):
    with pytest.raises(StoreError, match=f"the '{fmt}' format is read-only"):
        FeatureStore(tmp_path / "f", mode="a", format=fmt)


def test_subset_keeps_requested_order(tmp_path):
    written = write_store(tmp_path / "f", {"a": 2, "b": 3, "c": 4}, dim=4)
    packed = load_bags(FeatureStore(tmp_path / "f"), slide_ids=["c", "a"])
    assert packed.slide_ids == ["c", "a"]
    np.testing.assert_array_equal(packed.features[:4], written["c"][0])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_nan_and_inf_are_errors_or_skipped(tmp_path, dtype):
    write_store(tmp_path / "f", {"ok": 3, "nan": 3, "inf": 3}, dim=4, dtype=dtype)
    bad = np.full((3, 4), -65504.0, dtype)  # the most negative finite float16 is no problem
    bad[1, 2] = np.nan
    _poke(tmp_path / "f", "nan", bad)
    bad[1, 2] = -np.inf
    _poke(tmp_path / "f", "inf", bad)
    with pytest.raises(StoreError, match=r"NaN or Inf.*inf \(1 patches\), nan \(1 patches\)"):
        load_bags(tmp_path / "f")
    with pytest.warns(StoreWarning, match="NaN or Inf"):
        packed = load_bags(tmp_path / "f", on_problem="warn")
    assert packed.slide_ids == ["ok"] and packed.features.shape == (3, 4)
    assert np.isfinite(packed.features).all() and len(packed.problems) == 1


def test_dimension_mismatch_names_the_odd_slide(tmp_path):
    write_store(tmp_path / "f", {"a": 2, "b": 2}, dim=8)
    write_store(tmp_path / "f", {"odd": 2}, dim=5, seed=1)
    with pytest.raises(StoreError, match=r"differs from the cohort's D=8: odd \(D=5\)"):
        load_bags(tmp_path / "f")
    with pytest.warns(StoreWarning, match="odd"):
        assert load_bags(tmp_path / "f", on_problem="warn").slide_ids == ["a", "b"]


def test_duplicates_missing_and_empty(tmp_path):
    write_store(tmp_path / "f", {"a": 2, "b": 2, "empty": 0}, dim=4)
    with pytest.raises(StoreError, match="duplicate slide ids requested: a"):
        load_bags(tmp_path / "f", slide_ids=["a", "a", "b"])
    with pytest.raises(StoreError, match="not in the feature store .*: zz"):
        load_bags(tmp_path / "f", slide_ids=["a", "zz"])
    with pytest.raises(StoreError, match="empty bags .*: empty"):
        load_bags(tmp_path / "f")
    with pytest.warns(StoreWarning) as record:
        packed = load_bags(tmp_path / "f", slide_ids=["b", "a", "a", "zz", "empty"],
                           on_problem="warn")  # fmt: skip
    assert packed.slide_ids == ["b", "a"] and len(record) == 3


def test_mixed_encoders_and_mpp_refused_unless_allowed(tmp_path):
    write_store(tmp_path / "f", {"a": 2, "b": 2}, dim=4)
    write_store(tmp_path / "f", {"v": 2}, dim=4, attrs={"encoder": "vit_s"}, seed=1)
    write_store(tmp_path / "f", {"m": 2}, dim=4, attrs={"target_mpp": 1.0}, seed=2)
    with pytest.raises(StoreError, match=r"mixed encoder.*v \('vit_s'\).*mixed target_mpp.*m"):
        load_bags(tmp_path / "f")
    assert load_bags(tmp_path / "f", allow_mixed=True).slide_ids == ["a", "b", "m", "v"]
    with pytest.warns(StoreWarning):
        assert load_bags(tmp_path / "f", on_problem="warn").slide_ids == ["a", "b"]


def test_mixed_dtypes_upcast_to_float32(tmp_path):
    written = write_store(tmp_path / "f", {"h": 3}, dim=4, dtype="float16")
    write_store(tmp_path / "f", {"s": 3}, dim=4, dtype="float32", seed=1)
    packed = load_bags(tmp_path / "f")
    assert packed.features.dtype == np.float32
    np.testing.assert_array_equal(packed.features[:3], written["h"][0].astype(np.float32))


def test_unreadable_file_named_or_skipped(tmp_path):
    write_store(tmp_path / "f", {"a": 3, "b": 3}, dim=4)
    (tmp_path / "f" / "b.h5").write_bytes(b"\0" * 100)
    with pytest.raises(StoreError, match=r"b\.h5.*corrupted or truncated"):
        load_bags(tmp_path / "f")
    with pytest.warns(StoreWarning, match=r"b\.h5"):
        assert load_bags(tmp_path / "f", on_problem="warn").slide_ids == ["a"]
    with pytest.raises(StoreError, match="on_problem"):
        load_bags(tmp_path / "f", on_problem="ignore")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_finite_check_matches_isfinite_on_special_values(dtype):
    from balnmp_cache.store.load import finite_rows

    info = np.finfo(dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, info.max, info.min, info.tiny, -0.0, 0.0,
                info.smallest_subnormal, -info.smallest_subnormal]  # fmt: skip
    x = np.random.default_rng(0).normal(size=(len(specials) * 2, 6)).astype(dtype)
    for i, v in enumerate(specials):
        x[2 * i, i % 6] = v
    np.testing.assert_array_equal(finite_rows(x), np.isfinite(x).all(axis=1))
    assert not finite_rows(x).all()

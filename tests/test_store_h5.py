"""Per-slide HDF5 store: round trip, CLAM/TRIDENT-style plain reads, atomic writes, errors."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from _data import COORDS_ATTRS, write_store
from _data import STORE_ATTRS as ATTRS

from balnmp_cache.store import KNOWN_ATTRS, FeatureStore, StoreError


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_preserves_dtype_shapes_attrs(tmp_path, dtype):
    written = write_store(tmp_path / "f", {"a": 20, "b": 3}, dim=12, dtype=dtype)
    store = FeatureStore(tmp_path / "f")
    assert store.format == "h5"
    assert store.slide_ids == ["a", "b"] and len(store) == 2 and "a" in store
    for sid, (feats, coords) in written.items():
        bag = store[sid]
        assert bag.features.dtype == np.dtype(dtype) and bag.features.shape == feats.shape
        assert bag.coords.dtype == np.int64 and bag.coords.shape == (len(feats), 2)
        np.testing.assert_array_equal(bag.features, feats)
        np.testing.assert_array_equal(bag.coords, coords)
        for key, value in ATTRS.items():
            assert bag.attrs[key] == value, key
        assert set(KNOWN_ATTRS) <= set(bag.attrs)
        assert bag.attrs["slide_id"] == sid and bag.attrs["feature_dim"] == 12
        assert bag.attrs["balnmp_version"] and bag.attrs["created"]
        assert bag.coords_attrs == COORDS_ATTRS
        assert store.attrs(sid) == bag.attrs


def test_files_load_the_clam_trident_way(tmp_path):
    written = write_store(tmp_path / "f", {"s1": 9}, dim=8)
    with h5py.File(tmp_path / "f" / "s1.h5") as f:  # what CLAM / TRIDENT code does
        feats, coords = f["features"][:], f["coords"][:]
        assert f["coords"].attrs["patch_size"] == 224
        assert f["coords"].attrs["level0_magnification"] == 40.0
        assert f.attrs["encoder"] == "resnet50" and f.attrs["target_mpp"] == 0.5
        assert "annotations" not in f.attrs  # None is stored as an absent attribute
    np.testing.assert_array_equal(feats, written["s1"][0])
    np.testing.assert_array_equal(coords, written["s1"][1])


def test_none_and_structured_attrs_round_trip(tmp_path):
    store = FeatureStore(tmp_path / "f", mode="a")
    attrs = {"annotations": "", "tissue": None, "params": {"min_tissue": 0.5, "names": ["a"]}, "xy": [1, 2]}
    with store.writer("s", 4, attrs=attrs) as w:
        w.append(np.ones((2, 4)), np.zeros((2, 2)))
    got = store.attrs("s")
    assert got["annotations"] == "" and got["tissue"] is None  # None: absent, reads as None
    assert got["params"] == attrs["params"]
    assert got["xy"] == [1, 2]


def test_empty_bag_is_written_with_zero_rows(tmp_path):
    store = FeatureStore(tmp_path / "f", mode="a")
    with store.writer("empty", 32):
        pass
    bag = store["empty"]
    assert bag.features.shape == (0, 32) and bag.coords.shape == (0, 2)


def test_temp_file_is_invisible_until_commit(tmp_path):
    store = FeatureStore(tmp_path / "f", mode="a")
    w = store.writer("s", 4)
    w.append(np.ones((3, 4)), np.zeros((3, 2)))
    assert store.slide_ids == [] and not store.is_complete("s")
    assert [p.name for p in (tmp_path / "f").iterdir()] == [f".s.h5.tmp-{os.getpid()}"]
    w.commit()
    assert store.slide_ids == ["s"] and store.is_complete("s")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["s.h5"]


def test_writer_exception_leaves_no_file(tmp_path):
    store = FeatureStore(tmp_path / "f", mode="a")
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with store.writer("s", 4) as w:
            w.append(np.ones((3, 4)), np.zeros((3, 2)))
            raise RuntimeError("encoder crashed")
    assert list((tmp_path / "f").iterdir()) == []


def test_overwrite_replaces_and_remove_deletes(tmp_path):
    write_store(tmp_path / "f", {"s": 5}, dim=4)
    store = FeatureStore(tmp_path / "f", mode="a")
    with store.writer("s", 4) as w:
        w.append(np.full((2, 4), 7.0), np.zeros((2, 2)))
    assert store["s"].features.shape == (2, 4) and float(store["s"].features[0, 0]) == 7.0
    store.remove("s")
    assert store.slide_ids == []


def test_bad_batches_and_ids_are_refused(tmp_path):
    store = FeatureStore(tmp_path / "f", mode="a")
    with pytest.raises(StoreError, match="expected \\(b, 4\\)"):
        with store.writer("s", 4) as w:
            w.append(np.ones((3, 5)), np.zeros((3, 2)))
    with pytest.raises(StoreError, match="coords batch"):
        with store.writer("s", 4) as w:
            w.append(np.ones((3, 4)), np.zeros((2, 2)))
    with pytest.raises(StoreError, match="must not contain"):
        store.writer("a/b", 4)
    with pytest.raises(StoreError, match="not supported"):
        store.writer("s", 4, dtype="int8")
    assert list((tmp_path / "f").iterdir()) == []


def test_read_only_and_missing_stores(tmp_path):
    with pytest.raises(StoreError, match="no such feature store"):
        FeatureStore(tmp_path / "nope")
    write_store(tmp_path / "f", {"s": 2}, dim=4)
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore(tmp_path / "f").writer("t", 4)
    with pytest.raises(KeyError, match="'zz' is not in the feature store"):
        FeatureStore(tmp_path / "f")["zz"]


def test_corrupted_and_truncated_files_are_named(tmp_path):
    write_store(tmp_path / "f", {"good": 50, "trunc": 400}, dim=64)
    (tmp_path / "f" / "garbage.h5").write_bytes(b"not an hdf5 file at all" * 10)
    path = tmp_path / "f" / "trunc.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    store = FeatureStore(tmp_path / "f")
    with pytest.raises(StoreError, match="garbage.h5.*corrupted or truncated"):
        store["garbage"]
    with pytest.raises(StoreError, match="trunc.h5.*corrupted or truncated"):
        store["trunc"]
    assert store["good"].features.shape == (50, 64)


@pytest.mark.parametrize("internal", [True, False], ids=["h5py-internal", "plain-h5py"])
def test_attributes_are_written_as_h5py_writes_them_byte_for_byte(tmp_path, monkeypatch, internal):
    """`encode_attrs` makes its HDF5 types once per kind; the file must not change for it."""
    from balnmp_cache.store import h5
    from balnmp_cache.store.h5 import JSON_ATTRS, decode_attrs, encode_attrs

    if not internal:  # an h5py without the internal helper: plain `attrs[k] = v`
        monkeypatch.setattr(h5, "_AS_ARRAY", None)

    attrs = {"s": "µm/px ü", "i": 3, "f": 0.5, "b": True, "ints": [1, 2, 3], "floats": [1.5, 2.0],
             "nested": {"a": [1, "x"]}, "names": ["a", "b"], "empty": [], "none": None,
             "np": np.int64(7)}  # fmt: skip
    for name in ("ours", "ours-again"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            encode_attrs(f.attrs, attrs)
            encode_attrs(f.create_dataset("coords", data=np.zeros((2, 2), np.int64)).attrs,
                         {"patch_size": 224, "i": 4})  # fmt: skip
    with h5py.File(tmp_path / "h5py.h5", "w") as f:  # h5py's own `attrs[key] = value`
        for k, v in [("s", "µm/px ü"), ("i", 3), ("f", 0.5), ("b", True),
                     ("ints", np.asarray([1, 2, 3])), ("floats", np.asarray([1.5, 2.0])),
                     ("nested", '{"a": [1, "x"]}'), ("names", '["a", "b"]'), ("empty", "[]"),
                     ("np", 7),
                     (JSON_ATTRS, np.array(["nested", "names", "empty"], h5py.string_dtype()))]:
            f.attrs[k] = v
        d = f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
        d.attrs["patch_size"], d.attrs["i"] = 224, 4
    want = (tmp_path / "h5py.h5").read_bytes()
    assert (tmp_path / "ours.h5").read_bytes() == want
    assert (tmp_path / "ours-again.h5").read_bytes() == want  # the cached types, reused
    with h5py.File(tmp_path / "ours.h5") as f:
        back = decode_attrs(f.attrs)
    assert back == {k: v for k, v in attrs.items() if v is not None} | {"np": 7}

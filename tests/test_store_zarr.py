"""Zarr v3 store: round trip, one group per slide, atomic and parallel-safe writers."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import zarr
from _data import COORDS_ATTRS, write_store
from _data import STORE_ATTRS as ATTRS

from balnmp_cache.store import FeatureStore, StoreError, load_bags


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_preserves_dtype_shapes_attrs(tmp_path, dtype):
    path = tmp_path / "cohort.zarr"
    written = write_store(path, {"a": 30, "b": 1, "e": 0}, dim=10, dtype=dtype)
    store = FeatureStore(path)
    assert store.format == "zarr" and store.slide_ids == ["a", "b", "e"]
    for sid, (feats, coords) in written.items():
        bag = store[sid]
        assert bag.features.dtype == np.dtype(dtype) and bag.features.shape == (len(feats), 10)
        assert bag.coords.dtype == np.int64
        np.testing.assert_array_equal(bag.features, feats)
        np.testing.assert_array_equal(bag.coords, coords)
        for key, value in ATTRS.items():
            assert bag.attrs[key] == value, key
        assert bag.coords_attrs == COORDS_ATTRS and bag.attrs["slide_id"] == sid


def test_plain_zarr_reads_one_group_per_slide(tmp_path):
    path = tmp_path / "cohort.zarr"
    written = write_store(path, {"s1": 5, "s2": 2}, dim=4)
    root = zarr.open_group(path, mode="r")
    assert sorted(name for name, _ in root.groups()) == ["s1", "s2"]
    np.testing.assert_array_equal(root["s1/features"][:], written["s1"][0])
    assert root["s1"].attrs["encoder"] == "resnet50" and root["s1"].attrs["annotations"] is None
    assert root["s1/coords"].attrs["target_magnification"] == 20.0


def test_writer_exception_and_pending_writes_are_invisible(tmp_path):
    path = tmp_path / "c.zarr"
    store = FeatureStore(path, mode="a")
    with pytest.raises(ValueError, match="boom"):
        with store.writer("s", 4) as w:
            w.append(np.ones((3, 4)), np.zeros((3, 2)))
            raise ValueError("boom")
    assert store.slide_ids == [] and sorted(p.name for p in path.iterdir()) == ["zarr.json"]
    w = store.writer("t", 4)
    w.append(np.ones((3, 4)), np.zeros((3, 2)))
    assert store.slide_ids == []  # temp group is hidden
    w.commit()
    assert store.slide_ids == ["t"] and store["t"].features.shape == (3, 4)
    store.remove("t")
    assert store.slide_ids == []


def _write_in_child(args: tuple[str, list[str]]) -> list[str]:
    path, ids = args
    store = FeatureStore(path, mode="a", format="zarr")
    for sid in ids:
        with store.writer(sid, 8, dtype="float32") as w:
            for _ in range(3):
                w.append(np.full((5, 8), float(len(sid))), np.zeros((5, 2)))
    return ids


def test_parallel_writers_on_distinct_slides(tmp_path):
    path = str(tmp_path / "p.zarr")
    jobs = [(path, [f"w{k}_{i}" for i in range(4)]) for k in range(2)]
    with mp.get_context("spawn").Pool(2) as pool:
        done = pool.map(_write_in_child, jobs)
    store = FeatureStore(path)
    assert store.slide_ids == sorted(s for ids in done for s in ids)
    packed = load_bags(store)
    assert packed.features.shape == (8 * 15, 8) and (packed.features == 4.0).all()
    assert [p.name for p in Path(path).iterdir() if p.name.startswith(".")] == []


def test_corrupted_chunk_is_named(tmp_path):
    path = tmp_path / "c.zarr"
    write_store(path, {"good": 3, "bad": 300}, dim=64)
    chunk = next((path / "bad" / "features" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(StoreError, match=r"bad.*corrupted or truncated"):
        load_bags(path)
    (path / "good" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"good.*cannot be read as Zarr"):
        FeatureStore(path).info("good")

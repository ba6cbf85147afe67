"""Cohort packs: layout, equality with per-slide loads, atomicity, bounded memory, CLI."""

from __future__ import annotations

import json
import tracemalloc

import h5py
import numpy as np
import pytest
from _data import write_store
from click.testing import CliRunner

from balnmp_cache.store import FeatureStore, StoreError, load_bags
from balnmp_cache.store.pack import PACK_READERS, PACK_SINKS, pack_store
from balnmp_mil.cli.store import inspect_cmd, pack_cmd


@pytest.fixture()
def cohort(tmp_path):
    written = write_store(tmp_path / "f", {"p1": 5, "p2": 9, "p3": 1, "p4": 4}, dim=8)
    return tmp_path / "f", written


def test_pack_formats_are_one_registry_with_a_reader_per_sink(tmp_path, cohort):
    assert PACK_SINKS.names() == PACK_READERS.names() == ["h5", "zarr"]
    with pytest.raises(StoreError, match=r"unknown pack format 'csv' \(--format\); choose one "
                                         "of h5, zarr"):
        pack_store(cohort[0], tmp_path / "x.csv", format="csv")


@pytest.mark.parametrize("fmt", PACK_SINKS.names())  # every registered pack format
def test_pack_equals_per_slide_load(tmp_path, cohort, fmt):
    store, _ = cohort
    out = pack_store(store, tmp_path / f"pack.{fmt}", format=fmt)
    a, b = load_bags(store), load_bags(out)
    assert FeatureStore(out).format == "pack"
    assert b.slide_ids == a.slide_ids and b.features.dtype == np.float16
    for field in ("features", "coords", "offsets"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field))
    assert b.attrs == a.attrs and b.coords_attrs == a.coords_attrs
    sub = load_bags(out, slide_ids=["p4", "p1", "p2"])  # non-contiguous: per-range reads
    np.testing.assert_array_equal(sub.features[:4], a.bag(3).features)
    np.testing.assert_array_equal(sub.features[4:], a.features[:14])
    bag = FeatureStore(out)["p2"]
    np.testing.assert_array_equal(bag.coords, a.bag(1).coords)


def test_pack_layout_is_plain_hdf5(tmp_path, cohort):
    store, written = cohort
    out = pack_store(store, tmp_path / "pack.h5")
    with h5py.File(out) as f:
        assert f["features"].shape == (19, 8) and f["features"].chunks is None  # contiguous
        assert f["coords"].dtype == np.int64 and f["offsets"].dtype == np.int64
        assert [s.decode() for s in f["slide_ids"][:]] == ["p1", "p2", "p3", "p4"]
        np.testing.assert_array_equal(f["offsets"][:], [0, 5, 14, 15, 19])
        np.testing.assert_array_equal(f["features"][5:14], written["p2"][0])
        attrs = json.loads(f["slide_attrs"][1])
        assert attrs["slide_id"] == "p2" and attrs["encoder"] == "resnet50"
        assert f.attrs["balnmp_pack"] == 1 and f.attrs["encoder"] == "resnet50"
        assert f.attrs["n_slides"] == 4 and f.attrs["feature_dim"] == 8
        np.testing.assert_array_equal(f["nonfinite_rows"][:], [0, 0, 0, 0])


@pytest.mark.parametrize("fmt,name", [("h5", "pack.h5"), ("zarr", "pack.zarr")])
def test_nan_counted_when_packing_so_loads_need_no_scan(tmp_path, monkeypatch, fmt, name):
    store = FeatureStore(tmp_path / "f", mode="a")
    for sid, value in (("a", 1.0), ("b", np.nan), ("c", 2.0)):
        with store.writer(sid, 4) as w:
            w.append(np.array([[1, 2, 3, 4], [value, 0, 0, 0]]), np.zeros((2, 2)))
    out = pack_store(store, tmp_path / name, format=fmt)

    def no_scan(features):
        raise AssertionError("a pack load must not rescan the features")

    with monkeypatch.context() as m:
        m.setattr("balnmp_cache.store.load.finite_rows", no_scan)
        with pytest.raises(StoreError, match=r"NaN or Inf.*: b \(1 patches\)"):
            load_bags(out)
        with pytest.warns(UserWarning, match="NaN"):
            assert load_bags(out, on_problem="warn").slide_ids == ["a", "c"]
    if fmt == "h5":  # a pack without the counts (another writer) is scanned instead
        with h5py.File(out, "a") as f:
            del f["nonfinite_rows"]
        with pytest.raises(StoreError, match=r"NaN or Inf.*: b \(1 patches\)"):
            load_bags(out)


def test_existing_out_mixed_dims_and_failures_leave_nothing(tmp_path, cohort, monkeypatch):
    store, _ = cohort
    out = pack_store(store, tmp_path / "pack.h5")
    with pytest.raises(StoreError, match="already exists"):
        pack_store(store, out)
    write_store(store, {"odd": 2}, dim=3, seed=5)
    with pytest.raises(StoreError, match=r"different feature dimensions.*odd \(D=3\)"):
        pack_store(store, tmp_path / "other.h5")
    FeatureStore(store, mode="a").remove("odd")
    calls = []

    def failing(self, sid, feats, coords):
        calls.append(sid)
        if len(calls) == 3:
            raise StoreError(f"{sid}: disk went away")
        feats[...] = 0
        coords[...] = 0

    monkeypatch.setattr("balnmp_cache.store.h5.H5Backend.read_into", failing)
    with pytest.raises(StoreError, match="disk went away"):
        pack_store(store, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "pack.h5"]  # old pack kept
    assert load_bags(out).features.shape == (19, 8)


def test_truncated_pack_is_named(tmp_path, cohort):
    store, _ = cohort
    out = pack_store(store, tmp_path / "pack.h5")
    out.write_bytes(out.read_bytes()[:2000])
    with pytest.raises(StoreError, match=r"pack\.h5.*(corrupted or truncated|cannot be)"):
        load_bags(out)


def test_packing_memory_is_bounded_by_one_bag(tmp_path):
    dim, n, slides = 256, 2500, 24  # 24 x 2.4 MB float32 = 61 MB cohort
    store = FeatureStore(tmp_path / "big", mode="a")
    block = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    for k in range(slides):
        with store.writer(f"s{k:02d}", dim, dtype="float32") as w:
            w.append(block + k, np.zeros((n, 2), np.int64))
    cohort_bytes = slides * n * dim * 4
    tracemalloc.start()
    try:
        pack_store(store, tmp_path / "pack.h5")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        packed = load_bags(tmp_path / "pack.h5")
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert load_peak >= cohort_bytes  # tracemalloc sees numpy buffers: the bound is meaningful
    assert peak < cohort_bytes / 8, f"packing peaked at {peak / 1e6:.1f} MB"
    np.testing.assert_array_equal(packed.features[-n:], block + (slides - 1))


def test_cli_pack_and_inspect(tmp_path, cohort):
    store, _ = cohort
    runner = CliRunner()
    res = runner.invoke(pack_cmd, [str(store), "--out", str(tmp_path / "c.zarr"), "--format",
                                   "zarr"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "packed 4 slides, 19 patches x 8 (float16)" in res.output
    res = runner.invoke(inspect_cmd, [str(tmp_path / "c.zarr")])
    assert res.exit_code == 0, res.output
    assert "slides:    4" in res.output and "min 1 / median 4.5 / max 9" in res.output
    assert "encoder:   resnet50" in res.output and "target 0.5" in res.output
    assert "problems:  none" in res.output
    res = runner.invoke(pack_cmd, [str(tmp_path / "missing"), "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "missing: no such feature store" in res.output


def test_cli_inspect_reports_problems(tmp_path, cohort):
    store, _ = cohort
    write_store(store, {"empty": 0}, dim=8, seed=3)
    (store / "broken.h5").write_bytes(b"junk")
    res = CliRunner().invoke(inspect_cmd, [str(store)])
    assert res.exit_code == 1, res.output
    assert "broken.h5" in res.output and "empty bags" in res.output and "problems:  2" in res.output
    res = CliRunner().invoke(inspect_cmd, [str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "x.h5" in res.output

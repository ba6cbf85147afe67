"""Fault suite, stores: damage is detected where it happens, never read as zeros.

A Zarr slide or pack with a missing chunk file and a truncated HDF5 slide are each a
`StoreError` naming the slide (or pack) and the command-line fix, from `FeatureStore`, from
`load_bags` and from a pack built on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _data import write_store

from balnmp_cache.errors import StoreError
from balnmp_cache.store import FeatureStore, load_bags
from balnmp_cache.store.pack import pack_store


def _chunks(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("array", ["features", "coords"])
def test_a_zarr_slide_missing_a_chunk_is_damage_not_zeros(tmp_path: Path, array: str) -> None:
    path = tmp_path / "s.zarr"
    write_store(path, {"a": 5, "b": 300}, dim=1024, format="zarr")  # b: several chunks
    chunks = _chunks(path / "b" / array)
    chunks[-1].unlink()
    store = FeatureStore(path)
    with pytest.raises(StoreError, match=rf"b.*{array}.*missing.*extract-features.*--overwrite"):
        store["b"]
    with pytest.raises(StoreError, match=r"\bb\b.*missing"):
        load_bags(path)
    assert len(store["a"]) == 5  # the other slide is fine
    with pytest.warns(UserWarning, match="missing"):
        assert load_bags(path, on_problem="warn").slide_ids == ["a"]


def test_a_zarr_slide_with_all_chunks_reads(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    written = write_store(path, {"a": 0, "b": 300}, dim=1024, format="zarr")
    store = FeatureStore(path)
    assert len(store["a"]) == 0
    assert (store["b"].features == written["b"][0]).all()


def test_a_zarr_pack_missing_a_chunk_is_damage(tmp_path: Path) -> None:
    src = tmp_path / "s"
    write_store(src, {"a": 300, "b": 300}, dim=2048)
    pack = tmp_path / "cohort.zarr"
    pack_store(src, pack, format="zarr")
    _chunks(pack / "features")[0].unlink()
    with pytest.raises(StoreError, match=r"cohort\.zarr.*missing.*pack"):
        load_bags(pack)


@pytest.mark.parametrize("keep", [0, 100, 0.5, 0.99])
def test_a_truncated_hdf5_slide_is_damage(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "s"
    write_store(path, {"a": 50, "b": 50}, dim=64)
    victim = path / "b.h5"
    data = victim.read_bytes()
    victim.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
    store = FeatureStore(path)
    assert store.slide_ids == ["a", "b"]
    with pytest.raises(StoreError, match=r"b\.h5.*truncated.*extract-features"):
        store["b"]
    with pytest.raises(StoreError, match=r"b\.h5"):
        load_bags(path)
    assert len(store["a"]) == 50

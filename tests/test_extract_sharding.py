"""Shards, SLURM array variables, --devices parsing and the shared manifest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from balnmp_cache.extract.manifest import SlideResult, read_manifest, update_manifest
from balnmp_cache.extract.sharding import (
    Shard,
    parse_devices,
    parse_shard,
    resolve_shard,
    shard_from_env,
)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_cover_every_slide_exactly_once(n: int) -> None:
    ids = [f"slide{i:03d}" for i in range(23)]
    shuffled = ids[7:] + ids[:7]  # the order slides are listed in must not matter
    parts = [Shard(i, n).select(shuffled) for i in range(n)]
    flat = [s for part in parts for s in part]
    assert sorted(flat) == ids
    assert len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == [Shard(i, n).select(ids) for i in range(n)]


def test_select_by_key() -> None:
    paths = [Path("/b/2.svs"), Path("/a/1.svs"), Path("/c/3.svs")]
    assert Shard(0, 2).select(paths, key=["2", "1", "3"]) == [Path("/a/1.svs"), Path("/c/3.svs")]


def test_parse_shard_and_errors() -> None:
    assert parse_shard("1/4") == Shard(1, 4)
    for bad in ("4/4", "-1/2", "1-4", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_slurm_array_variables() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(env) == Shard(3, 4)
    one_based = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                 "SLURM_ARRAY_TASK_MIN": "1"}  # fmt: skip
    assert shard_from_env(one_based) == Shard(3, 4)
    assert shard_from_env({}) is None
    assert resolve_shard("0/2", env) == Shard(0, 2)  # explicit wins
    assert resolve_shard(None, env) == Shard(3, 4)
    with pytest.raises(ValueError, match="--shard"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_parse_devices() -> None:
    assert parse_devices("0,1") == ["cuda:0", "cuda:1"]
    assert parse_devices("cpu") == ["cpu"]
    assert parse_devices(None) == []
    with pytest.raises(ValueError, match="twice"):
        parse_devices("0,0")


def test_manifest_rows_are_replaced_by_id(tmp_path: Path) -> None:
    update_manifest(tmp_path, [SlideResult("b", "b.svs", "failed", 0, 1.5, "boom\nline2", "open")])
    update_manifest(tmp_path, [SlideResult("a", "a.svs", "done", 12, 3.0)])
    update_manifest(tmp_path, [SlideResult("b", "b.svs", "done", 7, 2.0)])
    rows = read_manifest(tmp_path)
    assert list(rows) == ["a", "b"]
    assert rows["b"].status == "done" and rows["b"].n_patches == 7 and rows["b"].error == ""
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0]
    assert header == "id,path,status,n_patches,seconds,error,stage"


def test_failure_message_is_kept_on_one_line(tmp_path: Path) -> None:
    update_manifest(tmp_path, [SlideResult("b", "b.svs", "failed", 0, 1.5, "boom\nline2", "open")])
    assert read_manifest(tmp_path)["b"].error == "boom line2"
    assert len((tmp_path / "manifest.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "job-caches"])
def test_concurrent_manifest_updates_lose_no_rows(tmp_path: Path, cached: bool) -> None:
    from balnmp_cache.extract.manifest import ManifestCache

    def job(k: int) -> None:
        cache = ManifestCache() if cached else None
        for i in range(10):
            update_manifest(tmp_path, [SlideResult(f"s{k}-{i}", "p", "done", i, 0.1)], cache=cache)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_manifest(tmp_path)) == 40
    assert not list(tmp_path.glob(".manifest.csv*"))  # no temp or lock file left behind


def test_a_jobs_cache_skips_reading_back_its_own_manifest(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from balnmp_cache.extract import manifest

    reads = []
    real = manifest._read_rows
    monkeypatch.setattr(manifest, "_read_rows", lambda p: reads.append(p) or real(p))
    cache = manifest.ManifestCache()
    update_manifest(tmp_path, [SlideResult("a", "a.svs", "done", 1, 0.1)], cache=cache)
    update_manifest(tmp_path, [SlideResult("b", "b.svs", "done", 2, 0.1)], cache=cache)
    assert reads == []  # no file at first, then the one this job wrote
    update_manifest(tmp_path, [SlideResult("x", "x.svs", "done", 3, 0.1)])  # another job
    update_manifest(tmp_path, [SlideResult("c", "c.svs", "done", 4, 0.1)], cache=cache)
    assert len(reads) == 2  # the other job's update, then this job's after it
    assert sorted(read_manifest(tmp_path)) == ["a", "b", "c", "x"]

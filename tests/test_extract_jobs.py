"""Batch-job behaviour: a killed job resumes cleanly, shards and concurrent jobs never overlap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _extract_helpers import FAST, fast_cli_args, tiny_cohort

from balnmp_cache.extract import extract_features
from balnmp_cache.extract.locks import read_lock
from balnmp_cache.extract.manifest import read_manifest
from balnmp_cache.store import FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=3)


def _cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "balnmp_cache.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _slow_args(slides: Path, out: Path) -> list[str]:
    """All tissue (~100 patches a slide), one patch per batch at 224 px: seconds per slide."""
    args = fast_cli_args(slides, out)
    args[args.index("--input-size") + 1] = "224"
    args[args.index("--batch-size") + 1] = "1"
    return args


def test_killed_job_leaves_nothing_finished_looking_and_rerun_completes(cohort, tmp_path: Path) -> None:  # noqa: ANN001, E501
    out = tmp_path / "out"
    proc = _cli(_slow_args(cohort.slides_dir, out))
    deadline, tmp = time.monotonic() + 180, []
    while not tmp and time.monotonic() < deadline and proc.poll() is None:
        tmp = list(out.glob(".*.h5.tmp-*")) if out.exists() else []
        time.sleep(0.01)
    assert tmp, f"the job never started writing a slide: {proc.communicate()}"
    proc.kill()  # SIGKILL mid-slide: no cleanup code runs
    proc.wait()
    victim = tmp[0].name.split(".h5.tmp-")[0][1:]
    assert not (out / f"{victim}.h5").exists()
    store = FeatureStore(out)
    assert victim not in store.slide_ids and not store.is_complete(victim)
    for sid in store.slide_ids:  # anything finished before the kill is complete and valid
        assert len(store[sid]) > 0
    lock = read_lock(out / ".locks" / f"{victim}.lock")
    assert lock is not None and lock.pid == proc.pid  # left behind by the dead job

    # the same settings as the killed job (another --input-size would be refused)
    summary = extract_features(cohort.slides_dir, out, **{**FAST, "input_size": 224})
    assert summary.n_failed == 0
    assert {r.slide_id: r.status for r in summary.results}[victim] == "done"
    assert FeatureStore(out).slide_ids == ["1", "2", "3"]
    assert not list(out.glob(".*.tmp-*")), "the dead job's temp file was not cleaned up"
    assert not list((out / ".locks").glob("*.lock"))
    assert all(r.status == "done" for r in read_manifest(out).values())


def test_two_concurrent_jobs_never_encode_the_same_slide(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    args = fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir)
    procs = [_cli(args) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    done_by: dict[str, list[int]] = {}
    for k, (stdout, _) in enumerate(outputs):
        for line in stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] in {"1", "2", "3"} and parts[1] != "slides:":
                assert parts[1] in {"done", "skipped"}, line
                if parts[1] == "done":
                    done_by.setdefault(parts[0], []).append(k)
    assert {sid: len(jobs) for sid, jobs in done_by.items()} == {"1": 1, "2": 1, "3": 1}, outputs
    assert FeatureStore(out).slide_ids == ["1", "2", "3"]
    assert sorted(read_manifest(out)) == ["1", "2", "3"]


def test_shards_split_a_cohort_without_overlap(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    kw = {**FAST, "annotations": cohort.annotations_dir}
    first = extract_features(cohort.slides_dir, out, shard="0/2", **kw)
    second = extract_features(cohort.slides_dir, out, shard="1/2", **kw)
    a = {r.slide_id for r in first.results if r.status == "done"}
    b = {r.slide_id for r in second.results if r.status == "done"}
    assert a and b and not a & b and a | b == {"1", "2", "3"}
    assert len(first.results) + len(second.results) == 3


def test_slurm_array_variables_pick_the_shard(cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001, E501
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    res = extract_features(cohort.slides_dir, tmp_path / "out", annotations=cohort.annotations_dir,
                           **FAST)  # fmt: skip
    assert [r.slide_id for r in res.results] == ["3"]


def test_one_worker_per_device_shares_the_slides(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    """`--devices` path with two CPU workers (spawned processes, as on a multi-GPU node)."""
    from balnmp_cache.extract.options import ExtractOptions
    from balnmp_cache.extract.slide_job import JobSpec
    from balnmp_cache.extract.workers import run_on_devices

    out = tmp_path / "out"
    spec = JobSpec(out, ExtractOptions(annotations=cohort.annotations_dir, **FAST))
    slides = sorted(cohort.slides_dir.glob("*.svs"))
    results = run_on_devices(slides, spec, ["cpu", "cpu"])
    assert [(r.slide_id, r.status) for r in results] == [("1", "done"), ("2", "done"), ("3", "done")]
    assert FeatureStore(out).slide_ids == ["1", "2", "3"]
    assert sorted(read_manifest(out)) == ["1", "2", "3"]

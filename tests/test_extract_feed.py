"""Several slides in flight: batches across slides, features routed back, failures isolated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _extract_helpers import FAST, tiny_cohort

from balnmp_cache.encoders import build_encoder
from balnmp_cache.extract import extract_features
from balnmp_cache.extract.feed import job_cpus
from balnmp_cache.extract.manifest import read_manifest
from balnmp_cache.extract.pipeline import EncoderRunner, as_tensor, batch_rows, encode_patches
from balnmp_cache.slides import open_slide
from balnmp_cache.slides.base import Slide
from balnmp_cache.store import FeatureStore
from balnmp_cache.tiling.grid import tile_slide

OPTS = {**FAST, "batch_size": 13, "dtype": "float32"}  # 13: no slide fills whole batches


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("feed"), n=4)


class _Rows:
    def __init__(self) -> None:
        self.features: list[np.ndarray] = []

    def append(self, features: np.ndarray, coords: np.ndarray) -> None:
        self.features.append(features.copy())


def _one_slide_at_a_time(path: Path) -> np.ndarray:
    """The slide's features encoded alone, in batches of its own patches only."""
    enc = build_encoder(FAST["encoder"], "none", input_size=FAST["input_size"])
    runner = EncoderRunner(enc, "cpu", "fp32", out_dtype=torch.float32)
    with open_slide(path) as slide:
        grid = tile_slide(slide, patch_size=FAST["patch_size"], mpp=FAST["mpp"])
        rows = _Rows()
        batches = slide.read_regions(grid.coords, grid.plan.level, (grid.plan.read_size,) * 2,
                                     batch_size=OPTS["batch_size"])  # fmt: skip
        encode_patches(batches, grid.coords, runner, rows)
    return np.concatenate(rows.features)


def _slides(cohort) -> list[Path]:  # noqa: ANN001
    return sorted(cohort.slides_dir.glob("*.svs"))


def test_features_equal_a_one_slide_at_a_time_run_to_the_bit(cohort, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    sizes: list[int] = []
    call = EncoderRunner.__call__

    def counting(self, batch):  # noqa: ANN001, ANN202
        sizes.append(batch_rows(batch))  # the rows of several slides come as a list of arrays
        return call(self, batch)

    monkeypatch.setattr(EncoderRunner, "__call__", counting)
    summary = extract_features(cohort.slides_dir, tmp_path / "f", **OPTS)
    counts = [r.n_patches for r in summary.results]
    assert all(c > 0 and c % 13 for c in counts), counts  # every slide ends mid-batch
    assert sizes[:-1] == [13] * (len(sizes) - 1)  # so batches hold patches of several slides
    assert sum(sizes) == sum(counts)
    monkeypatch.setattr(EncoderRunner, "__call__", call)
    store = FeatureStore(tmp_path / "f")
    for path in _slides(cohort):
        np.testing.assert_array_equal(store[path.stem].features, _one_slide_at_a_time(path))


def test_a_read_error_mid_slide_fails_that_slide_alone(cohort, tmp_path: Path,  # noqa: ANN001
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    read = Slide.read_regions

    def flaky(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        batches = read(self, *args, **kwargs)
        if self.slide_id != "2":
            return batches

        def broken():  # noqa: ANN202
            yield next(iter(batches))
            raise OSError(5, "Input/output error (a bad sector)")

        return broken()

    monkeypatch.setattr(Slide, "read_regions", flaky)
    out = tmp_path / "f"
    summary = extract_features(cohort.slides_dir, out, skip_errors=True, **OPTS)
    status = {r.slide_id: (r.status, r.stage) for r in summary.results}
    assert status["2"] == ("failed", "read") and "bad sector" in summary.failed[0].error
    assert all(s == ("done", "") for k, s in status.items() if k != "2"), status
    assert FeatureStore(out).slide_ids == sorted(k for k in status if k != "2")
    rows = read_manifest(out)
    assert rows["2"].status == "failed" and rows["2"].stage == "read"
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    assert not list((out / ".locks").iterdir())
    monkeypatch.setattr(Slide, "read_regions", read)
    monkeypatch.undo()
    again = extract_features(cohort.slides_dir, out, **OPTS)  # the resume redoes it alone
    assert {r.slide_id: r.status for r in again.results} == {
        k: "done" if k == "2" else "skipped" for k in status}
    np.testing.assert_array_equal(FeatureStore(out)["2"].features,
                                  _one_slide_at_a_time(cohort.slides_dir / "2.svs"))


def test_an_encoder_failure_fails_the_slides_of_that_batch_only(cohort, tmp_path: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    calls = [0]
    call = EncoderRunner.__call__

    def failing_third(self, batch):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("CUDA error: an illegal memory access")
        return call(self, batch)

    monkeypatch.setattr(EncoderRunner, "__call__", failing_third)
    summary = extract_features(cohort.slides_dir, tmp_path / "f", skip_errors=True, **OPTS)
    failed = {r.slide_id for r in summary.failed}
    assert failed and len(failed) < 4 and {r.stage for r in summary.failed} == {"encode"}
    assert FeatureStore(tmp_path / "f").slide_ids == sorted(
        r.slide_id for r in summary.results if r.slide_id not in failed)


def test_job_cpus_follow_the_slurm_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    allowed = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert job_cpus() == allowed
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert job_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(allowed + 8))  # never more than allowed
    assert job_cpus() == allowed


def test_host_pixels_are_wrapped_without_a_copy_and_pinned_only_when_asked() -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    x = as_tensor(pixels)
    assert x.data_ptr() == pixels.ctypes.data and not x.is_pinned()
    assert as_tensor(x) is x
    if torch.cuda.is_available():
        pinned = as_tensor(pixels, pin=True)
        assert pinned.is_pinned() and torch.equal(pinned, x)


def test_rgba_batches_decoded_on_a_device_composite_as_on_the_host() -> None:
    from balnmp_cache.slides.cucim import _rgb, rgb_tensor

    rgba = np.random.default_rng(1).integers(0, 256, (3, 5, 5, 4), dtype=np.uint8)
    for arr in (rgba, rgba[..., :3]):
        out = rgb_tensor(torch.from_numpy(arr))  # the CUDA path's arithmetic, run on the CPU
        assert out.dtype == torch.uint8 and out.is_contiguous()
        np.testing.assert_array_equal(out.numpy(), _rgb(arr))


def test_a_batch_joins_host_rows_and_rows_decoded_on_the_gpu() -> None:
    from balnmp_cache.extract.feed import _join

    a = np.full((2, 4, 4, 3), 7, np.uint8)
    b = np.full((3, 4, 4, 3), 9, np.uint8)
    cpu = torch.device("cpu")
    assert _join([a], cpu) is a and _join([], cpu) is None
    rows = _join([a, b], cpu)  # a CPU encoder takes the slides' rows as they are, not copied
    assert isinstance(rows, list) and rows[0] is a and rows[1] is b
    mixed = _join([a, torch.from_numpy(b)], cpu)  # a slide fell back to CPU decoding
    assert isinstance(mixed, torch.Tensor)
    np.testing.assert_array_equal(mixed.numpy(), np.concatenate([a, b]))


def test_device_batches_without_a_gpu_are_the_host_arrays(cohort) -> None:  # noqa: ANN001
    from balnmp_cache.slides.cucim import cucim_available

    if cucim_available() is not None:
        pytest.skip(cucim_available())
    path = _slides(cohort)[0]
    with open_slide(path, backend="cucim") as slide:
        locs = np.array([[0, 0], [64, 32], [200, 100]], np.int64)
        plain = list(slide.read_regions(locs, 0, (32, 32), batch_size=2))
        slide.device_batches = True
        kept = list(slide.read_regions(locs, 0, (32, 32), batch_size=2))
    if slide.device == "cpu":  # no GPU: cuCIM decodes on the CPU, batches are host arrays
        assert all(isinstance(b, np.ndarray) for b in kept)
        np.testing.assert_array_equal(np.concatenate(kept), np.concatenate(plain))
    else:  # decoded on the GPU: CUDA tensors of the same pixels, never copied to the host
        assert all(isinstance(b, torch.Tensor) and b.is_cuda for b in kept)
        np.testing.assert_array_equal(torch.cat(kept).cpu().numpy(), np.concatenate(plain))


@pytest.mark.gpu
def test_on_cuda_batches_reach_the_encoder_on_the_device_or_pinned(cohort, tmp_path: Path,  # noqa: ANN001
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    seen: list[tuple[bool, bool]] = []
    call = EncoderRunner.__call__

    def recording(self, batch):  # noqa: ANN001, ANN202
        seen.append((batch.is_cuda, batch.is_cuda or batch.is_pinned()))
        return call(self, batch)

    monkeypatch.setattr(EncoderRunner, "__call__", recording)
    opts = {**OPTS, "device": "cuda", "precision": "fp32"}
    extract_features(cohort.slides_dir, tmp_path / "gpu", **opts)
    assert seen and all(on_device_or_pinned for _, on_device_or_pinned in seen)
    monkeypatch.setattr(EncoderRunner, "__call__", call)
    extract_features(cohort.slides_dir, tmp_path / "cpu", **OPTS)
    gpu, cpu = FeatureStore(tmp_path / "gpu"), FeatureStore(tmp_path / "cpu")
    for sid in cpu.slide_ids:
        np.testing.assert_allclose(gpu[sid].features, cpu[sid].features, atol=1e-3, rtol=1e-3)


def test_the_end_check_reads_back_only_slides_this_job_did_not_publish(cohort, tmp_path: Path,  # noqa: ANN001
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """`ResumeCheck.finish` skips a slide that is still the file this job published; one
    replaced since (another job's rename) is read and compared again."""
    from balnmp_cache.extract.resume import ResumeCheck
    from balnmp_cache.store.h5 import H5Backend

    out, read, ending = tmp_path / "out", [], []
    info, finish = H5Backend.info, ResumeCheck.finish
    monkeypatch.setattr(H5Backend, "info", lambda self, sid: (read.append(sid) if ending else None)
                        or info(self, sid))  # fmt: skip

    def replace_slide_2_then_finish(self, paths):  # noqa: ANN001, ANN202
        twin = out / ".2.copy"
        twin.write_bytes((out / "2.h5").read_bytes())
        twin.replace(out / "2.h5")  # what another job's publish does
        ending.append(True)
        return finish(self, paths)

    monkeypatch.setattr(ResumeCheck, "finish", replace_slide_2_then_finish)
    extract_features(cohort.slides_dir, out, **OPTS)
    assert read == ["2"]


def test_the_manifest_is_updated_once_per_batch_for_the_slides_that_ended_with_it(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001 fmt: skip
    import balnmp_cache.extract.run as run_mod

    updates: list[list[str]] = []
    real = run_mod.update_manifest

    def update(out, rows, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        updates.append([r.slide_id for r in rows])
        real(out, rows, *a, **kw)

    monkeypatch.setattr(run_mod, "update_manifest", update)
    out = tmp_path / "out"
    extract_features(cohort.slides_dir, out, **{**OPTS, "batch_size": 4096})  # one batch
    assert updates == [["1", "2", "3", "4"]]
    assert sorted(read_manifest(out)) == ["1", "2", "3", "4"]


def test_slides_tiled_while_the_encoder_is_built_are_tiled_once_and_always_closed(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001 fmt: skip
    """`EarlyTiling`: the first slides are prepared before the encoder exists; their claims
    use that work (each slide tiled once), and a slide then found finished is closed unused."""
    from balnmp_cache.extract import slide_prep

    prepared: list = []
    real = slide_prep.prepare_slide

    def spy(spec, path):  # noqa: ANN001, ANN202
        prepared.append(real(spec, path))
        return prepared[-1]

    monkeypatch.setattr(slide_prep, "prepare_slide", spy)
    out = tmp_path / "out"
    extract_features(cohort.slides_dir, out, **OPTS)
    assert sorted(p.slide.slide_id for p in prepared) == ["1", "2", "3", "4"]
    assert all(p.slide._closed for p in prepared)
    prepared.clear()
    again = extract_features(cohort.slides_dir, out, **OPTS)  # all finished: tiled early, unused
    assert [r.status for r in again.results] == ["skipped"] * 4
    assert prepared and all(p.slide._closed for p in prepared)
    assert not list((out / ".locks").glob("*.lock"))


def test_slides_are_tiled_for_as_long_as_the_encoder_is_built(
        cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001 fmt: skip
    """One CPU and an encoder slow to build (a foundation model's load): the early pool goes
    on to the next slides as each ends, so every slide is tiled before the encoder exists (not
    only the first few), once, on the early pool."""
    import threading
    import time

    from balnmp_cache.extract import feed, run, slide_prep

    threads: list[str] = []
    all_tiled = threading.Event()
    real_prepare, real_build = slide_prep.prepare_slide, run._build_job

    def spy(spec, path):  # noqa: ANN001, ANN202
        prep = real_prepare(spec, path)
        threads.append(threading.current_thread().name)
        if len(threads) == 4:
            all_tiled.set()
        return prep

    def slow_build(spec, device):  # noqa: ANN001, ANN202
        all_tiled.wait(timeout=60)
        return real_build(spec, device)

    monkeypatch.setattr(feed, "job_cpus", lambda: 1)
    monkeypatch.setattr(slide_prep, "prepare_slide", spy)
    monkeypatch.setattr(run, "_build_job", slow_build)
    t0 = time.perf_counter()
    s = extract_features(cohort.slides_dir, tmp_path / "out", **OPTS)
    assert time.perf_counter() - t0 < 60, "the early pool stopped before the encoder was built"
    assert [r.status for r in s.results] == ["done"] * 4
    assert len(threads) == 4 and all(t.startswith("balnmp-early") for t in threads)


def test_no_slide_is_started_early_once_the_claims_begin(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from types import SimpleNamespace

    from balnmp_cache.extract import slide_prep

    gate, started = threading.Event(), []

    def blocked(spec, path):  # noqa: ANN001, ANN202
        started.append(path)
        gate.wait(timeout=30)
        return SimpleNamespace(slide=SimpleNamespace(close=lambda: None))

    monkeypatch.setattr(slide_prep, "prepare_slide", blocked)
    paths = [Path(f"{i}.svs") for i in range(10)]
    early = slide_prep.EarlyTiling(None, paths, 1, keep_open=10)  # type: ignore[arg-type]
    assert early.take(Path("5.svs")) is None  # not started: its claim prepares it
    gate.set()
    first = early.take(Path("0.svs"))
    assert first is not None and first.result() is not None
    early.close()
    assert started == [Path("0.svs")]


def test_the_annotation_is_read_once_and_its_parsed_bytes_recorded(cohort, tmp_path: Path,  # noqa: ANN001
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import hashlib

    from balnmp_cache.extract import resume

    read = []
    real = resume._sha256_file
    monkeypatch.setattr(resume, "_sha256_file", lambda p, *a: read.append(Path(p)) or real(p, *a))
    out = tmp_path / "out"
    extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir, **OPTS)
    assert not [p for p in read if p.parent == cohort.annotations_dir]  # hashed when parsed
    store = FeatureStore(out)
    for sid in store.slide_ids:
        ann = next(cohort.annotations_dir.glob(f"{sid}.*"))
        assert store.attrs(sid)["annotations_sha256"] == hashlib.sha256(ann.read_bytes()).hexdigest()


def test_a_list_of_batches_encodes_as_their_concatenation_to_the_bit() -> None:
    enc = build_encoder(FAST["encoder"], "none", input_size=16)
    runner = EncoderRunner(enc, "cpu", "fp32", out_dtype=torch.float32)
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8) for n in (5, 11, 1)]
    assert batch_rows(parts) == 17 and batch_rows(parts[0]) == 5 and batch_rows(None) == 0
    joined = runner(torch.from_numpy(np.concatenate(parts)))
    assert torch.equal(runner(as_tensor(parts)), joined)

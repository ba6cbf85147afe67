"""Batched reads through blocks (`slides/blocks.py`): the same pixels as patch by patch, each
tile decoded once, errors named, memory and threads bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _slide_helpers import SLIDE_BACKENDS, pattern, require_backend, write_tiff

from balnmp_cache.slides import SlideError, open_slide
from balnmp_cache.slides.base import Slide, threaded_batches
from balnmp_cache.slides.blocks import BLOCK_DENSITY, region_blocks


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(448, 704, seed=3)


@pytest.fixture(scope="module", params=["jpeg", "lzw"])
def svs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        image: np.ndarray):  # fmt: skip
    """A tiled SVS whose 64 px tiles do not line up with the 48 px patches read from it."""
    path = tmp_path_factory.mktemp("blocks") / f"tiles-{request.param}.svs"
    return write_tiff(path, image, request.param, levels=3, tile=64, svs=True, mpp=0.5)


def _grid(width: int, height: int, size: int, stride: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(0, width, stride), np.arange(0, height, stride))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _on_cpu(slide: Slide) -> Slide:
    """cuCIM decodes on the GPU where there is one, through its own batched reader: blocks are
    its CPU path, so these tests decode on the CPU on any host."""
    if getattr(slide, "device", None) == "cuda":
        slide.device = "cpu"  # type: ignore[attr-defined]
    return slide


def _one_by_one(slide: Slide, locs: np.ndarray, level: int, size: tuple[int, int]) -> np.ndarray:
    return np.concatenate(list(threaded_batches(slide.read_region, locs, level, size, 64, 0)))


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_blocked_reads_give_the_pixels_of_reading_patch_by_patch(svs, backend):
    require_backend(svs, backend)
    rng = np.random.default_rng(0)
    with _on_cpu(open_slide(svs, backend=backend)) as slide:
        # a tiled grid with holes (kept and dropped cells, like tissue), overlapping
        # patches, patches crossing every edge, and scattered ones
        grid = _grid(704, 448, 48, 48)
        grid = grid[rng.random(len(grid)) < 0.7]
        overlap = _grid(300, 200, 48, 24) + (100, 60)
        edges = np.array([[-20, -20], [680, 10], [10, 430], [690, 440], [5000, 5000]])
        scattered = np.stack([rng.integers(0, 650, 25), rng.integers(0, 400, 25)], axis=1)
        locs = np.concatenate([grid, overlap, edges, scattered])
        for level, size in ((0, (48, 48)), (1, (24, 20)), (2, (12, 12))):
            want = _one_by_one(slide, locs, level, size)
            for batch_size, workers in ((256, 0), (256, 2), (7, 1), (33, 3), (1, 2)):
                batches = list(slide.read_regions(locs, level, size, batch_size, workers))
                assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
                np.testing.assert_array_equal(np.concatenate(batches), want,
                                              err_msg=f"{backend} {level} {batch_size}")  # fmt: skip


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_a_tiled_region_is_read_in_a_few_blocks_not_patch_by_patch(svs, backend, monkeypatch):
    require_backend(svs, backend)
    with _on_cpu(open_slide(svs, backend=backend)) as slide:
        if not slide._block_reads(0):
            pytest.skip(f"{backend} reads this slide region by region")
        calls: list[tuple[int, int]] = []
        read = type(slide)._read_level

        def counting(self, level, x, y, w, h):  # noqa: ANN001, ANN202
            calls.append((w, h))
            return read(self, level, x, y, w, h)

        monkeypatch.setattr(type(slide), "_read_level", counting)
        locs = _grid(480, 336, 48, 48)  # 10 x 7 patches edge to edge, inside the slide
        batches = list(slide.read_regions(locs, 0, (48, 48), batch_size=256, num_workers=0))
        assert sum(len(b) for b in batches) == 70
        assert calls == [(480, 336)]  # one block: each tile decoded once
        calls.clear()
        list(slide.read_regions(locs, 0, (48, 48), batch_size=256, num_workers=2))
        assert len(calls) == 2 and sum(w * h for w, h in calls) == 480 * 336  # two in parallel


def test_cucim_reads_patches_without_neighbours_through_its_own_batched_reader(svs, monkeypatch):
    """A sparse or shuffled grid has little to share: its patches go, every batch's in one
    stream, through cuCIM's multi-location reader (its C++ threads), not one by one."""
    require_backend(svs, "cucim")
    from balnmp_cache.slides.cucim import CuCIMSlide

    streamed: list[int] = []
    stream = CuCIMSlide._stream

    def counting(self, starts, *args):  # noqa: ANN001, ANN002, ANN202
        streamed.append(len(starts))
        return stream(self, starts, *args)

    monkeypatch.setattr(CuCIMSlide, "_stream", counting)
    block = _grid(192, 192, 48, 48) + (300, 200)  # 16 patches edge to edge: one batch
    far_apart = _grid(650, 400, 48, 144)  # 15 in every third cell, inside: no neighbours
    locs = np.concatenate([block, far_apart, far_apart + 24])
    with _on_cpu(open_slide(svs, backend="cucim")) as slide:
        want = _one_by_one(slide, locs, 0, (48, 48))
        got = np.concatenate(list(slide.read_regions(locs, 0, (48, 48), 16, 2)))
    np.testing.assert_array_equal(got, want)
    assert streamed == [30]  # one iterator for the scattered ones of both later batches


def test_many_reader_threads_do_not_cut_a_small_slide_into_blocks_too_small_to_share(svs,
                                                                                     monkeypatch):  # fmt: skip
    require_backend(svs, "cucim")
    from balnmp_cache.slides.cucim import CuCIMSlide

    blocks: list[tuple[int, int]] = []
    streamed: list[int] = []
    read, stream = CuCIMSlide._read_level, CuCIMSlide._stream
    monkeypatch.setattr(CuCIMSlide, "_read_level",
                        lambda self, level, x, y, w, h: blocks.append((w, h)) or read(self, level, x, y, w, h))  # fmt: skip
    monkeypatch.setattr(CuCIMSlide, "_stream",
                        lambda self, starts, *a: streamed.append(len(starts)) or stream(self, starts, *a))  # fmt: skip
    locs = _grid(288, 240, 48, 48)  # 30 patches, one biopsy-sized batch
    with open_slide(svs, backend="cucim") as slide:
        want = _one_by_one(slide, locs, 0, (48, 48))
        blocks.clear()
        got = np.concatenate(list(slide.read_regions(locs, 0, (48, 48), 256, 16)))
    np.testing.assert_array_equal(got, want)
    assert len(blocks) == 3 and streamed == []  # 16 threads, but blocks of 8 or more patches


def test_cucim_reads_patches_aligned_with_the_tiles_through_its_own_reader(svs, monkeypatch):
    """Patches that are whole tiles share none: a block would decode the same tiles, so they
    go through cuCIM's multi-location reader (the patches of a tile-sized grid)."""
    require_backend(svs, "cucim")
    from balnmp_cache.slides.blocks import tile_share
    from balnmp_cache.slides.cucim import CuCIMSlide

    streamed: list[int] = []
    stream = CuCIMSlide._stream
    monkeypatch.setattr(CuCIMSlide, "_stream",
                        lambda self, starts, *a: streamed.append(len(starts)) or stream(self, starts, *a))  # fmt: skip
    aligned = _grid(640, 384, 64, 64)  # 10 x 6 patches, each one 64 px tile
    with _on_cpu(open_slide(svs, backend="cucim")) as slide:
        assert slide._tile_size(0) == (64, 64)
        want = _one_by_one(slide, aligned, 0, (64, 64))
        got = np.concatenate(list(slide.read_regions(aligned, 0, (64, 64), 256, 2)))
    np.testing.assert_array_equal(got, want)
    assert streamed == [60]
    assert tile_share(aligned, 64, 64, (64, 64)) == 1.0
    assert tile_share(_grid(480, 336, 48, 48), 48, 48, (64, 64)) < 0.5  # shared: blocks
    assert tile_share(aligned, 64, 64, None) == 0.0  # unknown tiles: blocks assumed to pay


def test_gpu_decoding_keeps_cucims_own_batched_reader(svs):
    require_backend(svs, "cucim")
    with _on_cpu(open_slide(svs, backend="cucim")) as slide:
        assert slide._block_reads(0)
        slide.device = "cuda"  # decoded batches may stay on the GPU: cuCIM's iterator
        assert not slide._block_reads(0)


def test_a_block_read_error_names_the_slide_and_the_region(svs, monkeypatch):
    with _on_cpu(open_slide(svs)) as slide:
        if not slide._block_reads(0):
            pytest.skip("no blocked reader for this slide")

        def broken(self, level, x, y, w, h):  # noqa: ANN001, ANN202
            raise RuntimeError("corrupt JPEG data")

        monkeypatch.setattr(type(slide), "_read_level", broken)
        locs = _grid(192, 96, 48, 48)
        for workers in (0, 2):
            # one block of 192 x 96 px, or two of 96 x 96 read in parallel
            with pytest.raises(SlideError, match=r"reading (192|96)x96 px at level 0 \((0|96), 0\) "
                                                 r"failed: RuntimeError: corrupt JPEG data") as info:  # fmt: skip
                list(slide.read_regions(locs, 0, (48, 48), 256, workers))
            assert str(svs) in str(info.value)


def test_stopping_early_leaves_no_reader_threads_behind(svs):
    with _on_cpu(open_slide(svs)) as slide:
        locs = np.tile(_grid(480, 336, 48, 48), (20, 1))  # many batches
        before = threading.active_count()
        batches = slide.read_regions(locs, 0, (48, 48), batch_size=16, num_workers=3)
        next(iter(batches))
        batches.close()  # type: ignore[attr-defined]
        assert threading.active_count() == before


def test_region_blocks_partition_the_regions_into_dense_bounded_blocks():
    rng = np.random.default_rng(7)
    w, h = 32, 24
    for trial in range(200):
        n = int(rng.integers(1, 120))
        spread = int(rng.integers(1, 4000))
        origins = rng.integers(0, spread, (n, 2))
        parts = int(rng.integers(1, 5))
        max_pixels = int(rng.integers(w * h, 400_000))
        groups = region_blocks(origins, w, h, parts, max_pixels=max_pixels)
        joined = np.sort(np.concatenate(groups))
        np.testing.assert_array_equal(joined, np.arange(n))  # each region in one block
        assert len(groups) >= min(parts, n)
        for g in groups:
            o = origins[g]
            span = o.max(axis=0) - o.min(axis=0) + (w, h)
            area = int(span[0]) * int(span[1])
            if len(g) > 1:
                assert area <= max_pixels and len(g) * w * h >= BLOCK_DENSITY * area, trial
    assert region_blocks(np.zeros((0, 2)), w, h) == []
    edge_to_edge = _grid(320, 240, 32, 32)
    assert len(region_blocks(edge_to_edge, 32, 32)) == 1
    apart = np.array([[0, 0], [10_000, 10_000]])  # two patches far apart: never one block
    assert len(region_blocks(apart, 32, 32)) == 2


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_closing_the_slide_waits_for_the_reads_in_flight(svs, backend, monkeypatch):
    """`close()` while the pool still reads ahead (a caller holding `read_regions` closes the
    slide): the handle is released only once no read is inside the library (OpenSlide
    aborts the process on a handle freed under a read), and the next batch raises."""
    require_backend(svs, backend)
    slide = _on_cpu(open_slide(svs, backend=backend))
    if not slide._block_reads(0):
        slide.close()
        pytest.skip(f"{backend} reads this slide region by region")
    active = [0]
    at_close: list[int] = []
    read, close = type(slide)._read_level, type(slide)._close

    def slow(self, level, x, y, w, h):  # noqa: ANN001, ANN202
        active[0] += 1
        try:
            time.sleep(0.2)
            return read(self, level, x, y, w, h)
        finally:
            active[0] -= 1

    def closing(self):  # noqa: ANN001, ANN202
        at_close.append(active[0])
        close(self)

    monkeypatch.setattr(type(slide), "_read_level", slow)
    monkeypatch.setattr(type(slide), "_close", closing)
    locs = np.tile(_grid(192, 96, 48, 48), (4, 1))  # 4 batches of 8, 2 blocks each
    batches = slide.read_regions(locs, 0, (48, 48), batch_size=8, num_workers=2)
    next(iter(batches))  # the second batch's blocks are being read now
    slide.close()
    assert at_close == [0]
    with pytest.raises(SlideError, match="closed"):
        list(batches)


def test_many_workers_do_not_split_dense_groups_into_patches_read_apart():
    """`parts` (the reader threads) splits a batch for parallel reads, but never a dense group
    into pieces smaller than `smallest`: those would go to the native reader one by one, and
    a tiled region read by 32 threads in batches of 64 would share no tile at all."""
    grid = _grid(224 * 8, 224 * 8, 224, 224)  # 64 patches edge to edge
    for parts in (16, 32, 64):
        groups = region_blocks(grid, 224, 224, parts, smallest=4)
        assert min(len(g) for g in groups) >= 4, parts
        np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(64))
    sparse = _grid(224 * 24, 224 * 24, 224, 672)  # every third cell: no neighbours
    assert max(len(g) for g in region_blocks(sparse, 224, 224, 1, smallest=4)) < 4

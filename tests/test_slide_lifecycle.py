"""Paths with unicode and spaces, no leaked handles or memory, thread-safe batched reads."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from _slide_helpers import SLIDE_BACKENDS, pattern, require_backend, write_tiff
from PIL import Image

from balnmp_cache.slides import open_slide
from balnmp_cache.slides.tiffprobe import clear_probe_cache


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("slides") / "Präparate 2024 — ñ 病理"
    root.mkdir()
    image = pattern(128, 192, seed=7)
    svs = write_tiff(root / "Schnitt 1 ü.svs", image, "lzw", svs=True)
    jpg = root / "全切片 2.jpg"
    Image.fromarray(image).save(jpg, quality=95)
    folder = root / "患者 3"
    folder.mkdir()
    for x, y in [(0, 0), (64, 0), (0, 64)]:
        Image.fromarray(image[y : y + 64, x : x + 64]).save(folder / f"3_0_{x}_{y}.png")
    return {"svs": svs, "jpg": jpg, "patches": folder, "image": image}


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
@pytest.mark.parametrize("key", ["svs", "jpg", "patches"])
def test_unicode_and_spaces_in_paths(slides, key, backend):
    require_backend(slides[key], backend)
    with open_slide(slides[key], backend=backend) as slide:
        assert slide.backend == backend
        assert slide.slide_id in ("Schnitt 1 ü", "全切片 2", "患者 3")
        region = slide.read_region((0, 0), 0, (64, 64)).astype(int)
        tolerance = 8 if key == "jpg" else 0  # JPEG is lossy; the rest are exact
        assert np.abs(region - slides["image"][:64, :64]).max() <= (255 if tolerance else 0)
        assert np.abs(region - slides["image"][:64, :64]).mean() <= tolerance


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
@pytest.mark.parametrize(("key", "loops"), [("svs", 1000), ("jpg", 100), ("patches", 100)])
def test_open_close_loop_leaks_nothing(slides, key, backend, loops):
    require_backend(slides[key], backend)

    def cycle(n: int) -> None:
        for _ in range(n):
            with open_slide(slides[key], backend=backend) as slide:
                slide.read_region((10, 10), 0, (16, 16))

    cycle(20)  # warm caches, thread pools, lazily loaded libraries
    gc.collect()
    fds, rss = _open_fds(), _rss_mb()
    cycle(loops)
    gc.collect()
    assert _open_fds() <= fds, "file handles leaked"
    assert _rss_mb() - rss < 25, f"memory grew by {_rss_mb() - rss:.1f} MB over {loops} opens"


def test_probe_cache_off_still_closes_files(slides):
    fds = _open_fds()
    for _ in range(30):
        clear_probe_cache()
        with open_slide(slides["svs"]) as slide:
            slide.thumbnail(32)
    assert _open_fds() <= fds


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_concurrent_read_regions_equal_read_region(slides, backend):
    require_backend(slides["svs"], backend)
    rng = np.random.default_rng(11)
    locs = rng.integers(-10, 180, size=(48, 2))
    with open_slide(slides["svs"], backend=backend) as slide:
        want = np.stack([slide.read_region(tuple(loc), 0, (24, 24)) for loc in locs])
        results: list[np.ndarray | BaseException] = [None] * 6  # type: ignore[list-item]

        def worker(i: int) -> None:
            try:
                level_locs = np.roll(locs, i * 7, axis=0)
                got = np.concatenate(list(slide.read_regions(level_locs, 0, (24, 24),
                                                             batch_size=5, num_workers=2)))
                results[i] = np.roll(got, -i * 7, axis=0)
            except BaseException as exc:  # noqa: BLE001 - surface in the main thread
                results[i] = exc

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got in results:
            if isinstance(got, BaseException):
                raise got
            np.testing.assert_array_equal(got, want)

"""Fault suite, slides: no hang, no native crash, no noise on stdout, no litter in the cwd.

Cases that need repeated fresh processes (races) are marked `faults_slow`: `make test-faults`
runs them, and so does CI.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _extract_helpers import fast_cli_args, tiny_cohort
from _slide_helpers import pattern, run_isolated, write_tiff
from PIL import Image

from balnmp_cache.slides import cucim as slide_cucim
from balnmp_cache.slides import open_slide

BIN = Path(sys.executable).parent


def _png(path: Path, size: int = 300) -> Path:
    Image.fromarray(pattern(size, size)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".gif"])
def test_plain_image_with_a_resolution_does_not_hang(tmp_path, suffix):
    """`ImageSlide.thumbnail` of a non-JPEG used to re-take Pillow's lock it already held."""
    path = _png(tmp_path / f"x{suffix}")
    result = run_isolated(f"""
        from balnmp_cache.slides import open_slide
        with open_slide({str(path)!r}, mpp=0.5) as s:
            print(s.thumbnail(64).shape, s.read_region((0, 0), 0, (8, 8)).shape)
    """, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(64, 64, 3) (8, 8, 3)" in result.stdout


def test_extracting_a_png_with_mpp_overrides_finishes(tmp_path):
    _png(tmp_path / "s1.png", 256)
    (tmp_path / "mpp.csv").write_text("slide_id,mpp\ns1,1.0\n")
    args = fast_cli_args(tmp_path / "s1.png", tmp_path / "f")
    args += ["--mpp-overrides", str(tmp_path / "mpp.csv"), "--min-tissue", "0"]
    proc = subprocess.run([str(BIN / "extract-features"), *args], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "f" / "s1.h5").is_file()


class _CountingImage:
    """Stands in for `cucim.CuImage`: records how many are being constructed at once."""

    active = 0
    peak = 0
    guard = threading.Lock()

    def __init__(self, path: str) -> None:
        with self.guard:
            type(self).active += 1
            type(self).peak = max(type(self).peak, type(self).active)
        time.sleep(0.05)  # a constructor that takes a while, as cuCIM's first one does
        with self.guard:
            type(self).active -= 1
        raise RuntimeError("stand-in: stop after construction")


def test_cucim_images_are_never_constructed_concurrently(tmp_path, monkeypatch):
    """The extraction loop opens the next slide in a thread while the current one is read:
    concurrent `CuImage` construction crashed one run in four with SIGSEGV."""
    pytest.importorskip("cucim")
    import cucim

    monkeypatch.setattr(cucim, "CuImage", _CountingImage)
    path = write_tiff(tmp_path / "s.svs", pattern(256, 256), "jpeg", svs=True, mpp=0.5)
    from balnmp_cache.slides.tiffprobe import probe_source

    info = probe_source(path, ValueError)
    threads = [threading.Thread(target=_try_open, args=(info,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _CountingImage.peak == 1


def _try_open(info: object) -> None:
    try:
        slide_cucim.CuCIMSlide.open(info, None)  # type: ignore[arg-type]
    except RuntimeError:
        pass


def test_cucim_start_up_noise_stays_off_stdout_and_out_of_the_cwd(tmp_path):
    pytest.importorskip("cucim")
    cohort = tiny_cohort(tmp_path / "c", n=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [str(BIN / "extract-features"), *fast_cli_args(cohort.slides_dir, work / "f")],
        capture_output=True, text=True, timeout=300, cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cuFile" not in proc.stdout and "dlopen" not in proc.stdout, proc.stdout
    assert sorted(p.name for p in work.iterdir()) == ["f"]


@pytest.mark.faults_slow
def test_repeated_fresh_extractions_all_succeed(tmp_path):
    """The race showed in one run of four: eight fresh processes on an 8-slide cohort."""
    cohort = tiny_cohort(tmp_path / "c", n=8)
    for run in range(8):
        out = tmp_path / f"f{run}"
        proc = subprocess.run([str(BIN / "extract-features"), *fast_cli_args(cohort.slides_dir, out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (run, proc.returncode, proc.stderr[-2000:])
        assert len(list(out.glob("*.h5"))) == 8


def test_open_slide_from_many_threads_reads_the_same_pixels(tmp_path):
    """Concurrent opening and reading through the auto backend gives identical regions."""
    path = write_tiff(tmp_path / "s.svs", pattern(512, 512), "jpeg", svs=True, mpp=0.5)
    with open_slide(path) as s:
        want = s.read_region((64, 64), 0, (128, 128))
    got: list[np.ndarray] = []

    def read() -> None:
        with open_slide(path) as s:
            got.append(s.read_region((64, 64), 0, (128, 128)))

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(np.array_equal(g, want) for g in got)

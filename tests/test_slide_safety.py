"""Files cuCIM cannot take never crash the interpreter: SlideError or another backend.

Risky cases run in a fresh interpreter (`run_isolated`), so a segmentation fault shows up as
a failed test instead of killing pytest.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tifffile
from _slide_helpers import SLIDE_BACKENDS, pattern, require_backend, run_isolated, write_tiff

from balnmp_cache.slides import SlideError, open_slide
from balnmp_cache.slides.tiffprobe import clear_probe_cache, cucim_support, probe_tiff


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(128, 192, seed=5)


def _set_compression(path, value: int) -> None:
    """Rewrite every page's Compression tag in place (a codec nobody implements)."""
    with tifffile.TiffFile(path) as tif:
        byteorder = tif.byteorder
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(off)
            fh.write(struct.pack(byteorder + "H", value))


def test_cucim_crash_case_is_refused_in_process(tmp_path, image):
    """Deflate + horizontal predictor segfaults cuCIM 26.x; we never hand it over."""
    path = write_tiff(tmp_path / "pred.svs", image, "adobe_deflate", svs=True, predictor=True)
    reason = cucim_support(probe_tiff(path))
    assert reason is not None and "predictor" in reason
    result = run_isolated(f"""
        from balnmp_cache.slides import SlideError, open_slide
        try:
            open_slide({str(path)!r}, backend="cucim")
        except SlideError as exc:
            print("REFUSED", exc)
        slide = open_slide({str(path)!r})
        print("AUTO", slide.backend, slide.read_region((5, 5), 1, (16, 16)).shape)
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REFUSED" in result.stdout and "predictor" in result.stdout
    assert "AUTO openslide (16, 16, 3)" in result.stdout


def test_raw_cucim_still_crashes_on_predictor_deflate(tmp_path, image):
    """Tripwire for the allow-list: if a cuCIM upgrade stops crashing here, re-run the
    compatibility tests with predictors and widen `CUCIM_COMPRESSIONS`."""
    path = write_tiff(tmp_path / "pred.tif", image, "deflate", predictor=True)
    result = run_isolated(f"""
        import numpy as np
        from cucim import CuImage
        img = CuImage({str(path)!r})
        print(np.asarray(img.read_region((0, 0), (64, 64), 0)).shape)
    """)
    assert result.returncode != 0, "cuCIM decoded deflate+predictor; revisit the allow-list"


RISKY = {
    "zstd": dict(compression="zstd"),
    "webp": dict(compression="webp"),
    "jpeg2000": dict(compression="jpeg2000"),
    "packbits": dict(compression="packbits"),
    "lzw-strips": dict(compression="lzw", tile=None, levels=1),
    "deflate-predictor": dict(compression="deflate", predictor=True),
    "rgba": dict(compression="adobe_deflate", extrasamples=[2]),
    "grey": dict(compression="lzw"),
    "16-bit": dict(compression=None),
}


def test_auto_never_crashes_on_risky_tiffs(tmp_path, image):
    paths = []
    for name, options in RISKY.items():
        data, seen = image, image.astype(np.float32)  # written; what a reader must return
        if name == "rgba":
            data = np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])
            seen = seen * (200 / 255) + 255 * (55 / 255)  # composited on white
        elif name == "grey":
            data = image[..., 0]
            seen = np.repeat(seen[..., :1], 3, axis=2)
        elif name == "16-bit":
            data = image.astype(np.uint16) * 257  # its top 8 bits are `image`
        path = write_tiff(tmp_path / f"{name}.tif", data, **options)
        np.save(path.with_suffix(".npy"), seen[3:23, 3:23])
        paths.append(str(path))
    result = run_isolated(f"""
        import numpy as np
        from balnmp_cache.slides import SlideError, open_slide
        for path in {paths!r}:
            try:
                with open_slide(path) as slide:
                    slide.read_region((3, 3), slide.level_count - 1, (20, 20))
                    slide.thumbnail(32)
                    got = slide.read_region((3, 3), 0, (20, 20)).astype(np.float32)
                    diff = np.abs(got - np.load(path[:-4] + ".npy")).max()
                    print("OK", path, slide.backend, diff)
            except SlideError as exc:
                print("ERR", path, exc.reason)
    """, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert sorted(line.split()[1] for line in lines) == sorted(paths), result.stdout
    opened = {line.split()[1].rsplit("/", 1)[1]: line.split()[2:] for line in lines
              if line.startswith("OK")}  # fmt: skip
    backends = {name: backend for name, (backend, _) in opened.items()}
    assert "cucim" not in backends.values()
    assert backends["zstd.tif"] == "openslide" and backends["webp.tif"] == "image"
    assert backends["lzw-strips.tif"] == "image"
    # 16-bit: OpenSlide reduces it to 8 bits; nothing unreadable got through silently: every
    # file that opened reads back its own pixels (alpha on white; compositing rounds by 1).
    assert backends["16-bit.tif"] == "openslide"
    wrong = {name: float(diff) for name, (_, diff) in opened.items() if float(diff) > 1.5}
    assert not wrong, f"pixels differ from the file's (max abs difference): {wrong}"


@pytest.mark.parametrize("backend", ["auto", *SLIDE_BACKENDS])
def test_unknown_codec_is_a_slide_error(tmp_path, image, backend):
    path = write_tiff(tmp_path / "odd codec.svs", image, None, svs=True)
    require_backend(path, backend)  # every reader of the intact file
    _set_compression(path, 65000)
    clear_probe_cache()
    with pytest.raises(SlideError) as info:
        open_slide(path, backend=backend)
    assert info.value.path == path and str(path) in str(info.value)
    assert "65000" in str(info.value) or "compression" in str(info.value).lower()


def test_zstd_with_cucim_backend_raises(tmp_path, image):
    path = write_tiff(tmp_path / "z.svs", image, "zstd", svs=True)
    with pytest.raises(SlideError, match="compression 50000"):
        open_slide(path, backend="cucim")
    with open_slide(path) as slide:
        assert slide.backend == "openslide"

"""cuCIM and OpenSlide return the same pixels for every file both can read.

This is also the evidence behind `tiffprobe.CUCIM_COMPRESSIONS`: each allow-listed TIFF
structure is decoded by cuCIM exactly as OpenSlide (and tifffile, for lossless codecs) does.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _slide_helpers import pattern, write_tiff

from balnmp_cache.slides import open_slide

CODECS = ["jpeg", "lzw", "deflate", "adobe_deflate", None]
# Odd level-0 offsets (not multiples of any downsample), near tile seams and slide edges.
LOCATIONS = [(0, 0), (13, 7), (101, 77), (63, 65), (255, 129), (371, 249), (-9, 3)]
SIZE = (37, 29)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(256, 384, seed=3)


@pytest.mark.parametrize("svs", [True, False], ids=["svs", "generic"])
@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c or "none")
def test_cucim_equals_openslide(tmp_path, image, codec, svs):
    path = write_tiff(tmp_path / f"s.{'svs' if svs else 'tif'}", image, codec, levels=3, svs=svs)
    truth = [p.asarray() for p in tifffile.TiffFile(path).pages]
    with open_slide(path, backend="auto") as cu, open_slide(path, backend="openslide") as os_:
        assert cu.backend == "cucim"
        assert cu.level_dimensions == os_.level_dimensions
        assert cu.level_downsamples == os_.level_downsamples
        assert cu.mpp == os_.mpp == pytest.approx(0.5)
        for level in range(3):
            ds = int(cu.level_downsamples[level])
            for loc in LOCATIONS:
                a = cu.read_region(loc, level, SIZE)
                b = os_.read_region(loc, level, SIZE)
                np.testing.assert_array_equal(a, b, err_msg=f"level {level} at {loc}")
                if codec != "jpeg":  # lossless: both equal the stored pixels
                    x, y = loc[0] // ds, loc[1] // ds
                    want = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
                    src = truth[level][max(y, 0) : y + SIZE[1], max(x, 0) : x + SIZE[0]]
                    want[max(-y, 0) : max(-y, 0) + src.shape[0],
                         max(-x, 0) : max(-x, 0) + src.shape[1]] = src  # fmt: skip
                    np.testing.assert_array_equal(a, want)
            batch_cu = np.concatenate(list(cu.read_regions(LOCATIONS, level, SIZE, batch_size=3)))
            batch_os = np.concatenate(list(os_.read_regions(LOCATIONS, level, SIZE, batch_size=3)))
            np.testing.assert_array_equal(batch_cu, batch_os)


@pytest.mark.parametrize(
    "options",
    [{"bigtiff": True, "compression": "jpeg"},
     {"compression": "jpeg", "compressionargs": {"outcolorspace": "RGB"}, "subsampling": (1, 1)},
     {"compression": "lzw", "predictor": True},
     {"compression": "jpeg", "tile": 48}],
    ids=["bigtiff", "jpeg-rgb-photometric", "lzw-predictor", "tile-48"],
)  # fmt: skip
def test_cucim_equals_openslide_variants(tmp_path, image, options):
    path = write_tiff(tmp_path / "v.svs", image, levels=3, svs=True, **options)
    with open_slide(path) as cu, open_slide(path, backend="openslide") as os_:
        assert cu.backend == "cucim"
        for level in range(3):
            got = np.concatenate(list(cu.read_regions(LOCATIONS, level, SIZE, batch_size=4)))
            want = np.stack([os_.read_region(loc, level, SIZE) for loc in LOCATIONS])
            np.testing.assert_array_equal(got, want, err_msg=f"level {level}")


def test_odd_sized_pyramid_level0_and_geometry(tmp_path):
    """Odd dimensions give non-integer downsamples; both readers agree on the geometry and
    on level-0 pixels (OpenSlide interpolates sub-pixel offsets at other levels)."""
    image = pattern(301, 421, seed=4)
    path = write_tiff(tmp_path / "odd.svs", image, "lzw", levels=3, svs=True)
    with open_slide(path, backend="cucim") as cu, open_slide(path, backend="openslide") as os_:
        assert cu.level_dimensions == os_.level_dimensions == ((421, 301), (210, 150), (105, 75))
        np.testing.assert_allclose(cu.level_downsamples, os_.level_downsamples)
        for loc in [(0, 0), (17, 33), (400, 290)]:
            np.testing.assert_array_equal(
                cu.read_region(loc, 0, SIZE), os_.read_region(loc, 0, SIZE)
            )
        # cuCIM level 2 is exact: pixel floor(x / ds) of the stored level.
        level2 = tifffile.TiffFile(path).pages[2].asarray()
        x, y = (int(v // cu.level_downsamples[2]) for v in (217, 101))
        np.testing.assert_array_equal(
            cu.read_region((217, 101), 2, (20, 10)), level2[y : y + 10, x : x + 20]
        )


@pytest.mark.gpu
@pytest.mark.parametrize("codec", ["lzw", "jpeg"])
def test_cucim_gpu_decoding_matches_cpu(tmp_path, image, codec):
    """With a GPU, cuCIM decodes on the device; lossless tiles must match the CPU exactly,
    JPEG (nvJPEG vs libjpeg-turbo) to within rounding."""
    path = write_tiff(tmp_path / "g.svs", image, codec, levels=3, svs=True)
    locs = [(0, 0), (64, 128), (13, 7), (300, 200)]
    with open_slide(path, backend="cucim") as slide:
        assert slide.device == "cuda"
        gpu = np.concatenate(list(slide.read_regions(locs, 1, SIZE, batch_size=2)))
        assert slide.device == "cuda", "GPU decoding fell back to the CPU"
        slide.device = "cpu"
        cpu = np.concatenate(list(slide.read_regions(locs, 1, SIZE, batch_size=2)))
    diff = np.abs(gpu.astype(int) - cpu.astype(int))
    assert diff.max() == 0 if codec == "lzw" else diff.mean() < 1.0

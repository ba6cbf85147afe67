"""open_slide: backend choice, geometry, read_region/read_regions/thumbnail, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _slide_helpers import SLIDE_BACKENDS, pattern, require_backend, write_tiff

from balnmp_cache.slides import SlideError, open_slide, slide_id_from_path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(256, 384)


@pytest.fixture(scope="module")
def svs(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray):
    path = tmp_path_factory.mktemp("svs") / "case 1.svs"
    return write_tiff(path, image, "lzw", levels=3, svs=True, mpp=0.25)


@pytest.mark.parametrize("backend", ["auto", *SLIDE_BACKENDS])
def test_svs_geometry_and_pixels(svs, image, backend):
    require_backend(svs, backend)
    with open_slide(svs, backend=backend) as slide:
        assert slide.backend == ("cucim" if backend == "auto" else backend)
        assert slide.slide_id == "case 1"
        assert slide.dimensions == (384, 256)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((384, 256), (192, 128), (96, 64))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_mpp(2) == pytest.approx(1.0)
        assert slide.fixed_coords is None
        region = slide.read_region((13, 7), 0, (40, 30))
        assert region.dtype == np.uint8 and region.shape == (30, 40, 3)
        np.testing.assert_array_equal(region, image[7:37, 13:53])


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_outside_is_white(svs, image, backend):
    require_backend(svs, backend)
    with open_slide(svs, backend=backend) as slide:
        region = slide.read_region((-10, -5), 0, (30, 20))
        assert (region[:5] == 255).all() and (region[:, :10] == 255).all()
        np.testing.assert_array_equal(region[5:, 10:], image[:15, :20])
        edge = slide.read_region((360, 250), 1, (40, 40))  # level 1 starts at (180, 125)
        assert (edge[3:] == 255).all() and (edge[:, 12:] == 255).all()
        assert (slide.read_region((5000, 5000), 0, (8, 8)) == 255).all()


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_read_regions_matches_read_region(svs, backend):
    require_backend(svs, backend)
    rng = np.random.default_rng(1)
    locs = np.concatenate([rng.integers(0, 380, (37, 1)), rng.integers(0, 250, (37, 1))], 1)
    locs[0] = (-20, -20)  # partly outside: white padding in batches too
    locs[1] = (370, 240)
    with open_slide(svs, backend=backend) as slide:
        for level in (0, 1):
            batches = list(slide.read_regions(locs, level, (32, 24), batch_size=8, num_workers=2))
            assert [len(b) for b in batches] == [8, 8, 8, 8, 5]
            got = np.concatenate(batches)
            want = np.stack([slide.read_region(tuple(loc), level, (32, 24)) for loc in locs])
            np.testing.assert_array_equal(got, want)
        assert list(slide.read_regions(np.zeros((0, 2)), 0, (8, 8))) == []


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_kept_batches_own_their_pixels(svs, backend):
    require_backend(svs, backend)
    # All locations inside the slide: cuCIM streams them through one iterator whose buffers
    # are recycled; batches kept by the caller (list, queues) must not change afterwards.
    rng = np.random.default_rng(2)
    locs = np.concatenate([rng.integers(0, 340, (40, 1)), rng.integers(0, 220, (40, 1))], 1)
    with open_slide(svs, backend=backend) as slide:
        batches = list(slide.read_regions(locs, 0, (32, 24), batch_size=4, num_workers=2))
        want = np.stack([slide.read_region(tuple(loc), 0, (32, 24)) for loc in locs])
    np.testing.assert_array_equal(np.concatenate(batches), want)


def test_a_registered_backend_is_served_by_name_and_kept_out_of_auto(tmp_path, image, svs,
                                                                     monkeypatch):
    """A new reader is one `register_backend` call of a `Slide` subclass; its own `auto`
    says whether `open_slide(backend="auto")` may choose it."""
    from _tile_helpers import FakeSlide

    from balnmp_cache.slides import register_backend
    from balnmp_cache.slides.registry import BACKENDS

    monkeypatch.setattr(BACKENDS, "_entries", dict(BACKENDS._entries))  # undone afterwards
    register_backend("fake", FakeSlide)
    np.save(tmp_path / "x.npy", image)
    with open_slide(tmp_path / "x.npy", backend="fake", mpp=0.5) as slide:
        assert type(slide) is FakeSlide and slide.backend == "fake" and slide.mpp == 0.5
        np.testing.assert_array_equal(slide.read_region((13, 7), 0, (40, 30)), image[7:37, 13:53])
    with pytest.raises(SlideError, match="no backend can read") as info:
        open_slide(tmp_path / "x.npy")
    assert "fake" not in str(info.value)
    with pytest.raises(SlideError, match="'fake' cannot serve this file: not a .npy image"):
        open_slide(svs, backend="fake")


def test_thumbnail_and_best_level(svs):
    with open_slide(svs) as slide:
        thumb = slide.thumbnail(100)
        assert thumb.shape == (67, 100, 3) and thumb.dtype == np.uint8
        assert slide.get_best_level_for_downsample(1.0) == 0
        assert slide.get_best_level_for_downsample(3.0) == 1
        assert slide.get_best_level_for_downsample(64.0) == 2


def test_plain_tiff_resolution_and_strips(tmp_path, image):
    tiled = write_tiff(tmp_path / "plain.tif", image, "jpeg", mpp=0.5)
    with open_slide(tiled) as slide:
        assert slide.backend == "cucim" and slide.mpp == pytest.approx(0.5)
    strips = write_tiff(tmp_path / "strips.tif", image, "adobe_deflate", levels=1, tile=None)
    with open_slide(strips) as slide:  # no tiles: neither cuCIM nor OpenSlide; tifffile
        assert slide.backend == "image"
        np.testing.assert_array_equal(slide.read_region((5, 6), 0, (20, 10)), image[6:16, 5:25])


def test_jpeg_image_backend(tmp_path, image):
    from PIL import Image

    path = tmp_path / "wsi.png"
    Image.fromarray(image).save(path)
    with open_slide(path) as slide:
        assert slide.backend == "image" and slide.level_count == 1 and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((3, 4), 0, (10, 10)), image[4:14, 3:13])
    jpg = tmp_path / "wsi.jpg"
    Image.fromarray(image).save(jpg, quality=95)
    with open_slide(jpg, mpp=0.5) as slide:
        assert slide.mpp == 0.5
        thumb = slide.thumbnail(48)
        assert thumb.shape == (32, 48, 3)
        assert abs(thumb.astype(int).mean() - image.mean()) < 5


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_decoded_image_read_regions_split_across_threads(tmp_path, image, workers):
    # A decoded PNG/JPEG copies each batch's patches on `workers` threads (contiguous runs of
    # rows each); any split must give the per-patch result, edges padded white.
    from PIL import Image

    path = tmp_path / "wsi.png"
    Image.fromarray(image).save(path)
    rng = np.random.default_rng(5)
    locs = np.concatenate([rng.integers(-30, 380, (45, 1)), rng.integers(-30, 250, (45, 1))], 1)
    with open_slide(path) as slide:
        want = np.stack([slide.read_region(tuple(loc), 0, (32, 24)) for loc in locs])
        for batch_size in (1, 7, 16, 64):
            batches = list(slide.read_regions(locs, 0, (32, 24), batch_size, workers))
            assert [len(b) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
            np.testing.assert_array_equal(np.concatenate(batches), want)


def test_errors_name_path_and_reason(tmp_path, svs):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    for path, reason in [(empty, "empty"), (text, "no backend"), (tmp_path / "nope.svs", "exist")]:
        with pytest.raises(SlideError, match=reason) as info:
            open_slide(path)
        assert str(path) in str(info.value)
    with pytest.raises(SlideError, match="unknown backend"):
        open_slide(svs, backend="bioformats")
    with open_slide(svs) as slide:
        with pytest.raises(SlideError, match="level 7"):
            slide.read_region((0, 0), 7, (4, 4))
    with pytest.raises(SlideError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))


def test_truncated_file(tmp_path, image):
    whole = write_tiff(tmp_path / "whole.svs", image, "none", svs=True)
    cut = tmp_path / "cut.svs"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for backend in ("auto", *SLIDE_BACKENDS):  # the probe refuses it before any reader
        with pytest.raises(SlideError, match="truncated"):
            open_slide(cut, backend=backend)


def test_slide_id_from_path():
    assert slide_id_from_path("/x/12.svs") == "12"
    assert slide_id_from_path("/x/a.b.ome.tiff") == "a.b"
    assert slide_id_from_path("/x/patient 7") == "patient 7"


def test_image_modes_become_rgb(tmp_path, image):
    from PIL import Image

    grey = tmp_path / "grey.jpg"
    Image.fromarray(image[..., 1]).save(grey, quality=100)
    rgba = np.dstack([image, np.full(image.shape[:2], 0, np.uint8)])
    rgba[:, :100, 3] = 255
    png = tmp_path / "alpha.png"
    Image.fromarray(rgba).save(png)
    palette = tmp_path / "palette.png"
    Image.fromarray(image).convert("P").save(palette)
    with open_slide(grey) as slide:
        region = slide.read_region((0, 0), 0, (50, 40)).astype(int)
        assert (region[..., 0] == region[..., 2]).all()
        assert np.abs(region[..., 0] - image[:40, :50, 1]).max() <= 3
    with open_slide(png) as slide:
        region = slide.read_region((90, 0), 0, (20, 10))
        np.testing.assert_array_equal(region[:, :10], image[:10, 90:100])
        assert (region[:, 10:] == 255).all()  # transparent -> white
    with open_slide(palette) as slide:
        assert slide.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)


def test_big_jpeg_beyond_pillow_limit(tmp_path, image, monkeypatch):
    """BCNB JPEGs exceed Pillow's decompression-bomb limit; they open anyway, the global
    limit is left as it was, and our own memory guard still applies."""
    from PIL import Image

    from balnmp_cache.slides import image as slide_image

    path = tmp_path / "big.jpg"
    Image.fromarray(image).save(path, quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # image is ~98x the limit
    with open_slide(path) as slide:
        assert slide.read_region((0, 0), 0, (8, 8)).shape == (8, 8, 3)
        assert slide.thumbnail(64).shape == (43, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(slide_image, "MAX_PIXELS", 10_000)
    with pytest.raises(SlideError, match="MAX_PIXELS"):
        open_slide(path)


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_banded_thumbnail_of_a_big_level(tmp_path, image, backend, monkeypatch):
    """Single-level scans too big to read at once are reduced band by band."""
    from balnmp_cache.slides import base as slide_module

    path = write_tiff(tmp_path / "flat.tif", image, "lzw", levels=1, tile=64)
    require_backend(path, backend)
    monkeypatch.setattr(slide_module, "THUMBNAIL_BAND_PIXELS", 384 * 40)
    with open_slide(path, backend=backend) as slide:
        thumb = slide.thumbnail(96)  # factor 4 -> bands of 40 rows
    assert thumb.shape == (64, 96, 3)
    want = image.reshape(64, 4, 96, 4, 3).mean(axis=(1, 3))
    assert np.abs(thumb - want).max() <= 1


def test_subifd_pyramid_via_image_backend(tmp_path, image):
    """OME-style pyramids live in SubIFDs, which slide readers may not see; tifffile does."""
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(64, 64), subifds=2, photometric="rgb", compression="zlib")
        for f in (2, 4):
            tw.write(image[::f, ::f], tile=(64, 64), subfiletype=1, photometric="rgb",
                     compression="zlib")  # fmt: skip
    with open_slide(path, backend="image") as slide:
        assert slide.slide_id == "pyr"
        assert slide.level_dimensions == ((384, 256), (192, 128), (96, 64))
        np.testing.assert_array_equal(
            slide.read_region((26, 14), 1, (20, 10)), image[::2, ::2][7:17, 13:33]
        )
    with open_slide(path) as slide:  # OpenSlide would see only level 0
        assert slide.backend == "image" and slide.level_count == 3
        np.testing.assert_array_equal(slide.read_region((5, 5), 0, (9, 9)), image[5:14, 5:14])

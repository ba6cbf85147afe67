"""QC pictures: thumbnail with tissue outline, tumour outline and kept patches."""

from __future__ import annotations

import numpy as np
import pytest
from _tile_helpers import FakeSlide, make_scene
from PIL import Image

from balnmp_cache.tiling.annotations import Annotations, Polygon
from balnmp_cache.tiling.grid import tile_slide
from balnmp_cache.tiling.qc import PATCH_COLOUR, TISSUE_COLOUR, TUMOUR_COLOUR, save_qc


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], np.float32)


def _count(png, colour: str, tol: float = 30.0) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"), np.float32)
    return int((np.linalg.norm(rgb - _hex(colour), axis=2) < tol).sum())


@pytest.fixture(scope="module")
def slide():
    sc = make_scene(512, seed=6, pens=False, faint=False)
    return FakeSlide(sc.image, mpp=sc.mpp, slide_id="qc-slide")


def test_qc_shows_tissue_tumour_and_patches(slide, tmp_path):
    tumour = Annotations([Polygon(np.array([[0, 0], [700, 0], [700, 500], [0, 500]], float))])
    grid = tile_slide(slide, 32, slide.mpp, annotations=tumour)
    out = save_qc(slide, grid, tmp_path / "sub" / "qc.png")
    assert out == tmp_path / "sub" / "qc.png" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["qc.png"]  # no temp file left
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] >= 800
    assert _count(out, TISSUE_COLOUR) > 200
    assert _count(out, TUMOUR_COLOUR) > 200
    assert _count(out, PATCH_COLOUR) > 200
    assert out.stat().st_size < 1_500_000


def test_qc_without_annotations_or_patches(slide, tmp_path):
    grid = tile_slide(slide, 32, slide.mpp, min_tissue=1.0)
    plain = save_qc(slide, grid, tmp_path / "plain.png")
    assert _count(plain, TUMOUR_COLOUR) < 20
    glass = FakeSlide(np.full((256, 256, 3), 238, np.uint8), mpp=1.0)
    empty = tile_slide(glass, 32, 1.0)
    assert len(empty) == 0
    out = save_qc(glass, empty, tmp_path / "empty.png")
    assert _count(out, PATCH_COLOUR) < 20 and _count(out, TISSUE_COLOUR) < 20


def test_qc_for_patch_folder_slides(tmp_path):
    coords = np.array([[0, 0], [64, 0], [0, 64]], np.int64)
    image = np.full((128, 128, 3), 200, np.uint8)
    slide = FakeSlide(image, mpp=0.5, fixed_coords=coords, fixed_patch_size=64)
    out = save_qc(slide, tile_slide(slide, 64, 0.5), tmp_path / "patches.png")
    assert _count(out, PATCH_COLOUR) > 100

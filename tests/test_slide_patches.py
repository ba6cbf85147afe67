"""Folders of pre-cut patches (BCNB paper_patches) served as slides."""

from __future__ import annotations

import numpy as np
import pytest
from _slide_helpers import pattern
from PIL import Image

from balnmp_cache.slides import SlideError, open_slide
from balnmp_cache.slides.patches import scan_patch_folder

PATCH = 32


@pytest.fixture()
def bcnb(tmp_path):
    """`<patient>/<patient>_<region>_<x>_<y>.png` with pixel coordinates, two regions."""
    image = pattern(96, 128, seed=2)
    folder = tmp_path / "paper_patches" / "17"
    folder.mkdir(parents=True)
    cells = [(0, 0), (32, 0), (64, 32), (96, 64)]
    for x, y in cells:
        Image.fromarray(image[y : y + PATCH, x : x + PATCH]).save(folder / f"17_0_{x}_{y}.png")
    Image.fromarray(image[:PATCH, :PATCH][::-1]).save(folder / "17_1_0_0.png")  # region 1
    return folder, image, cells


def test_exact_patches_and_geometry(bcnb):
    folder, image, cells = bcnb
    with open_slide(folder) as slide:
        assert slide.backend == "patches" and slide.slide_id == "17"
        assert slide.fixed_patch_size == PATCH
        coords = slide.fixed_coords
        assert coords.dtype == np.int64 and coords.shape == (5, 2)
        region0 = {tuple(c) for c in coords[:4]}
        assert region0 == set(cells)
        assert tuple(coords[4]) == (96 + 2 * PATCH, 0)  # region 1 placed beside region 0
        assert slide.dimensions == (96 + 3 * PATCH, 96)
        assert slide.level_count == 1 and slide.mpp is None
        for x, y in cells:
            np.testing.assert_array_equal(
                slide.read_region((x, y), 0, (PATCH, PATCH)), image[y : y + PATCH, x : x + PATCH]
            )
        batches = list(slide.read_regions(coords, 0, (PATCH, PATCH), batch_size=2))
        assert [len(b) for b in batches] == [2, 2, 1]
        np.testing.assert_array_equal(batches[2][0], image[:PATCH, :PATCH][::-1])


def test_composed_region_is_white_where_no_patch(bcnb):
    folder, image, _ = bcnb
    with open_slide(folder, mpp=0.5) as slide:
        assert slide.mpp == 0.5
        region = slide.read_region((16, 16), 0, (64, 32))
        np.testing.assert_array_equal(region[:16, :48], image[16:32, 16:64])  # two patches
        assert (region[16:, :48] == 255).all()  # (0..64, 32..64) holds no patch
        np.testing.assert_array_equal(region[16:, 48:], image[32:48, 64:80])
        thumb = slide.thumbnail(80)
        assert max(thumb.shape[:2]) <= 80 and thumb.dtype == np.uint8


def test_grid_indices_and_plain_folders(tmp_path):
    indexed = tmp_path / "indexed"
    indexed.mkdir()
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        Image.fromarray(np.full((PATCH, PATCH, 3), 40 * (i + 2 * j), np.uint8)).save(
            indexed / f"5_0_{i}_{j}.jpg"
        )
    layout = scan_patch_folder(indexed)
    assert layout.layout == "named"
    assert {tuple(c) for c in layout.coords} == {(0, 0), (PATCH, 0), (PATCH, PATCH)}

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ["a.png", "b.png", "c.png"]:
        Image.fromarray(np.zeros((PATCH, PATCH, 3), np.uint8)).save(plain / name)
    with open_slide(plain) as slide:
        assert slide.properties["patches.layout"] == "grid"
        assert len(slide.fixed_coords) == 3
        assert len({tuple(c) for c in slide.fixed_coords}) == 3


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideError, match="no patch images"):
        open_slide(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((PATCH, PATCH, 3), np.uint8)).save(mixed / "1_0_0_0.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(mixed / "1_0_32_0.png")
    with open_slide(mixed) as slide, pytest.raises(SlideError, match="expected 32x32"):
        slide.read_region((32, 0), 0, (PATCH, PATCH))
    with pytest.raises(SlideError, match="cannot serve"):
        open_slide(mixed, backend="openslide")

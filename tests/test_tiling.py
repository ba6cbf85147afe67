"""The patch grid: read plans, tissue/tumour selection, physical alignment across scans."""

from __future__ import annotations

import numpy as np
import pytest
from _tile_helpers import FakeSlide, block_mean, make_scene
from PIL import Image

from balnmp_cache.tiling.annotations import Annotations, Polygon
from balnmp_cache.tiling.grid import (
    TilingError,
    box_fractions,
    grid_positions,
    plan_read,
    tile_slide,
)

TINY = np.full((64, 64, 3), 240, np.uint8)


def _covered(coords: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    cov = np.zeros(shape, bool)
    for x, y in coords:
        cov[y : y + size, x : x + size] = True
    return cov


# --------------------------------------------------------------------------- plan_read


@pytest.mark.parametrize(
    ("slide_mpp", "levels", "level", "read_size", "ps0"),
    [
        (0.25, 3, 1, 256, 512),  # 40x scan: level 1 is exactly 0.5 µm/px
        (0.25, 1, 0, 512, 512),  # no matching level: read 512 px at level 0, resize
        (0.2527, 3, 1, 253, 507),  # Aperio 40x: level 1 is 1 % coarser, still used
        (0.5, 3, 0, 256, 256),  # 20x
        (0.125, 3, 2, 256, 1024),  # 80x
    ],
)
def test_plan_read_picks_best_level(slide_mpp, levels, level, read_size, ps0):
    plan = plan_read(FakeSlide(TINY, mpp=slide_mpp, levels=levels), 256, 0.5)
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (level, read_size, ps0)
    assert plan.target_mpp == 0.5 and plan.slide_mpp == slide_mpp
    assert plan.needs_resize == (read_size != 256)
    assert plan.level0_per_px == pytest.approx(0.5 / slide_mpp)


def test_unknown_mpp_is_an_error_that_says_what_to_pass_unless_level_given():
    slide = FakeSlide(TINY, mpp=None, slide_id="S7")
    with pytest.raises(TilingError, match=r"S7.*--mpp-overrides.*--level"):
        plan_read(slide, 256, 0.5)
    with pytest.raises(TilingError, match="--mpp-overrides"):
        tile_slide(slide, 16, 0.5)
    plan = plan_read(slide, 224, 0.5, level=2)
    assert (plan.level, plan.read_size, plan.patch_size_level0) == (2, 224, 896)
    assert plan.target_mpp is None
    with pytest.raises(TilingError, match="level 5 does not exist"):
        plan_read(slide, 224, level=5)


def test_coarser_scan_than_target_warns_about_upsampling():
    with pytest.warns(UserWarning, match="upsampled 2.00x"):
        plan = plan_read(FakeSlide(TINY, mpp=1.0), 256, 0.5)
    assert (plan.level, plan.read_size) == (0, 128)


def test_bad_arguments():
    slide = FakeSlide(TINY, mpp=0.5)
    for kwargs, match in [({"min_tissue": 1.5}, "min_tissue"), ({"overlap": 16}, "overlap"),
                          ({"patch_size": 0}, "patch_size")]:
        with pytest.raises(TilingError, match=match):
            tile_slide(slide, **{"patch_size": 16, **kwargs})


# --------------------------------------------------------------------------- geometry


def test_box_fractions_are_exact_for_partial_mask_pixels():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.5
    fine = np.repeat(np.repeat(mask, 4, axis=0), 4, axis=1)  # the same mask at ds=1
    boxes = np.array([[0, 0, 8, 8], [3, 5, 17, 23], [110, 70, 130, 90], [-8, -8, 8, 8]])
    got = box_fractions(mask, boxes, 4.0)
    for (x0, y0, x1, y1), frac in zip(boxes, got, strict=True):
        window = fine[max(y0, 0) : y1, max(x0, 0) : x1]
        assert frac == pytest.approx(window.sum() / ((x1 - x0) * (y1 - y0)), abs=1e-6)


def test_grid_positions_follow_physical_stride():
    pos = grid_positions((1000, 300), 100.5)
    assert pos.dtype == np.int64
    xs = np.unique(pos[:, 0])
    assert xs.tolist() == [round(i * 100.5) for i in range(10)]
    assert np.unique(pos[:, 1]).tolist() == [0, 100, 201]


# --------------------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def scene():
    return make_scene(1536, seed=4)


def test_kept_patches_lie_in_true_tissue_and_cover_it(scene):
    # Patches of 32 µm on ~230 µm cores: the ratio of 128 µm patches on 1 mm biopsy cores.
    grid = tile_slide(FakeSlide(scene.image, mpp=scene.mpp), 32, scene.mpp, min_tissue=0.5)
    assert grid.coords.dtype == np.int64 and grid.coords.shape[1] == 2 and len(grid) > 400
    boxes = np.hstack([grid.coords, grid.coords + 32])
    truth = box_fractions(scene.tissue, boxes, 1.0)
    # "In true tissue": at least 40 % tissue (min_tissue 0.5 less a mask pixel of slack).
    assert np.mean(truth >= 0.4) >= 0.95
    covered = _covered(grid.coords, 32, scene.tissue.shape)
    assert (covered & scene.tissue).sum() / scene.tissue.sum() >= 0.90
    pen = box_fractions(scene.pen, boxes, 1.0)
    assert scene.pen.sum() > 1000 and pen.max() < 0.05
    assert np.all(grid.tissue_fraction >= 0.5) and grid.tissue_fraction.dtype == np.float32
    assert grid.tissue == "biopsy" and grid.annotations is None
    assert grid.stride_level0 == 32 and grid.tissue_mask is not None


def test_annotations_keep_only_tumour_and_cut_out_negatives(scene):
    slide = FakeSlide(scene.image, mpp=scene.mpp)
    square = np.array([[0, 0], [900, 0], [900, 1536], [0, 1536]], float)
    hole = np.array([[300, 0], [500, 0], [500, 1536], [300, 1536]], float)
    ann = Annotations([Polygon(square, name="tumour")], [Polygon(hole, name="necrosis")])
    grid = tile_slide(slide, 64, scene.mpp, annotations=ann, min_tissue=0.5)
    everything = tile_slide(slide, 64, scene.mpp, min_tissue=0.5)
    assert 0 < len(grid) < len(everything)
    centres = grid.coords + 32
    assert ann.contains(centres).all()
    assert not ((centres[:, 0] > 300) & (centres[:, 0] < 500)).any()
    truth = box_fractions(scene.tissue & ann.rasterize(scene.tissue.shape, 1.0),
                          np.hstack([grid.coords, grid.coords + 64]), 1.0)
    assert np.mean(truth >= 0.4) >= 0.95
    assert grid.regions is ann and "1 positive" in grid.annotations


def test_annotation_file_path_is_loaded_and_recorded(scene, tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"positive": [{"name": "t", "vertices": [[0,0],[900,0],[900,900],[0,900]]}]}')
    grid = tile_slide(FakeSlide(scene.image, mpp=scene.mpp), 64, scene.mpp, annotations=p)
    assert len(grid) > 0 and grid.annotations == str(p)
    assert (grid.coords + 32 < 900).all()


@pytest.mark.parametrize("case", ["glass", "annotation_outside", "annotation_empty"])
def test_no_tissue_or_annotation_outside_gives_empty_grid(scene, case):
    image = {"glass": np.full((512, 512, 3), 238, np.uint8)}.get(case, scene.image)
    far = np.array([[1e5, 1e5], [2e5, 1e5], [2e5, 2e5]], float)
    ann = {"annotation_outside": Annotations([Polygon(far)]),
           "annotation_empty": Annotations()}.get(case)
    grid = tile_slide(FakeSlide(image, mpp=1.0), 64, 1.0, annotations=ann)
    assert len(grid) == 0
    assert grid.coords.shape == (0, 2) and grid.coords.dtype == np.int64
    assert grid.tissue_fraction.shape == (0,)


def test_overlap_halves_the_stride(scene):
    slide = FakeSlide(scene.image, mpp=scene.mpp)
    plain = tile_slide(slide, 64, scene.mpp)
    half = tile_slide(slide, 64, scene.mpp, overlap=32)
    assert half.stride_level0 == 32
    assert 3.0 < len(half) / len(plain) < 5.0
    assert set(map(tuple, plain.coords)) <= set(map(tuple, half.coords))


def test_resection_preset_and_min_tissue_zero(scene):
    slide = FakeSlide(scene.image, mpp=scene.mpp)
    strict = tile_slide(slide, 64, scene.mpp, min_tissue=0.9)
    loose = tile_slide(slide, 64, scene.mpp, min_tissue=0.0)
    default = tile_slide(slide, 64, scene.mpp)
    assert len(strict) < len(default) < len(loose)
    assert loose.tissue_fraction.min() > 0  # 0 keeps patches that touch tissue, not glass
    assert tile_slide(slide, 64, scene.mpp, tissue="resection").tissue == "resection"


def test_patch_folder_slides_return_their_fixed_coords():
    coords = np.array([[0, 0], [224, 0], [448, 224]], np.int64)
    slide = FakeSlide(TINY, mpp=0.5, fixed_coords=coords, fixed_patch_size=224)
    grid = tile_slide(slide, 256, 0.5)
    assert np.array_equal(grid.coords, coords) and grid.coords.dtype == np.int64
    assert (grid.plan.level, grid.plan.read_size, grid.plan.patch_size) == (0, 224, 256)
    assert grid.tissue == "none" and grid.tissue_mask is None
    assert np.all(grid.tissue_fraction == 1)


def test_unknown_mpp_tiles_a_fixed_level(scene):
    slide = FakeSlide(scene.image, mpp=None, levels=2)
    grid = tile_slide(slide, 32, level=1)
    assert (grid.plan.level, grid.plan.read_size, grid.plan.patch_size_level0) == (1, 32, 64)
    assert grid.plan.target_mpp is None and len(grid) > 100
    truth = box_fractions(scene.tissue, np.hstack([grid.coords, grid.coords + 64]), 1.0)
    assert np.mean(truth >= 0.4) >= 0.95


def test_edge_patches_count_outside_as_no_tissue():
    image = np.full((100, 100, 3), 238, np.uint8)
    image[:, 60:] = (200, 120, 170)  # tissue up to the right border
    grid = tile_slide(FakeSlide(image, mpp=1.0, levels=1), 32, 1.0, min_tissue=0.0)
    right = grid.coords[:, 0] == 96  # patches over x = 96..128: 4 of their 32 px columns inside
    assert grid.coords[right, 1].tolist() == [0, 32, 64, 96]
    expected = [4 / 32, 4 / 32, 4 / 32, (4 / 32) * (4 / 32)]
    assert np.allclose(grid.tissue_fraction[right], expected, atol=0.01)


# --------------------------------------------------------------------------- real files


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BOX)) for p in batch])


def _patches(slide, grid, coords: np.ndarray) -> np.ndarray:
    plan = grid.plan
    size = (plan.read_size, plan.read_size)
    batch = np.concatenate(list(slide.read_regions(coords, plan.level, size, num_workers=0)))
    return _resize(batch, plan.patch_size).astype(np.float32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One scene written at 40x (0.25 µm/px; with and without a 0.5 µm/px level) and 20x."""
    from balnmp_cache.slides import open_slide
    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("scans")
    sc40 = make_scene(2048, seed=5, scale=2.0)
    img20 = block_mean(sc40.image, 2)
    paths = {
        "40x": write_pyramidal_tiff(root / "s40.svs", sc40.image, mpp=0.25, levels=3),
        "40x_one_level": write_pyramidal_tiff(root / "s40b.tiff", sc40.image, mpp=0.25,
                                              levels=1, svs=False),
        "20x": write_pyramidal_tiff(root / "s20.svs", img20, mpp=0.5, levels=2),
    }
    slides = {k: open_slide(p) for k, p in paths.items()}
    yield sc40, slides
    for s in slides.values():
        s.close()


def test_real_slide_kept_patches_in_true_tissue(scene, tmp_path):
    from balnmp_cache.slides import open_slide
    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    path = write_pyramidal_tiff(tmp_path / "biopsy.svs", scene.image, mpp=1.0, levels=3)
    with open_slide(path) as slide:
        grid = tile_slide(slide, 32, 1.0)
    assert (grid.plan.level, grid.plan.read_size, grid.plan.patch_size_level0) == (0, 32, 32)
    boxes = np.hstack([grid.coords, grid.coords + 32])
    truth = box_fractions(scene.tissue, boxes, 1.0)
    assert len(grid) > 400 and np.mean(truth >= 0.4) >= 0.95
    cov = _covered(grid.coords, 32, scene.tissue.shape)
    assert (cov & scene.tissue).sum() / scene.tissue.sum() >= 0.9
    assert box_fractions(scene.pen, boxes, 1.0).max() < 0.05


@pytest.mark.parametrize("forty", ["40x", "40x_one_level"])
def test_40x_and_20x_scans_give_the_same_physical_grid_and_patches(scans, forty):
    _, slides = scans
    g40 = tile_slide(slides[forty], 64, 0.5)
    g20 = tile_slide(slides["20x"], 64, 0.5)
    assert g40.plan.needs_resize == (forty == "40x_one_level")
    um40 = g40.coords * 0.25  # physical positions (µm)
    um20 = g20.coords * 0.5
    # Every position of either grid is on the same 32 µm lattice, within a target pixel.
    for um in (um40, um20):
        assert np.abs(um / 32.0 - np.round(um / 32.0)).max() * 32.0 <= 0.5
    a, b = set(map(tuple, np.round(um40 / 32).astype(int))), set(
        map(tuple, np.round(um20 / 32).astype(int))
    )
    assert len(a & b) / len(a | b) >= 0.95
    common = np.array(sorted(a & b))[::7] * 32.0
    p40 = _patches(slides[forty], g40, np.round(common / 0.25).astype(np.int64))
    p20 = _patches(slides["20x"], g20, np.round(common / 0.5).astype(np.int64))
    same = np.abs(p40 - p20).mean()
    shifted = np.abs(p40[1:] - p20[:-1]).mean()  # different places for comparison
    assert same < 6.0 and same < 0.4 * shifted, (same, shifted)

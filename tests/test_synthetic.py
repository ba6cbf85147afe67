"""Synthetic demo cohort: pyramidal TIFF writer (read back by OpenSlide, cuCIM, tifffile),
annotations inside tissue, BCNB clinical table, planted signal, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from balnmp_cache.synthetic import CohortConfig, main, make_demo_cohort, write_pyramidal_tiff
from balnmp_cache.synthetic.clinical import (
    ALN_STATUSES,
    CLINICAL_COLUMNS,
    HER2_EXPRESSIONS,
    MOLECULAR_SUBTYPES,
    SURGICAL,
    TUMOUR_TYPES,
)
from balnmp_cache.synthetic.geometry import polygon_mask
from balnmp_cache.synthetic.tiff import downsample_mean

# Tiny slides: 1024 x 512 px at 0.5 µm/px, 64 px (32 µm) signal cells.
TINY = {"width": 1024, "height": 512, "patch_um": 32.0, "tumour_patches": (20.0, 30.0)}


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((h, w, 3)), (4, 4, 0))
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 30
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return make_demo_cohort(tmp_path_factory.mktemp("cohort"), n_patients=6, seed=1, **TINY)


# ---------------------------------------------------------------- write_pyramidal_tiff


def test_svs_jpeg_reads_back_in_openslide_tifffile_and_cucim(tmp_path: Path) -> None:
    img = _smooth_image(600, 900)
    path = write_pyramidal_tiff(tmp_path / "a.svs", img, mpp=0.5, levels=3, tile=256)
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["aperio.AppMag"]) == 20
        assert s.level_count == 3
        assert s.level_dimensions == ((900, 600), (450, 300), (225, 150))
        region = np.asarray(s.read_region((0, 0), 0, (900, 600)).convert("RGB"))
    assert np.abs(region.astype(int) - img).mean() < 3  # JPEG Q90
    with tifffile.TiffFile(path) as t:
        assert len(t.pages) == 3
        assert t.pages[0].is_tiled and t.pages[0].tilewidth == 256
        assert t.pages[0].description.startswith("Aperio Image Library")
        assert "MPP = 0.5" in t.pages[0].description
    cucim = pytest.importorskip("cucim")
    c = cucim.CuImage(str(path))
    assert c.resolutions["level_count"] == 3
    pixels = np.asarray(c.read_region((0, 0), (900, 600), 0))[..., :3]
    np.testing.assert_array_equal(pixels, region)  # same JPEG decode as OpenSlide


@pytest.mark.parametrize("compression", ["lzw", "deflate", "adobe_deflate", "zstd", "none"])
def test_lossless_compressions_are_exact(tmp_path: Path, compression: str) -> None:
    img = _smooth_image(300, 520, seed=2)
    path = write_pyramidal_tiff(tmp_path / "b.svs", img, compression=compression, tile=128)
    with openslide.OpenSlide(path) as s:
        lvl0 = np.asarray(s.read_region((0, 0), 0, (520, 300)).convert("RGB"))
        lvl1 = np.asarray(s.read_region((0, 0), 1, (260, 150)).convert("RGB"))
    np.testing.assert_array_equal(lvl0, img)
    np.testing.assert_array_equal(lvl1, downsample_mean(img, 2))
    if compression != "zstd":  # cuCIM 26 has no zstd decoder
        cucim = pytest.importorskip("cucim")
        pixels = np.asarray(cucim.CuImage(str(path)).read_region((0, 0), (520, 300), 0))
        np.testing.assert_array_equal(pixels[..., :3], img)


def test_plain_tiff_carries_resolution_in_centimetres(tmp_path: Path) -> None:
    img = _smooth_image(256, 384)
    path = write_pyramidal_tiff(tmp_path / "c.tiff", img, mpp=0.25, svs=False, levels=3)
    with openslide.OpenSlide(path) as s:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert s.level_count == 3
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        num, den = page.tags["XResolution"].value
        assert num / den == pytest.approx(1e4 / 0.25)
        assert "ImageDescription" not in page.tags
        assert t.pages[1].tags["NewSubfileType"].value == 1


def test_writer_rejects_bad_input_and_names_the_file(tmp_path: Path) -> None:
    img = _smooth_image(64, 64)
    with pytest.raises(ValueError, match="bad.svs"):
        write_pyramidal_tiff(tmp_path / "bad.svs", img.astype(np.float32))
    with pytest.raises(ValueError, match="compression"):
        write_pyramidal_tiff(tmp_path / "bad.svs", img, compression="jpeg2000")
    with pytest.raises(ValueError, match="levels"):
        write_pyramidal_tiff(tmp_path / "bad.svs", img, levels=8)
    assert not list(tmp_path.iterdir())


def test_downsample_mean_matches_block_mean() -> None:
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for f in (2, 4):
        h, w = 37 // f, 53 // f
        ref = img[: h * f, : w * f].reshape(h, f, w, f, 3).astype(float).mean((1, 3))
        np.testing.assert_array_equal(downsample_mean(img, f), np.floor(ref + 0.5))


# ---------------------------------------------------------------- the cohort


def test_layout_and_clinical_table(cohort) -> None:
    root = cohort.root
    pids = [str(i) for i in range(1, 7)]
    assert sorted(p.name for p in (root / "slides").iterdir()) == sorted(f"{p}.svs" for p in pids)
    assert sorted(p.stem for p in (root / "annotations").iterdir()) == sorted(pids)
    df = pd.read_csv(cohort.clinical_csv, dtype={"HER2 Expression": str})
    assert list(df.columns) == list(CLINICAL_COLUMNS)
    assert df["Patient ID"].tolist() == list(range(1, 7))
    assert set(df["ALN status"]) == set(ALN_STATUSES)  # 6 patients: every class present
    assert set(df["Tumour Type"]) <= set(TUMOUR_TYPES)
    for col in ("ER", "PR", "HER2"):
        assert set(df[col]) <= {"Positive", "Negative"}
    assert set(df["HER2 Expression"]) <= set(HER2_EXPRESSIONS)
    assert set(df["Histological grading"]) <= {1, 2, 3}
    assert set(df["Surgical"]) <= set(SURGICAL)
    assert set(df["Molecular subtype"]) <= set(MOLECULAR_SUBTYPES)
    assert df["Ki67"].between(0, 100).all() and df["Age(years)"].between(18, 100).all()
    nodes = df["Number of lymph node metastases"]
    assert (nodes[df["ALN status"] == "N0"] == 0).all()
    assert nodes[df["ALN status"] == "N+(1-2)"].between(1, 2).all()
    assert (nodes[df["ALN status"] == "N+(>2)"] > 2).all()
    assert cohort.patients["patient_id"].tolist() == pids


def test_slides_read_back_with_mpp_and_levels(cohort) -> None:
    for rec in cohort.truth["patients"].values():
        with openslide.OpenSlide(cohort.root / rec["slide"]) as s:
            assert s.dimensions == (TINY["width"], TINY["height"])
            assert s.level_count == 3
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert s.properties["aperio.AppMag"] == "20"


def test_annotation_polygon_lies_inside_tissue(cohort) -> None:
    for pid, rec in cohort.truth["patients"].items():
        ann = json.loads((cohort.root / rec["annotation"]).read_text())
        assert ann["negative"] == [] and len(ann["positive"]) == 1
        verts = np.asarray(ann["positive"][0]["vertices"])
        assert verts.dtype.kind == "i" and verts.shape[1] == 2 and len(verts) >= 6
        with openslide.OpenSlide(cohort.root / rec["slide"]) as s:
            rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        tissue = rgb.min(axis=2) < 225  # the background is ~240 grey
        inside = polygon_mask(verts, tissue.shape)
        assert inside.sum() > 0.1 * tissue.sum(), pid
        assert tissue[inside].mean() > 0.995, pid
        assert tissue.mean() < 0.8, pid  # there is background around the core


def test_signal_only_in_positive_patients_and_visible_in_pixels(cohort) -> None:
    cell = cohort.config.cell_px
    for pid, rec in cohort.truth["patients"].items():
        if rec["aln_status"] == "N0":
            assert rec["signal_cells"] == [] and rec["signal_fraction"] == 0
            continue
        assert rec["signal_cells"] and 0.1 < rec["signal_fraction"] < 0.5, pid
        with openslide.OpenSlide(cohort.root / rec["slide"]) as s:
            rgb = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        dark = rgb.astype(int).sum(axis=2) < 330  # haematoxylin-stained nuclei
        ann = json.loads((cohort.root / rec["annotation"]).read_text())
        tumour = polygon_mask(np.asarray(ann["positive"][0]["vertices"]), dark.shape)
        sig = np.zeros_like(tumour)
        for x, y in rec["signal_cells"]:
            sig[y : y + cell, x : x + cell] = True
        assert dark[sig & tumour].mean() > 1.5 * dark[tumour & ~sig].mean(), pid


def test_same_seed_is_identical_and_other_seed_differs(cohort, tmp_path: Path) -> None:
    again = make_demo_cohort(tmp_path / "again", n_patients=6, seed=1, workers=1, **TINY)
    assert again.clinical_csv.read_bytes() == cohort.clinical_csv.read_bytes()
    assert again.truth_json.read_bytes() == cohort.truth_json.read_bytes()
    for pid in ("1", "4"):
        a = tifffile.imread(cohort.slides_dir / f"{pid}.svs", key=0)
        b = tifffile.imread(again.slides_dir / f"{pid}.svs", key=0)
        np.testing.assert_array_equal(a, b)
    other = make_demo_cohort(tmp_path / "other", n_patients=2, seed=2, **TINY)
    first = tifffile.imread(other.slides_dir / "1.svs", key=0)
    assert not np.array_equal(first, tifffile.imread(cohort.slides_dir / "1.svs", key=0))


def test_rerun_reuses_and_refuses_a_different_cohort(tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = make_demo_cohort(out, n_patients=2, seed=5, **TINY)
    assert not first.reused
    assert make_demo_cohort(out, n_patients=2, seed=5, **TINY).reused
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_demo_cohort(out, n_patients=2, seed=6, **TINY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other"):
        make_demo_cohort(tmp_path / "other", n_patients=2, seed=5, **TINY)
    replaced = make_demo_cohort(out, n_patients=3, seed=6, overwrite=True, **TINY)
    assert not replaced.reused and len(list((out / "slides").iterdir())) == 3


def test_40x_slides_hold_the_same_content(tmp_path: Path) -> None:
    opts = {**TINY, "width": 512, "height": 256}
    c20 = make_demo_cohort(tmp_path / "x20", n_patients=1, seed=3, **opts)
    c40 = make_demo_cohort(tmp_path / "x40", n_patients=1, seed=3, mpp=0.25, **opts)
    with openslide.OpenSlide(c40.slides_dir / "1.svs") as s:
        assert s.dimensions == (1024, 512)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert s.properties["aperio.AppMag"] == "40"
        lvl1 = np.asarray(s.read_region((0, 0), 1, (512, 256)).convert("RGB")).astype(int)
    with openslide.OpenSlide(c20.slides_dir / "1.svs") as s:
        lvl0 = np.asarray(s.read_region((0, 0), 0, (512, 256)).convert("RGB")).astype(int)
    assert np.abs(lvl1 - lvl0).mean() < 3
    v20 = json.loads((c20.annotations_dir / "1.json").read_text())["positive"][0]["vertices"]
    v40 = json.loads((c40.annotations_dir / "1.json").read_text())["positive"][0]["vertices"]
    np.testing.assert_array_equal(np.asarray(v40), 2 * np.asarray(v20))
    assert c40.config.cell_px == 2 * c20.config.cell_px


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="mpp"):
        CohortConfig(mpp=0.3)
    with pytest.raises(ValueError, match="compression"):
        CohortConfig(compression="png")


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = ["--out", str(out), "--patients", "2", "--seed", "0", "--width", "512"]
    assert main([*args, "--height", "256"]) == 0
    assert "2 patients" in capsys.readouterr().out
    assert (out / "truth.json").exists() and (out / "clinical.csv").exists()
    assert main([*args, "--height", "320"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("fragments", [1, 3])
def test_tumour_polygon_inside_core_across_seeds(fragments: int) -> None:
    from balnmp_cache.synthetic.geometry import plan_biopsy, tissue_core_mask

    for seed in range(12):
        rng = np.random.default_rng(seed)
        h, w = 896, 1792
        plan = plan_biopsy(rng, h, w, tumour_area_px=12 * 112**2, fragments=fragments)
        tissue = tissue_core_mask(rng, h, w, plan.core)
        tumour = polygon_mask(plan.tumour_polygon, (h, w))
        assert tumour.sum() > 5 * 112**2, seed
        assert tissue[tumour].all(), seed
        if fragments > 1:
            labels, n = ndimage.label(tissue)
            assert n >= 2 or not plan.core.breaks, seed


def test_tumour_polygons_are_simple(cohort) -> None:
    # A self-intersecting outline makes every reader repair it (and warn) and fills a sliver
    # outside the intended tumour; the generator must write simple polygons.
    import warnings

    from balnmp_cache.tiling.annotations import AnnotationWarning, load_annotations

    for path in cohort.patients["annotation_path"]:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AnnotationWarning)
            assert not load_annotations(path).is_empty

"""BCNB's pre-cut patches placed back on the whole-slide image (issue 14).

The fixture cuts patches the way the official preprocessing does (bupt-ai-cz/BALNMP
`code_preprocessing/cut_tumor_regions.py` and `cut_patches.py`, restated here): each positive
polygon's bounding box (min x, min y, max - min) is cropped from the WSI, pixels outside the
polygon are filled white, the crop is padded white on the right and bottom to a multiple of the
patch size, cut into patches named `<id>_<region>_<x>_<y>`, and patches whose white share is
at least the maximum blank ratio are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from balnmp_cache.errors import AnnotationError
from balnmp_cache.slides.patches import parse_patch_name, scan_patch_folder
from balnmp_cache.tiling.regions import region_origins, wsi_coords
from balnmp_mil.errors import InputError
from balnmp_mil.workflow.heatmap_space import slide_coords

PATCH = 64
POLYGONS = [  # region 0 a rectangle, 1 a triangle, 2 a quadrilateral, in file order
    [[40, 30], [250, 30], [250, 170], [40, 170]],
    [[300, 220], [470, 260], [330, 390]],
    [[20, 250], [200, 230], [230, 380], [60, 390]],
]


def _texture(h: int, w: int, seed: int = 5) -> np.ndarray:
    """A slide with no white and no two equal patches (a wrong offset cannot match)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3 + yy) % 200, (yy * 5 + xx * 2) % 200, (xx * yy) % 200], -1)
    return (base + rng.integers(0, 40, (h, w, 3))).astype(np.uint8)


def _cut(wsi: np.ndarray, polygons: list, out: Path, pid: str, max_blank: float = 0.7) -> None:
    out.mkdir(parents=True)
    for i, pts in enumerate(polygons):
        p = np.asarray(pts)
        x, y = p.min(0)
        w, h = p.max(0) - p.min(0)
        crop = wsi[y:y + h, x:x + w].copy()
        mask = Image.new("L", (int(w), int(h)), 0)
        ImageDraw.Draw(mask).polygon([tuple(v) for v in (p - (x, y)).tolist()], fill=255)
        crop[np.asarray(mask) != 255] = 255
        ph, pw = -(-h // PATCH) * PATCH, -(-w // PATCH) * PATCH
        padded = np.full((ph, pw, 3), 255, np.uint8)
        padded[:h, :w] = crop
        for yy in range(0, ph, PATCH):
            for xx in range(0, pw, PATCH):
                tile = padded[yy:yy + PATCH, xx:xx + PATCH]
                if (tile == 255).all(axis=-1).mean() < max_blank:
                    Image.fromarray(tile).save(out / f"{pid}_{i}_{xx}_{yy}.png")


@pytest.fixture()
def bcnb(tmp_path: Path) -> dict:
    wsi = _texture(420, 500)
    (tmp_path / "WSIs").mkdir()
    Image.fromarray(wsi).save(tmp_path / "WSIs" / "4.png")
    doc = {"positive": [{"name": "", "vertices": v} for v in POLYGONS], "negative": []}
    (tmp_path / "WSIs" / "4.json").write_text(json.dumps(doc))
    _cut(wsi, POLYGONS, tmp_path / "paper_patches" / "4", "4")
    return {"root": tmp_path, "wsi": wsi, "slide": tmp_path / "WSIs" / "4.png",
            "regions": tmp_path / "WSIs" / "4.json", "folder": tmp_path / "paper_patches" / "4"}


def test_every_patch_lands_on_its_pixels(bcnb: dict) -> None:
    layout = scan_patch_folder(bcnb["folder"])
    names = [f.name for f in layout.files]
    assert {parse_patch_name(n)[0] for n in names} == {0, 1, 2}
    coords = wsi_coords(names, region_origins(bcnb["regions"]), "slide 4")
    wsi = bcnb["wsi"]
    for name, (x, y) in zip(names, coords):
        patch = np.asarray(Image.open(bcnb["folder"] / name).convert("RGB"))
        kept = ~(patch == 255).all(axis=-1)  # white: filled outside the polygon or padding
        on_slide = wsi[y:y + PATCH, x:x + PATCH]
        hk, wk = on_slide.shape[:2]
        assert kept[hk:].sum() == 0 and kept[:, wk:].sum() == 0, name
        assert np.array_equal(on_slide[kept[:hk, :wk]], patch[:hk, :wk][kept[:hk, :wk]]), name
    # The folder's own layout (regions side by side) is not the slide's: the move matters.
    assert not np.array_equal(coords, layout.coords)


def test_region_corner_is_the_polygon_minimum_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"positive": [{"vertices": [[9, 7], [3, 11], [5, 2]]},
                                             {"vertices": [[100.7, 50.2], [120, 80]]}]}))
    assert region_origins(path).tolist() == [[3, 2], [100, 50]]
    assert wsi_coords(["a_1_256_0.jpg", "a_0_0_512.jpg"], region_origins(path), "s").tolist() \
        == [[356, 50], [3, 514]]


@pytest.mark.parametrize("name,msg", [("4_256_512.jpg", "not named"),
                                      ("4_7_0_0.jpg", "region 7")])
def test_unplaceable_names_are_refused(name: str, msg: str) -> None:
    with pytest.raises(AnnotationError, match=msg):
        wsi_coords([name], np.zeros((3, 2), np.int64), "slide 4")


def test_not_a_region_file(tmp_path: Path) -> None:
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(AnnotationError, match="not a BCNB region file"):
        region_origins(path)


def _attrs(bcnb: dict) -> dict:
    return {"reader": "patches", "source_path": str(bcnb["folder"])}


def test_slide_coords_moves_folder_bags_only_onto_another_file(bcnb: dict) -> None:
    names = np.array(["4_0_0_0.png", "4_1_64_0.png"])
    coords = np.array([[0, 0], [500, 0]])
    moved, used = slide_coords("4", bcnb["slide"], coords, _attrs(bcnb), names, None)
    assert used == bcnb["regions"] and moved.tolist() == [[40, 30], [364, 220]]
    # Drawn on the folder itself, or a bag from a slide file: the stored coordinates stand.
    same, none = slide_coords("4", bcnb["folder"], coords, _attrs(bcnb), names, None)
    assert none is None and same is coords
    same, none = slide_coords("4", bcnb["slide"], coords, {"reader": "cucim"}, None, None)
    assert none is None and same is coords


def test_slide_coords_refusals_say_what_to_do(bcnb: dict, tmp_path: Path) -> None:
    names = np.array(["4_0_0_0.png"])
    other = tmp_path / "elsewhere" / "4.png"
    other.parent.mkdir()
    other.write_bytes(b"")
    with pytest.raises(InputError, match=r"beside it or pass --annotations.*patch folder"):
        slide_coords("4", other, np.zeros((1, 2)), _attrs(bcnb), names, None)
    moved, _ = slide_coords("4", other, np.zeros((1, 2)), _attrs(bcnb), names,
                            bcnb["regions"].parent)
    assert moved.tolist() == [[40, 30]]
    with pytest.raises(InputError, match="no region file 4.json"):
        slide_coords("4", other, np.zeros((1, 2)), _attrs(bcnb), names, tmp_path / "elsewhere")
    with pytest.raises(InputError, match="written before balnmp recorded"):
        slide_coords("4", bcnb["slide"], np.zeros((1, 2)), _attrs(bcnb), None, None)


def _tile_corners(path: Path) -> list[tuple[float, float]]:
    doc = json.loads(path.read_text())
    tiles = [f for f in doc["features"] if f["properties"].get("objectType") == "tile"]
    return sorted((t["geometry"]["coordinates"][0][0][0], t["geometry"]["coordinates"][0][0][1])
                  for t in tiles)


def test_heatmap_of_patch_folder_features_on_the_whole_slide_image(bcnb: dict, tmp_path: Path
                                                                  ) -> None:
    """extract-features on the patch folder, a head, then `heatmap` on WSIs/4.png: every
    tile sits at its region's corner + the offset in its file name (computed here from the
    polygons themselves), and the GeoJSON's tumour regions are 4.json's; on the folder itself
    the tiles keep the folder's own coordinates."""
    import torch
    from _paper_helpers import official_head
    from click.testing import CliRunner

    from balnmp_cache.cli import main as extract_main
    from balnmp_mil.cli import main

    store = tmp_path / "feats"
    res = CliRunner().invoke(extract_main, [
        str(bcnb["folder"].parent), "--out", str(store), "--backend", "patches", "--level", "0",
        "--patch-size", str(PATCH), "--encoder", "resnet18", "--weights", "none",
        "--input-size", "32", "--device", "cpu", "--min-tissue", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    torch.save(official_head(512, seed=2), tmp_path / "head.pth")
    res = CliRunner().invoke(main, ["paper", "import", str(tmp_path / "head.pth"), "--out",
                                    str(tmp_path / "run"), "--encoder", "resnet18"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in bcnb["folder"].iterdir())
    want = []
    for name in names:
        region, x, y = (int(v) for v in Path(name).stem.split("_")[1:])
        corner = np.min(POLYGONS[region], axis=0)
        want.append((float(corner[0] + x), float(corner[1] + y)))
    common = ["--features", str(store), "--allow-store-mismatch"]
    res = CliRunner().invoke(main, ["heatmap", str(tmp_path / "run"), str(bcnb["slide"]),
                                    "--out", str(tmp_path / "heat.png"), "--geojson",
                                    str(tmp_path / "heat.geojson"), *common])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "heat.png").stat().st_size > 0
    assert _tile_corners(tmp_path / "heat.geojson") == sorted(want)
    doc = json.loads((tmp_path / "heat.geojson").read_text())
    tumours = [f for f in doc["features"]
               if (f["properties"].get("classification") or {}).get("name") == "Tumor"]
    assert len(tumours) == len(POLYGONS)
    res = CliRunner().invoke(main, ["heatmap", str(tmp_path / "run"), str(bcnb["folder"]),
                                    "--out", str(tmp_path / "own.png"), "--geojson",
                                    str(tmp_path / "own.geojson"), *common])
    assert res.exit_code == 0, res.output
    layout = scan_patch_folder(bcnb["folder"])
    assert _tile_corners(tmp_path / "own.geojson") == sorted(map(tuple, layout.coords.astype(
        float).tolist()))
    (bcnb["regions"]).unlink()
    res = CliRunner().invoke(main, ["heatmap", str(tmp_path / "run"), str(bcnb["slide"]),
                                    "--out", str(tmp_path / "h2.png"), *common])
    assert res.exit_code == 2 and "put its region file 4.json" in res.output

"""`balnmp-mil heatmap --geojson`: QuPath's GeoJSON schema, the round trip through our own
annotation reader, the tissue outline, maps of models without attention, and the cohort mode
(`--slides DIR`) with its failures listed and its exit status."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
from _data import DIM, fast_args, make_tiny_cohort, write_store
from click.testing import CliRunner

from balnmp_cache.tiling.annotations import load_annotations
from balnmp_mil.cli.group import main
from balnmp_mil.workflow.geojson import tissue_outline


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_patients=30)


def _train(cohort, model: str):
    out = cohort.features.parent / f"run-{model}"
    args = fast_args(3) if model == "abmil" else fast_args(3)[:-2]  # no attention_dim
    res = invoke("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                 "--model", model, "--out", out, "--lr", "0.01", *args)
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def abmil_run(cohort):
    return _train(cohort, "abmil")


def _slide(path, size=512):
    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    image = np.full((size, size, 3), 235, np.uint8)
    image[64:448, 64:448] = (200, 120, 170)
    return write_pyramidal_tiff(path, image, mpp=0.5, levels=2, tile=256)


def _annotated_store(tmp_path, ids=("hm",), n=20):
    ann = tmp_path / "annotations"
    ann.mkdir()
    tumour = [[64, 64], [300, 64], [300, 280], [64, 280]]
    for sid in ids:
        (ann / f"{sid}.json").write_text(json.dumps(
            {"positive": [{"name": "tumour 1", "vertices": tumour}], "negative": []}))
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    write_store(store, {sid: rng.normal(size=(n, DIM)) for sid in ids}, dtype="float32",
                grid=64, attrs={"annotations": str(ann)})
    return store, ann, tumour


def test_geojson_follows_qupath_and_reads_back(abmil_run, tmp_path):
    store, _, tumour = _annotated_store(tmp_path)
    slide = _slide(tmp_path / "hm.tiff")
    gj = tmp_path / "hm.geojson"
    res = invoke("heatmap", abmil_run, slide, "--out", tmp_path / "hm.png", "--geojson", gj,
                 "--features", store, "--top-k", "3", "--thumbnail-size", "256")
    assert res.exit_code == 0, res.output
    doc = json.loads(gj.read_text())
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert all(f["type"] == "Feature" and f["geometry"]["type"] in ("Polygon", "MultiPolygon")
               for f in feats)
    assert len({uuid.UUID(f["id"]) for f in feats}) == len(feats)  # QuPath 0.4+ ids: UUIDs
    tiles = [f for f in feats if f["properties"]["objectType"] == "tile"]
    regions = [f for f in feats if f["properties"]["objectType"] == "annotation"]
    assert len(tiles) == 20 and all(t["properties"]["isLocked"] is True for t in tiles)
    m = pd.DataFrame([t["properties"]["measurements"] for t in tiles])
    assert list(m.columns) == ["attention", "attention rank", "instance score"]
    assert sorted(m["attention rank"]) == list(range(1, 21))
    assert m["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert m.loc[m["attention"].idxmax(), "attention rank"] == 1
    assert ((m["instance score"] > 0) & (m["instance score"] < 1)).all()
    top = [t for t in tiles if "classification" in t["properties"]]
    assert {t["properties"]["classification"]["name"] for t in top} == {"Top attention"}
    assert len(top) == 3 and {t["properties"]["measurements"]["attention rank"] for t in top} \
        == {1, 2, 3}
    ring = np.array(tiles[0]["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
    assert np.ptp(ring[:, 0]) == 64 and np.ptp(ring[:, 1]) == 64  # the level-0 footprint
    classes = {f["properties"]["classification"]["name"]: f["properties"]["classification"]
               for f in regions}
    assert set(classes) == {"Tissue", "Tumor"}
    for cls in classes.values():
        assert len(cls["color"]) == 3 and all(isinstance(c, int) for c in cls["color"])
    back = load_annotations(gj)  # our reader: tiles skipped, the tumour kept, tissue not
    assert len(back.positive) == 1 and not back.negative
    np.testing.assert_array_equal(back.positive[0].exterior, np.array(tumour, float))


def test_tissue_outline_is_the_union_of_the_patches(tmp_path):
    """A ring of 8 squares around an empty centre: one polygon with one hole, exact."""
    cells = [(c, r) for r in range(3) for c in range(3) if (c, r) != (1, 1)]
    coords = np.array(cells) * 100 + 1000
    polys = tissue_outline(coords, 100)
    assert len(polys) == 1 and len(polys[0]) == 2
    outer, hole = polys[0]
    assert {tuple(p) for p in outer} == {(1000, 1000), (1300, 1000), (1300, 1300), (1000, 1300)}
    assert {tuple(p) for p in hole} == {(1100, 1100), (1200, 1100), (1200, 1200), (1100, 1200)}
    # overlapping patches off the grid (stride 50, side 100): the union, no gaps
    polys = tissue_outline(np.array([[0, 0], [50, 0], [400, 0]]), 100)
    assert sorted(np.ptp(p[0][:, 0]) for p in polys) == [100, 150]
    # through our reader: every patch centre inside, a point between the two parts not
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {"objectType": "annotation"},
                                "geometry": {"type": "MultiPolygon", "coordinates": [
                                    [[*p.tolist(), p[0].tolist()] for p in poly]
                                    for poly in polys]}}))
    ann = load_annotations(path)
    assert ann.contains([[50, 50], [100, 50], [450, 50]]).all()
    assert not ann.contains([[300, 50], [50, 150]]).any()


@pytest.mark.parametrize("model", ["mean", "max"])
def test_models_without_attention_map_instance_scores(cohort, tmp_path, model):
    run = _train(cohort, model)
    store, _, _ = _annotated_store(tmp_path)
    slide = _slide(tmp_path / "hm.tiff")
    gj = tmp_path / "hm.geojson"
    res = invoke("heatmap", run, slide, "--out", tmp_path / "hm.png", "--geojson", gj,
                 "--features", store, "--top-k", "2", "--thumbnail-size", "256")
    assert res.exit_code == 0, res.output
    assert "instance score ->" in res.output
    tiles = [f for f in json.loads(gj.read_text())["features"]
             if f["properties"]["objectType"] == "tile"]
    scores = [t["properties"]["measurements"] for t in tiles]
    assert all(set(s) == {"instance score"} for s in scores)  # no (uniform) attention
    top = [t["properties"]["classification"]["name"] for t in tiles
           if "classification" in t["properties"]]
    assert top == ["Top instance score"] * 2
    assert np.ptp([s["instance score"] for s in scores]) > 0
    assert (tmp_path / "hm.png").stat().st_size > 10_000


def test_instance_score_is_the_patch_alone_as_a_bag(abmil_run):
    import torch

    from balnmp_mil.workflow import rundir
    from balnmp_mil.workflow.heatmap import bag_scores

    model = rundir.load_run(abmil_run, device="cpu").model
    x = np.random.default_rng(3).normal(size=(5, DIM)).astype(np.float32)
    scores = bag_scores(model, x, None)
    with torch.no_grad():
        alone = [torch.softmax(model.forward_bag(torch.from_numpy(x[i:i + 1])).logits, -1)
                 [0, 1].item() for i in range(5)]
    np.testing.assert_allclose(scores.instance, alone, rtol=1e-5, atol=1e-6)
    assert scores.mapped == "attention" and scores.shown == 1


def test_cohort_mode_lists_failures_and_goes_on(abmil_run, tmp_path):
    store, _, _ = _annotated_store(tmp_path, ids=("a", "b", "c", "d"), n=12)
    slides = tmp_path / "slides"
    slides.mkdir()
    _slide(slides / "a.tiff")
    _slide(slides / "b.tiff")
    (slides / "c.tiff").write_bytes(b"not a tiff at all")  # unreadable; "d" has no file
    out = tmp_path / "heat"
    res = invoke("heatmap", abmil_run, "--slides", slides, "--out", out, "--features", store,
                 "--top-k", "2", "--thumbnail-size", "128", "--jobs", "2")
    assert res.exit_code == 1, res.output
    assert "2 slides drawn, 2 failed" in res.output and "failed d: no slide file" in res.output
    for sid in ("a", "b"):
        assert (out / f"{sid}.png").is_file() and (out / f"{sid}.geojson").is_file()
    index = pd.read_csv(out / "index.csv")
    assert list(index["slide_id"]) == ["a", "b", "c", "d"]
    assert list(index["status"]) == ["drawn", "drawn", "failed", "failed"]
    assert "c.tiff" in index.loc[2, "error"] and "no backend can read" in index.loc[2, "error"]
    md = (out / "index.md").read_text()
    assert "[png](a.png)" in md and "## Failed" in md and "| d |" in md
    report = (out / "index.html").read_text(encoding="utf-8")  # the run's report, linked
    assert '<a href="a.png">a.png</a>' in report and "Heatmaps that failed" in report
    res = invoke("heatmap", abmil_run, "--slides", slides, "--out", out, "--features", store,
                 "--geojson", tmp_path / "x.geojson")
    assert res.exit_code == 2 and "leave out SLIDE" in res.output


def test_cohort_mode_draws_one_split(abmil_run, tmp_path):
    from balnmp_mil.workflow import rundir

    split = rundir.load_run(abmil_run).splits
    test_ids, train_ids = split.test[:2], split.train[:1]
    store, _, _ = _annotated_store(tmp_path, ids=(*test_ids, *train_ids), n=8)
    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in (*test_ids, *train_ids):
        _slide(slides / f"{sid}.tiff", size=512)
    out = tmp_path / "heat"
    res = invoke("heatmap", abmil_run, "--slides", slides, "--out", out, "--features", store,
                 "--split", "test", "--top-k", "1", "--thumbnail-size", "128", "--jobs", "1")
    assert res.exit_code == 0, res.output
    assert sorted(pd.read_csv(out / "index.csv", dtype={"slide_id": str})["slide_id"]) \
        == sorted(test_ids)


def test_importing_the_heatmaps_loads_no_slide_reader_nor_annotation_reader():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, balnmp_mil.workflow, balnmp_mil.workflow.heatmap_cohort;"
            "bad = [m for m in ('balnmp_cache.slides.registry', 'balnmp_cache.tiling.annotations',"
            " 'openslide', 'cucim') if m in sys.modules]; assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)

"""BALNMP JSON and QuPath GeoJSON tumour annotations: loading, contains, rasterize."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from balnmp_cache.tiling.annotations import (
    AnnotationError,
    Annotations,
    AnnotationWarning,
    Polygon,
    find_annotation,
    load_annotations,
)

SQUARE = [[100, 100], [900, 100], [900, 900], [100, 900]]
HOLE = [[400, 400], [600, 400], [600, 600], [400, 600]]
BOWTIE = [[0, 0], [400, 400], [400, 0], [0, 400]]  # self-intersecting figure-eight


def _write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _feature(coords, cls=None, kind="Polygon", **props):
    if cls:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": {"objectType": "annotation", **props}}


def test_balnmp_json_negative_regions_are_cut_out(tmp_path):
    p = _write(tmp_path, "1.json", {
        "positive": [{"name": "tumor 1", "vertices": SQUARE}],
        "negative": [{"name": "necrosis", "vertices": HOLE}],
    })
    ann = load_annotations(p)
    assert ann.source == p and not ann.is_empty
    assert [q.name for q in ann.positive] == ["tumor 1"]
    assert ann.bounds() == (100.0, 100.0, 900.0, 900.0)
    got = ann.contains([[150, 150], [500, 500], [950, 500], [899, 899], [50, 50]])
    assert got.tolist() == [True, False, False, True, False]


def test_rasterize_agrees_with_contains_at_pixel_centres(tmp_path):
    ann = Annotations([Polygon(np.array(SQUARE, float), [np.array(HOLE, float)], "t"),
                       Polygon(np.array(BOWTIE, float) + 1000, [], "b")])
    ds = 16.0
    mask = ann.rasterize((100, 90), ds)
    rows, cols = np.mgrid[0:100, 0:90]
    centres = np.c_[(cols.ravel() + 0.5) * ds, (rows.ravel() + 0.5) * ds]
    assert np.array_equal(mask.ravel(), ann.contains(centres))
    expected = ((900 - 100) ** 2 - 200**2) / ds**2 + 2 * (400 * 200 / 2) / ds**2
    assert abs(mask.sum() - expected) / expected < 0.03


def test_geojson_feature_collection_with_holes_and_classes(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        _feature([SQUARE + [SQUARE[0]], HOLE + [HOLE[0]]], "Tumor"),
        _feature([[[[2000, 0], [2100, 0], [2100, 100]]], [[[3000, 0], [3100, 0], [3100, 100]]]],
                 "Tumor", kind="MultiPolygon", name="two islands"),
        _feature([[[5000, 0], [5100, 0], [5100, 100], [5000, 100], [5000, 0]]], "Stroma"),
        _feature([[[150, 150], [250, 150], [250, 250], [150, 250], [150, 150]]], "Ignore*"),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
         "properties": {"objectType": "detection"}},
        {"type": "Feature", "id": "PathDetectionObject",  # QuPath 0.2 style detection
         "geometry": {"type": "Polygon", "coordinates": [[[7000, 0], [7100, 0], [7100, 90]]]},
         "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}}},
    ]}
    ann = load_annotations(_write(tmp_path, "s.geojson", doc))
    assert len(ann.positive) == 3 and len(ann.negative) == 1
    assert [len(q.holes) for q in ann.positive] == [1, 0, 0]
    assert ann.positive[1].name == "two islands[0]"
    got = ann.contains([[300, 300], [500, 500], [200, 200], [2090, 10], [3090, 10], [5050, 50],
                        [7090, 10]])
    assert got.tolist() == [True, False, False, True, True, False, False]


@pytest.mark.parametrize("wrap", ["feature", "geometry", "list"])
def test_geojson_single_feature_bare_geometry_and_feature_list(tmp_path, wrap):
    poly = {"type": "Polygon", "coordinates": [SQUARE + [SQUARE[0]], HOLE + [HOLE[0]]]}
    doc = {"feature": _feature(poly["coordinates"]), "geometry": poly,
           "list": [_feature(poly["coordinates"])]}[wrap]
    ann = load_annotations(_write(tmp_path, "a.geojson", doc))
    assert ann.contains([[300, 300], [500, 500]]).tolist() == [True, False]


def test_unclassified_regions_are_tumour_when_no_tumour_class(tmp_path):
    doc = {"type": "FeatureCollection", "features": [_feature([SQUARE], "Region*")]}
    ann = load_annotations(_write(tmp_path, "r.geojson", doc))
    assert len(ann.positive) == 1


def test_self_intersecting_polygon_is_repaired_even_odd_or_rejected(tmp_path):
    p = _write(tmp_path, "x.json", {"positive": [{"name": "figure eight", "vertices": BOWTIE}]})
    with pytest.warns(AnnotationWarning, match="figure eight.*self-intersecting"):
        ann = load_annotations(p)
    # Both lobes of the figure-eight are tumour; the gaps above/below the crossing are not.
    assert ann.contains([[50, 200], [350, 200], [200, 50], [200, 350]]).tolist() == [
        True, True, False, False,
    ]
    with pytest.raises(AnnotationError, match="figure eight.*self-intersecting"):
        load_annotations(p, on_invalid="error")


def test_pentagram_centre_is_outside_under_even_odd(tmp_path):
    t = np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    star = np.c_[500 + 400 * np.cos(t), 500 + 400 * np.sin(t)].tolist()
    with pytest.warns(AnnotationWarning):
        ann = load_annotations(_write(tmp_path, "s.json", {"positive": [{"vertices": star}]}))
    assert ann.contains([[500, 500], [500, 880]]).tolist() == [False, True]


def test_degenerate_polygons_are_dropped_with_a_warning(tmp_path):
    doc = {"positive": [{"name": "line", "vertices": [[0, 0], [10, 10], [20, 20]]},
                        {"name": "ok", "vertices": SQUARE}]}
    with pytest.warns(AnnotationWarning, match="'line' has no area"):
        ann = load_annotations(_write(tmp_path, "d.json", doc))
    assert [q.name for q in ann.positive] == ["ok"]


def test_clean_polygons_load_without_warnings(tmp_path):
    p = _write(tmp_path, "c.json", {"positive": [{"name": "t", "vertices": SQUARE}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_annotations(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"foo": 1}', "neither BALNMP JSON"),
        ('{"positive": [{"name": "t"}]}', "no 'vertices'"),
        ('{"positive": [{"vertices": [[0, 0], [1, "a"], [2, 2]]}]}', "malformed"),
        ('{"positive": [{"vertices": [1, 2, 3]}]}', "shape"),
        ('{"positive": [{"vertices": [[0, 0], [NaN, 1], [2, 2]]}]}', "NaN"),
    ],
)
def test_bad_files_raise_errors_naming_the_file(tmp_path, text, match):
    p = _write(tmp_path, "bad.json", text)
    with pytest.raises(AnnotationError, match=match) as info:
        load_annotations(p)
    assert "bad.json" in str(info.value)


def test_blank_or_empty_file_gives_empty_annotations(tmp_path):
    for name, text in [("blank.json", "  \n"), ("empty.json", '{"positive": [], "negative": []}')]:
        ann = load_annotations(_write(tmp_path, name, text))
        assert ann.is_empty and ann.bounds() is None
        assert not ann.contains([[1, 1]]).any()
        assert not ann.rasterize((4, 4), 1.0).any()


def test_find_annotation(tmp_path):
    _write(tmp_path, "7.geojson", {"type": "Polygon", "coordinates": [SQUARE]})
    _write(tmp_path, "8.json", {"positive": []})
    assert find_annotation(tmp_path, "7") == tmp_path / "7.geojson"
    assert find_annotation(tmp_path, "8") == tmp_path / "8.json"
    assert find_annotation(tmp_path, "9") is None


def test_polygon_outside_the_raster_is_empty_not_an_error():
    ann = Annotations([Polygon(np.array(SQUARE, float) + 1e6)])
    assert not ann.rasterize((50, 50), 4.0).any()
    assert not ann.contains(np.zeros((3, 2))).any()


def test_self_intersection_found_in_a_long_outline():
    from balnmp_cache.tiling.polygons import ring_self_intersects

    t = np.linspace(0, 2 * np.pi, 20_000, endpoint=False)
    r = 20_000 + 500 * np.sin(7 * t)
    ring = np.c_[50_000 + r * np.cos(t), 40_000 + r * np.sin(t)]
    assert not ring_self_intersects(ring)
    ring[[7_000, 7_001]] = ring[[7_001, 7_000]]  # two swapped vertices: a tiny figure-eight
    assert ring_self_intersects(ring)

"""extract_features end to end on a tiny generated cohort: store contents, resume, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _extract_helpers import FAST, tiny_cohort

from balnmp_cache.extract import ExtractError, SlideFailure, extract_features, find_slides
from balnmp_cache.store import KNOWN_ATTRS, FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=3)


@pytest.fixture(scope="module")
def extracted(cohort, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    out = tmp_path_factory.mktemp("feats") / "store"
    summary = extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir, **FAST)
    return out, summary


def test_store_matches_design(cohort, extracted) -> None:  # noqa: ANN001
    out, summary = extracted
    assert [r.status for r in summary.results] == ["done"] * 3 and summary.n_failed == 0
    assert sorted(p.name for p in out.glob("*.h5")) == ["1.h5", "2.h5", "3.h5"]
    for res in summary.results:
        with h5py.File(out / f"{res.slide_id}.h5") as f:
            feats, coords = f["features"], f["coords"]
            assert feats.dtype == np.float16 and feats.shape == (res.n_patches, 512)
            assert coords.dtype == np.int64 and coords.shape == (res.n_patches, 2)
            assert np.isfinite(feats[:]).all()
            attrs = dict(f.attrs)
            missing = [k for k in KNOWN_ATTRS if k not in attrs]
            assert not missing, f"attributes missing: {missing}"
            assert attrs["slide_id"] == res.slide_id
            assert attrs["encoder"] == "resnet18" and attrs["weights"] == "none:seed=0"
            assert attrs["feature_dim"] == 512 and attrs["patch_size"] == 32
            assert attrs["patch_size_level0"] == 64 and attrs["level"] == 1
            assert attrs["target_mpp"] == 1.0 and attrs["slide_mpp"] == 0.5
            assert attrs["tissue"] == "biopsy"
            assert Path(attrs["source_path"]) == (cohort.slides_dir / f"{res.slide_id}.svs").resolve()
            assert f"{res.slide_id}.json" in attrs["annotations"]
            cattrs = dict(coords.attrs)
            assert cattrs["patch_size"] == 32 and cattrs["patch_size_level0"] == 64
            assert cattrs["level0_magnification"] == 20 and cattrs["target_magnification"] == 10
            # CLAM's patch attributes: 32 px read at level 1, as CLAM's readers would
            assert cattrs["patch_level"] == 1 and cattrs["name"] == res.slide_id
            assert list(cattrs["downsample"]) == [2.0, 2.0] and cattrs["overlap"] == 0
            # coords lie on the 64 px level-0 grid inside the slide
            c = coords[:]
            assert (c % 64 == 0).all() and (c >= 0).all() and (c[:, 0] < 1024).all()


def test_manifest_lists_every_slide(extracted) -> None:  # noqa: ANN001
    out, summary = extracted
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["id", "path", "status", "n_patches", "seconds", "error"]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert all(r["status"] == "done" and r["error"] == "" for r in rows)
    assert [int(r["n_patches"]) for r in rows] == [r.n_patches for r in summary.results]
    assert all(float(r["seconds"]) > 0 for r in rows)


def test_rerun_skips_finished_slides_and_overwrite_redoes_them(cohort, extracted) -> None:  # noqa: ANN001
    out, _ = extracted
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    again = extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir, **FAST)
    assert [r.status for r in again.results] == ["skipped"] * 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before
    redo = extract_features(cohort.slides_dir / "2.svs", out, annotations=cohort.annotations_dir,
                            overwrite=True, **FAST)  # fmt: skip
    assert [r.status for r in redo.results] == ["done"]
    assert (out / "2.h5").stat().st_mtime_ns != before["2.h5"]
    assert not list((out / ".locks").glob("*.lock"))


def test_random_init_features_are_reproducible(cohort, extracted, tmp_path: Path) -> None:  # noqa: ANN001
    out, _ = extracted
    extract_features(cohort.slides_dir / "1.svs", tmp_path, annotations=cohort.annotations_dir,
                     qc_dir=tmp_path / "qc", **FAST)  # fmt: skip
    assert (tmp_path / "qc" / "1.png").stat().st_size > 0
    a, b = FeatureStore(out)["1"], FeatureStore(tmp_path)["1"]
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.features, b.features)


def test_annotation_outside_tissue_gives_an_empty_bag(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    ann = tmp_path / "ann"
    ann.mkdir()
    corner = {"positive": [{"name": "t", "vertices": [[0, 0], [60, 0], [60, 60], [0, 60]]}],
              "negative": []}  # fmt: skip
    (ann / "1.json").write_text(json.dumps(corner))
    out = tmp_path / "out"
    summary = extract_features(cohort.slides_dir / "1.svs", out, annotations=ann, **FAST)
    assert [(r.status, r.n_patches) for r in summary.results] == [("empty", 0)]
    bag = FeatureStore(out)["1"]
    assert bag.features.shape == (0, 512) and bag.coords.shape == (0, 2)


def test_missing_annotation_fails_unless_allowed(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    ann = tmp_path / "ann"
    ann.mkdir()  # holds no annotation for slide 2
    slide = cohort.slides_dir / "2.svs"
    res = extract_features(slide, tmp_path / "a", annotations=ann, skip_errors=True, **FAST)
    assert [r.status for r in res.results] == ["failed"]
    assert res.results[0].stage == "annotations" and "--allow-unannotated" in res.results[0].error
    ok = extract_features(slide, tmp_path / "b", annotations=ann, allow_unannotated=True, **FAST)
    assert [r.status for r in ok.results] == ["done"]
    assert FeatureStore(tmp_path / "b").attrs("2")["annotations"] == ""


def test_empty_annotation_fails_unless_allowed(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "2.json").write_text(json.dumps({"positive": [], "negative": []}))
    slide = cohort.slides_dir / "2.svs"
    res = extract_features(slide, tmp_path / "a", annotations=ann, skip_errors=True, **FAST)
    assert [r.status for r in res.results] == ["failed"]
    assert res.results[0].stage == "annotations"
    assert "2.json holds no tumour region" in res.results[0].error
    assert "--allow-unannotated" in res.results[0].error
    ok = extract_features(slide, tmp_path / "b", annotations=ann, allow_unannotated=True, **FAST)
    assert [r.status for r in ok.results] == ["done"] and ok.results[0].n_patches > 0


def test_resuming_with_another_encoder_is_refused(cohort, extracted) -> None:  # noqa: ANN001
    out, _ = extracted
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    with pytest.raises(ExtractError, match=r"encoder 'resnet18' \(asked for 'alexnet'\).*--overwrite"):
        extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir,
                         **{**FAST, "encoder": "alexnet"})
    with pytest.raises(ExtractError, match=r"--mpp 1.0 \(asked for 0.5\)"):
        extract_features(cohort.slides_dir, out, annotations=cohort.annotations_dir,
                         **{**FAST, "mpp": 0.5})
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == before


def test_skip_errors_records_and_goes_on(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cohort.slides_dir / "1.svs", slides / "1.svs")
    (slides / "0broken.svs").write_bytes(b"not a slide at all")
    out = tmp_path / "out"
    summary = extract_features(slides, out, skip_errors=True, **FAST)
    status = {r.slide_id: r.status for r in summary.results}
    assert status == {"0broken": "failed", "1": "done"}
    assert summary.n_failed == 1
    failed = summary.failed[0]
    assert failed.stage == "open" and failed.error
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert rows["0broken"]["status"] == "failed" and rows["0broken"]["stage"] == "open"
    assert "0broken" not in FeatureStore(out).slide_ids
    assert "failed" in summary.format() and "0broken" in summary.format()


def test_without_skip_errors_the_first_failure_stops_and_keeps_finished(cohort, tmp_path: Path) -> None:  # noqa: ANN001, E501
    slides = tmp_path / "slides"
    slides.mkdir()
    for sid in ("1", "3"):
        shutil.copy(cohort.slides_dir / f"{sid}.svs", slides / f"{sid}.svs")
    (slides / "2.svs").write_bytes(b"truncated")
    out = tmp_path / "out"
    with pytest.raises(SlideFailure, match="'2'") as err:
        extract_features(slides, out, **FAST)
    assert err.value.result.stage == "open"
    assert FeatureStore(out).slide_ids == ["1"]  # 1 finished and valid; 3 never started
    assert FeatureStore(out)["1"].features.shape[0] > 0


def test_bad_inputs_are_reported_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExtractError, match="no slides found"):
        extract_features(tmp_path / "empty", tmp_path / "out", **FAST)
    with pytest.raises(ExtractError, match="no such slide"):
        find_slides(tmp_path / "nope.svs")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.svs").write_bytes(b"")
    (tmp_path / "b" / "x.tif").write_bytes(b"")
    with pytest.raises(ExtractError, match="share the id 'x'"):
        find_slides([tmp_path / "a", tmp_path / "b"])

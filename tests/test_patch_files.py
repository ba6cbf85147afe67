"""Each row's source file name for folders of patches (`patch_files`): written by the
extraction job through the cross-slide feed, read by `FeatureStore`, packs and `load_bags`."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _data import write_store
from click.testing import CliRunner
from PIL import Image

from balnmp_cache.errors import StoreError
from balnmp_cache.extract import extract_features
from balnmp_cache.slides.patches import scan_patch_folder
from balnmp_cache.store import FeatureStore, load_bags
from balnmp_cache.store.pack import pack_store
from balnmp_mil.cli import main as mil_main

PATCH = 32
# BCNB paper_patches: `<pid>/<pid>_<region>_<x>_<y>.jpg`, x/y pixel offsets inside a region.
CELLS = {
    "101": {0: [(0, 0), (32, 0), (0, 32)], 1: [(0, 0), (32, 32)], 2: [(64, 0), (64, 32)]},
    "102": {0: [(0, 0), (32, 0), (64, 0), (96, 0)]},
    "103": {3: [(0, 0), (0, 32), (32, 32)], 7: [(0, 0), (32, 0), (0, 32), (32, 32), (64, 64)]},
}
# Batches of 5 rows with 7, 4 and 8 patches per patient: every batch after the first holds
# rows of two patients, so the feed routes names as it routes features.
OPTS = {"encoder": "resnet18", "weights": "none", "backend": "patches", "level": 0,
        "patch_size": PATCH, "input_size": PATCH, "device": "cpu", "batch_size": 5,
        "dtype": "float32", "progress": False}  # fmt: skip


@pytest.fixture(scope="module")
def bcnb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patch_files") / "patches"
    rng = np.random.default_rng(0)
    for pid, regions in CELLS.items():
        folder = root / pid
        folder.mkdir(parents=True)
        for region, cells in regions.items():
            for x, y in cells:
                pixels = rng.integers(0, 256, (PATCH, PATCH, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{pid}_{region}_{x}_{y}.jpg")
    return root


def _expected(folder: Path) -> dict[tuple[int, int], str]:
    """Each cell's level-0 position -> the file it is read from (what the slide serves)."""
    layout = scan_patch_folder(folder)
    return {(int(x), int(y)): f.name for f, (x, y) in zip(layout.files, layout.coords)}


@pytest.fixture(scope="module", params=["h5", "zarr"])
def extracted(request: pytest.FixtureRequest, bcnb: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:  # fmt: skip
    out = tmp_path_factory.mktemp("out") / ("f.zarr" if request.param == "zarr" else "f")
    summary = extract_features(bcnb, out, format=request.param, **OPTS)
    assert [r.status for r in summary.results] == ["done"] * 3, summary.results
    assert [r.n_patches for r in summary.results] == [7, 4, 8]
    return out


def test_each_row_names_the_file_its_coords_were_read_from(bcnb: Path, extracted: Path) -> None:
    store = FeatureStore(extracted)
    for pid in CELLS:
        bag = store[pid]
        expected = _expected(bcnb / pid)
        assert bag.patch_files is not None and bag.patch_files.shape == (len(bag),)
        assert [expected[(int(x), int(y))] for x, y in bag.coords] == list(bag.patch_files)
        assert sorted(bag.patch_files) == sorted(expected.values())  # every file, once


@pytest.mark.parametrize("pack_format", ["h5", "zarr"])
def test_packs_and_load_bags_carry_the_names(extracted: Path, tmp_path: Path,
                                             pack_format: str) -> None:  # fmt: skip
    store = FeatureStore(extracted)
    direct = load_bags(extracted)
    pack = pack_store(extracted, tmp_path / f"cohort.{pack_format}", format=pack_format,
                      progress=False)  # fmt: skip
    for packed in (direct, load_bags(pack)):
        assert packed.patch_files is not None and packed.patch_files.shape == (len(packed.coords),)
        for i, sid in enumerate(packed.slide_ids):
            np.testing.assert_array_equal(packed.bag(i).patch_files, store[sid].patch_files)
            np.testing.assert_array_equal(packed.bag(i).coords, store[sid].coords)
    np.testing.assert_array_equal(FeatureStore(pack)["102"].patch_files, store["102"].patch_files)
    assert FeatureStore(pack).info("102").has_patch_files and store.info("102").has_patch_files
    subset = load_bags(pack, slide_ids=["103", "101"])
    assert list(subset.bag(0).patch_files) == list(store["103"].patch_files)


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_slides_without_names_read_as_none_and_pack_as_empty_strings(tmp_path: Path,
                                                                      fmt: str) -> None:  # fmt: skip
    path = tmp_path / ("s.zarr" if fmt == "zarr" else "s")
    write_store(path, {"old1": 5, "old2": 3}, format=fmt)  # no names: a pyramid, an old store
    assert FeatureStore(path)["old1"].patch_files is None
    assert not FeatureStore(path).info("old1").has_patch_files
    assert load_bags(path).patch_files is None
    assert load_bags(pack_store(path, tmp_path / "p.h5", progress=False)).patch_files is None
    with FeatureStore(path, mode="a") as store, store.writer("new", 16) as w:
        w.append(np.ones((2, 16)), np.zeros((2, 2)), ["new_0_0_0.jpg", "new_0_32_0.jpg"])
    packed = load_bags(path)
    assert packed.slide_ids == ["new", "old1", "old2"]
    assert list(packed.patch_files) == ["new_0_0_0.jpg", "new_0_32_0.jpg"] + [""] * 8
    assert packed.bag(1).patch_files is None
    for pack_format in ("h5", "zarr"):
        pack = load_bags(pack_store(path, tmp_path / f"mixed.{pack_format}", format=pack_format,
                                    progress=False))  # fmt: skip
        np.testing.assert_array_equal(pack.patch_files, packed.patch_files)
        assert pack.bag(2).patch_files is None
        with FeatureStore(tmp_path / f"mixed.{pack_format}") as opened:
            assert [opened.info(s).has_patch_files for s in opened] == [True, False, False]
    skipped = load_bags(path, slide_ids=["old1", "old2"])
    assert skipped.patch_files is None


@pytest.mark.parametrize("fmt", ["h5", "zarr"])
def test_writers_refuse_names_that_do_not_match_the_rows(tmp_path: Path, fmt: str) -> None:
    store = FeatureStore(tmp_path / ("s.zarr" if fmt == "zarr" else "s"), mode="a", format=fmt)
    rows, xy = np.ones((2, 4)), np.zeros((2, 2))
    bad = [(["a.jpg"], "patch_files batch has shape"), (["a.jpg", ""], "non-empty"),
           (np.zeros(2), "patch_files batch has shape")]  # fmt: skip
    for files, message in bad:
        with pytest.raises(StoreError, match=message), store.writer("s", 4) as w:
            w.append(rows, xy, files)
    with pytest.raises(StoreError, match="a batch without patch_files after 2 rows"):
        with store.writer("s", 4) as w:
            w.append(rows, xy, ["a.jpg", "b.jpg"])
            w.append(rows, xy)
    with pytest.raises(StoreError, match="a batch with patch_files after 2 rows"):
        with store.writer("s", 4) as w:
            w.append(rows, xy)
            w.append(rows, xy, ["a.jpg", "b.jpg"])
    assert store.slide_ids == []  # nothing published
    with store.writer("s", 4) as w:  # an empty batch decides nothing
        w.append(np.ones((0, 4)), np.zeros((0, 2)))
        w.append(rows, xy, ["a.jpg", "b.jpg"])
    assert list(store["s"].patch_files) == ["a.jpg", "b.jpg"]


def test_a_names_array_of_the_wrong_length_is_damage(tmp_path: Path) -> None:
    write_store(tmp_path / "s", {"a": 4})
    with h5py.File(tmp_path / "s" / "a.h5", "a") as f:
        f.create_dataset("patch_files", data=np.array(["x"] * 3, dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
    with pytest.raises(StoreError, match=r"'patch_files' has shape \(3,\), expected \(4,\)"):
        FeatureStore(tmp_path / "s")["a"]
    with pytest.raises(StoreError, match="patch_files"):
        load_bags(tmp_path / "s")
    with pytest.warns(UserWarning, match="patch_files"):
        with pytest.raises(StoreError, match="no usable slides"):
            load_bags(tmp_path / "s", on_problem="warn")


def _drop_names(store: Path, sid: str) -> None:
    """Make `sid` what a writer before names were recorded left: no `patch_files`."""
    if store.suffix == ".zarr":
        shutil.rmtree(store / sid / "patch_files")  # (a v3 group does not list its children)
        return
    with h5py.File(store / f"{sid}.h5", "a") as f:
        del f["patch_files"]


def test_a_resume_keeps_slides_written_before_names_were_recorded(bcnb: Path, tmp_path: Path,
                                                                   ) -> None:  # fmt: skip
    for fmt, out in (("h5", tmp_path / "f"), ("zarr", tmp_path / "f.zarr")):
        extract_features(bcnb, out, format=fmt, **OPTS)
        _drop_names(out, "102")
        before = FeatureStore(out)["102"]
        assert before.patch_files is None
        summary = extract_features(bcnb, out, format=fmt, **OPTS)
        assert [(r.status, r.error) for r in summary.results] == [("skipped", "finished")] * 3
        after = FeatureStore(out)
        assert after["102"].patch_files is None  # kept as it was: names are informational
        np.testing.assert_array_equal(after["102"].features, before.features)
        packed = load_bags(out)
        assert packed.bag(1).patch_files is None and packed.bag(0).patch_files is not None
        shown = CliRunner().invoke(mil_main, ["inspect", str(out)])
        assert shown.exit_code == 0, shown.output
        assert "names:     each patch's source file recorded for 2 of 3 slides" in shown.output
        extract_features(bcnb, out, format=fmt, overwrite=True, **OPTS)
        assert FeatureStore(out)["102"].patch_files is not None  # --overwrite records them


def test_the_grid_of_a_patch_folder_names_every_cell(bcnb: Path) -> None:
    from balnmp_cache.errors import TilingError
    from balnmp_cache.slides import open_slide
    from balnmp_cache.tiling.grid import tile_slide

    with open_slide(bcnb / "103", backend="patches") as slide:
        grid = tile_slide(slide, patch_size=PATCH, level=0)
        expected = _expected(bcnb / "103")
        assert [expected[(int(x), int(y))] for x, y in grid.coords] == list(grid.patch_files)
        slide.fixed_files = slide.fixed_files[:-1]
        with pytest.raises(TilingError, match="names 7 patch files for 8 patches"):
            tile_slide(slide, patch_size=PATCH, level=0)


def test_a_zarr_slide_missing_a_names_chunk_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with FeatureStore(path, mode="a") as store:
        for sid in ("a", "b"):
            with store.writer(sid, 4) as w:
                w.append(np.ones((3, 4)), np.zeros((3, 2)), [f"{sid}{i}.jpg" for i in range(3)])
    next((path / "b" / "patch_files" / "c").iterdir()).unlink()
    with pytest.raises(StoreError, match=r"\bb\b.*patch_files.*missing.*extract-features"):
        FeatureStore(path)["b"]
    with pytest.warns(UserWarning, match="missing"):
        packed = load_bags(path, on_problem="warn")
    assert packed.slide_ids == ["a"] and list(packed.patch_files) == ["a0.jpg", "a1.jpg", "a2.jpg"]


def test_a_failed_write_of_the_names_publishes_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import errno

    create = h5py.Group.create_dataset

    def full(self, name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "patch_files":
            raise OSError(errno.ENOSPC, "No space left on device")
        return create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    store = FeatureStore(tmp_path / "s", mode="a")
    with pytest.raises(OSError, match="No space left") as caught, store.writer("a", 4) as w:
        w.append(np.ones((3, 4)), np.zeros((3, 2)), ["a.jpg", "b.jpg", "c.jpg"])
    assert caught.value.errno == errno.ENOSPC  # the job stops on it (slide_job.OUTPUT_ERRNOS)
    assert store.slide_ids == [] and list((tmp_path / "s").iterdir()) == []


def test_zarr_names_are_a_string_array_written_without_a_warning(tmp_path: Path) -> None:
    import json
    import warnings

    path = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr's UnstableSpecificationWarning among them
        with FeatureStore(path, mode="a") as store, store.writer("a", 4) as w:
            w.append(np.ones((2, 4)), np.zeros((2, 2)), ["a_0_0_0.jpg", "a_1_0_0.jpg"])
        pack_store(path, tmp_path / "p.zarr", format="zarr", progress=False)
        assert list(load_bags(tmp_path / "p.zarr").patch_files) == ["a_0_0_0.jpg", "a_1_0_0.jpg"]
    meta = json.loads((path / "a" / "patch_files" / "zarr.json").read_text())
    assert meta["data_type"] == "string" and meta["shape"] == [2]
    assert [c["name"] for c in meta["codecs"]][0] == "vlen-utf8"

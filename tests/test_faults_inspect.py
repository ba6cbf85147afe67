"""Fault suite, what a path is: `balnmp-mil inspect` (and every command that reads FEATURES)
says what it was given when that is not a feature store — a table, a slide, a folder of
slides, a run directory, an empty folder, one slide's feature file, a damaged pack — and what
to do on the command line (exit 2), never a traceback or advice to delete the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from _data import fast_args, make_tiny_cohort
from _faults import assert_refused, mil


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("inspect"), n_patients=20)


def _slide(tmp: Path) -> Path:
    from balnmp_cache.synthetic.tiff import write_pyramidal_tiff

    image = np.full((256, 256, 3), 220, np.uint8)
    return write_pyramidal_tiff(tmp / "a.tiff", image, mpp=0.5, levels=1, tile=256)


def _run(cohort, tmp: Path) -> Path:
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", tmp / "run", *fast_args(1))
    assert res.exit_code == 0, res.output
    return tmp / "run"


def _given(kind: str, cohort, tmp: Path) -> tuple[Path, list[str]]:
    """A path of `kind` and what the message must say about it."""
    if kind == "csv table":
        return Path(cohort.labels), ["is a table", "--labels"]
    if kind == "xlsx table":
        path = tmp / "t.xlsx"
        cohort.table.to_excel(path, index=False)
        return path, ["is a table", "--labels"]
    if kind == "slide":
        path = _slide(tmp)
        return path, ["is a slide", f"extract-features {path} --out"]
    if kind == "fake svs":
        path = tmp / "b.svs"
        path.write_bytes(b"II*\x00" + b"\x00" * 60)
        return path, ["is a slide", "extract-features"]
    if kind == "folder of slides":
        folder = tmp / "slides"
        folder.mkdir()
        shutil.copy(_slide(tmp), folder / "a.tiff")
        return folder, ["holds slides", "a.tiff", f"extract-features {folder} --out"]
    if kind == "run directory":
        run = _run(cohort, tmp)
        return run, ["is a balnmp-mil run directory", f"balnmp-mil inspect {cohort.features}"]
    if kind == "empty folder":
        (tmp / "empty").mkdir()
        return tmp / "empty", ["is an empty folder", "extract-features SLIDES --out"]
    if kind == "other files":
        (tmp / "notes").mkdir()
        (tmp / "notes" / "readme.txt").write_text("hello")
        return tmp / "notes", ["no feature files", "readme.txt"]
    if kind == "one slide's file":
        path = tmp / "3.h5"
        shutil.copy(Path(cohort.features) / "3.h5", path)
        return path, ["is the feature file of one slide", f"balnmp-mil inspect {tmp}"]
    if kind == "missing":
        return tmp / "nowhere", ["does not exist"]
    if kind == "damaged pack":
        pack = tmp / "cohort.h5"
        assert mil("pack", cohort.features, "--out", pack).exit_code == 0
        data = pack.read_bytes()
        pack.write_bytes(data[: len(data) // 2])
        return pack, ["damaged", f"balnmp-mil pack FEATURES --out {pack} --overwrite"]
    raise AssertionError(kind)


KINDS = ["csv table", "xlsx table", "slide", "fake svs", "folder of slides", "run directory",
         "empty folder", "other files", "one slide's file", "missing", "damaged pack"]


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_says_what_it_was_given(cohort, tmp_path, kind):
    path, patterns = _given(kind, cohort, tmp_path)
    assert_refused(mil("inspect", path), str(path), *patterns)


@pytest.mark.parametrize("kind", ["csv table", "slide", "empty folder", "run directory"])
@pytest.mark.parametrize("command", ["train", "predict"])
def test_features_that_are_not_a_store_get_the_same_message(cohort, tmp_path, kind, command):
    (tmp_path / "given").mkdir()
    path, patterns = _given(kind, cohort, tmp_path / "given")
    if command == "train":
        res = mil("train", path, "--labels", cohort.labels, "--task", "n0_vs_n+",
                  "--out", tmp_path / "r", *fast_args(1))
    else:
        run = _run(cohort, tmp_path) if kind != "run directory" else path
        res = mil("predict", run, path, "--out", tmp_path / "p.csv")
    assert_refused(res, f"FEATURES {path}", *patterns)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p.csv").exists()


def test_a_store_with_damaged_slides_lists_them_with_what_to_do(cohort, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(cohort.features, store)
    data = (store / "4.h5").read_bytes()
    (store / "4.h5").write_bytes(data[:100])
    res = mil("inspect", store)
    assert res.exit_code == 1, res.output
    assert "4.h5" in res.output and "Traceback" not in res.output

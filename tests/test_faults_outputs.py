"""Fault suite, outputs: no command deletes, replaces or writes inside what it reads.

Each case asserts the promise of the fault matrix: exit status 2, a message naming the path and
the command-line fix, no traceback, and every byte already written still there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _data import fast_args, make_tiny_cohort
from _faults import assert_refused, mil
from click.testing import CliRunner

from balnmp_mil.workflow import rundir


def digest(root: Path) -> dict[str, str]:
    """Every file below `root` (or `root` itself) with the sha256 of its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}



@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("faults"), n_patients=24)


@pytest.mark.parametrize("command", ["train", "cv"])
def test_overwrite_never_deletes_the_feature_store(cohort, command):
    before = digest(cohort.features)
    extra = ["--folds", "2"] if command == "cv" else []
    res = mil(command, cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", cohort.features, "--overwrite", *extra, *fast_args(1))
    assert_refused(res, f"--out {cohort.features} is FEATURES", "Choose an --out outside")
    assert digest(cohort.features) == before


@pytest.mark.parametrize("command", ["train", "cv"])
def test_overwrite_never_replaces_a_folder_that_is_not_a_run(cohort, tmp_path, command):
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("months of work")
    extra = ["--folds", "2"] if command == "cv" else []
    res = mil(command, cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", target, "--overwrite", *extra, *fast_args(1))
    assert_refused(res, "is not a balnmp-mil run directory", "chapter1.tex",
                   "choose another --out")
    assert (target / "chapter1.tex").read_text() == "months of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]  # no temp left


def test_run_inside_the_feature_store_is_refused(cohort):
    before = digest(cohort.features)
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", cohort.features / "run", *fast_args(1))
    assert_refused(res, "lies inside FEATURES")
    assert digest(cohort.features) == before


def test_overwrite_of_a_run_holding_the_labels_is_refused(cohort, tmp_path):
    out = tmp_path / "run"
    res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
              "--out", out, *fast_args(1))
    assert res.exit_code == 0, res.output
    labels = out / "my_labels.csv"
    labels.write_bytes(Path(cohort.labels).read_bytes())
    before = digest(out)
    res = mil("train", cohort.features, "--labels", labels, "--task", "n0_vs_n+",
              "--out", out, "--overwrite", *fast_args(1))
    assert_refused(res, "contains --labels")
    assert digest(out) == before


def test_overwrite_replaces_an_earlier_run(cohort, tmp_path):
    out = tmp_path / "run"
    for _ in range(2):
        res = mil("train", cohort.features, "--labels", cohort.labels, "--task", "n0_vs_n+",
                  "--out", out, "--overwrite", *fast_args(1))
        assert res.exit_code == 0, res.output
        assert rundir.is_run_dir(out)


def test_pack_never_lands_on_or_inside_its_store(cohort, tmp_path):
    before = digest(cohort.features)
    for out, fmt in ((cohort.features, "zarr"), (cohort.features / "cohort.h5", "h5"),
                     (cohort.features / "1.h5", "h5")):
        res = mil("pack", cohort.features, "--out", out, "--format", fmt, "--overwrite")
        assert_refused(res, "FEATURES", "Choose an --out outside")
    assert digest(cohort.features) == before


def test_pack_overwrite_replaces_only_a_pack(cohort, tmp_path):
    other = tmp_path / "notes.h5"
    other.write_bytes(b"not a pack")
    res = mil("pack", cohort.features, "--out", other, "--overwrite")
    assert_refused(res, "is not a balnmp pack", "choose another --out")
    assert other.read_bytes() == b"not a pack"
    pack = tmp_path / "cohort.h5"
    for _ in range(2):
        res = mil("pack", cohort.features, "--out", pack, "--overwrite")
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.h5", "notes.h5"]


def test_extraction_never_writes_into_its_slide_or_annotation_folders(tmp_path):
    from balnmp_cache.cli import main as extract_main

    slides, notes = tmp_path / "slides", tmp_path / "ann"
    for folder in (slides, notes):
        folder.mkdir()
    (slides / "a.svs").write_bytes(b"not read: refused before any work")
    before = digest(tmp_path)
    for out in (slides, slides / "features", notes / "f", tmp_path):
        res = CliRunner().invoke(extract_main, [str(slides), "--out", str(out),
                                                "--annotations", str(notes)])
        assert_refused(res, f"--out {out}", "Choose an --out outside")
    assert digest(tmp_path) == before

"""Fault suite, `extract-features` inputs and outputs: a message and exit 2, never a traceback.

Each case names the file at fault and the command-line fix; nothing already written is lost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _extract_helpers import fast_cli_args, tiny_cohort
from _mounts import tmpfs
from click.testing import CliRunner

from balnmp_cache.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=2)


def run(*args: object):  # noqa: ANN201
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_message(res, code: int, *needles: str) -> None:  # noqa: ANN001
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())
    for needle in needles:
        assert needle in text, text


def test_annotations_pointing_at_a_file(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    note = tmp_path / "1.json"
    note.write_text("{}")
    res = run(*fast_cli_args(cohort.slides_dir, tmp_path / "f"), "--annotations", note)
    assert_message(res, 2, "--annotations", str(note))
    assert not (tmp_path / "f").exists()


def test_mpp_overrides_with_a_bad_row_names_the_row_and_column(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    table = tmp_path / "mpp.csv"
    table.write_text("slide_id,mpp\n1,0.5\n2,abc\n")
    res = run(*fast_cli_args(cohort.slides_dir, tmp_path / "f"), "--mpp-overrides", table)
    assert_message(res, 2, "--mpp-overrides", str(table), "line 3", "mpp", "'abc'")


def test_mpp_overrides_without_its_columns(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    table = tmp_path / "mpp.csv"
    table.write_text("slide,resolution\n1,0.5\n")
    res = run(*fast_cli_args(cohort.slides_dir, tmp_path / "f"), "--mpp-overrides", table)
    assert_message(res, 2, str(table), "'slide_id' and 'mpp'")


def test_out_under_a_file(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    res = run(*fast_cli_args(cohort.slides_dir, blocker / "features"))
    assert_message(res, 2, str(blocker), "--out")
    assert blocker.read_text() == "not a folder"


def test_missing_out_parents_are_created(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "new" / "deeper" / "features"
    res = run(*fast_cli_args(cohort.slides_dir, out))
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["1.h5", "2.h5"]


@pytest.fixture
def read_only_dir(tmp_path: Path):  # noqa: ANN201
    with tmpfs(tmp_path / "ro", "ro,size=64k") as mount:
        yield mount


@pytest.mark.parametrize("name", ["features", "features.zarr"])
def test_a_read_only_out(cohort, read_only_dir: Path, name: str) -> None:  # noqa: ANN001
    fmt = ["--format", "zarr"] if name.endswith(".zarr") else []
    res = run(*fast_cli_args(cohort.slides_dir, read_only_dir / name), *fmt)
    assert_message(res, 2, "read-only", "--out")


def test_a_damaged_manifest_is_a_message(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "f"
    assert run(*fast_cli_args(cohort.slides_dir, out)).exit_code == 0
    (out / "manifest.csv").write_bytes(b"id,path,status\n1,\0\xff\xfe,done\n")
    res = run(*fast_cli_args(cohort.slides_dir, out))
    assert_message(res, 2, str(out / "manifest.csv"), "move it aside")


def test_a_lock_folder_that_is_a_file(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "f"
    out.mkdir()
    (out / ".locks").write_text("in the way")
    res = run(*fast_cli_args(cohort.slides_dir, out))
    assert_message(res, 2, str(out / ".locks"))


def test_a_slide_that_vanishes_during_the_job_fails_as_a_slide(cohort, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Listed, then deleted before its turn (a slide folder on a flaky mount): that slide
    fails at `open` (exit 1, named), the others are done."""
    import shutil

    import balnmp_cache.extract.job as job

    slides = tmp_path / "slides"
    shutil.copytree(cohort.slides_dir, slides)
    real = job.find_slides

    def find_then_lose(inputs):  # noqa: ANN001, ANN202
        found = real(inputs)
        (slides / "2.svs").unlink()
        return found

    monkeypatch.setattr(job, "find_slides", find_then_lose)
    res = run(*fast_cli_args(slides, tmp_path / "f"), "--skip-errors")
    assert_message(res, 1, "1 slide(s) failed: 2")
    assert (tmp_path / "f" / "1.h5").is_file()

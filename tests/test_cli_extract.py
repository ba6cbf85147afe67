"""`extract-features` command line: options, summary output and exit status (0 / 1 / 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _extract_helpers import fast_cli_args, tiny_cohort
from click.testing import CliRunner

from balnmp_cache.cli import main
from balnmp_cache.store import FeatureStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tiny_cohort(tmp_path_factory.mktemp("cohort"), n=1)


def _run(args: list[str]):  # noqa: ANN202
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_lists_the_design_options() -> None:
    res = _run(["--help"])
    assert res.exit_code == 0
    for opt in ("--out", "--encoder", "--weights", "--mpp", "--patch-size", "--annotations",
                "--format", "--device", "--precision", "--batch-size", "--num-workers",
                "--shard", "--skip-errors", "--overwrite", "--devices", "--qc",
                "--allow-unannotated", "--mpp-overrides", "--level", "--min-tissue",
                "--backend", "--tissue"):  # fmt: skip
        assert opt in res.output, opt


def test_success_prints_a_summary_and_exits_0(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    res = _run(fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir))
    assert res.exit_code == 0, res.output
    assert "1 slides: 1 done" in res.output
    assert FeatureStore(out).slide_ids == ["1"]
    again = _run(fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir))
    assert again.exit_code == 0 and "1 skipped" in again.output


def test_failed_slide_with_skip_errors_exits_1_listing_it(cohort, tmp_path: Path) -> None:  # noqa: ANN001
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cohort.slides_dir / "1.svs", slides / "1.svs")
    (slides / "bad.svs").write_bytes(b"nope")
    res = _run([*fast_cli_args(slides, tmp_path / "out"), "--skip-errors"])
    assert res.exit_code == 1
    assert "1 slide(s) failed: bad" in res.output
    assert FeatureStore(tmp_path / "out").slide_ids == ["1"]


def test_failed_slide_without_skip_errors_exits_1_naming_it(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "bad.svs").write_bytes(b"nope")
    res = _run(fast_cli_args(slides, tmp_path / "out"))
    assert res.exit_code == 1
    assert "slide 'bad'" in res.output and "--skip-errors" in res.output


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--shard", "3/2"], "shard"),
        (["--encoder", "resnet5000"], "unknown encoder"),
        (["--weights", "missing.pt"], "neither 'imagenet', 'none'"),
        (["--devices", "0,0"], "twice"),
        (["--precision", "fp8"], "fp8"),
    ],
)
def test_bad_usage_exits_2(cohort, tmp_path: Path, extra: list[str], needle: str) -> None:  # noqa: ANN001
    res = _run([*fast_cli_args(cohort.slides_dir, tmp_path / "out"), *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_folder_without_slides_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = _run(fast_cli_args(tmp_path / "empty", tmp_path / "out"))
    assert res.exit_code == 2 and "no slides found" in res.output

"""`extract-features` command line: options, summary output and exit status (0 / 1 / 2)."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _extract_helpers import fast_cli_args, tiny_cohort
from _mounts import tmpfs
from click.testing import CliRunner

from balnmp_cache._signals import Interrupted
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


def _raising(exc: BaseException):  # noqa: ANN202
    def run(*args: object, **kwargs: object) -> None:
        raise exc

    return run


@pytest.mark.parametrize(
    "exc,code,needle",
    [
        (KeyboardInterrupt(), 130, "interrupted: slides finished so far are kept"),
        (Interrupted(signal.SIGTERM), 143, "interrupted by SIGTERM: slides finished so far"),
        (Interrupted(signal.SIGINT), 130, "interrupted by SIGINT: slides finished so far"),
        (OSError(errno.ENOSPC, "No space left on device", "/x/1.h5"), 2, "/x/1.h5: the disk is full"),
        (OSError(errno.EROFS, "Read-only file system"), 2, "read-only: choose a writable --out"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), 2, "/x: permission denied"),
    ],
)
def test_interrupts_and_user_os_errors_have_their_own_status(
    cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int,  # noqa: ANN001
    needle: str,
) -> None:
    """Ctrl-C is not "some slides failed" (1); a full disk or an unwritable --out is a message."""
    monkeypatch.setattr("balnmp_cache.extract.job.run_extraction", _raising(exc))
    res = CliRunner().invoke(main, fast_cli_args(cohort.slides_dir, tmp_path / "out"))
    assert res.exit_code == code, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_a_bug_keeps_its_traceback(cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("balnmp_cache.extract.job.run_extraction", _raising(RuntimeError("bug")))
    res = CliRunner().invoke(main, fast_cli_args(cohort.slides_dir, tmp_path / "out"))
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)
    with pytest.raises(RuntimeError, match="bug"):  # not turned into a usage message
        _run(fast_cli_args(cohort.slides_dir, tmp_path / "out"))


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # noqa: ANN201
    """A 96 KiB tmpfs: room for the manifest and locks, not for a slide's features."""
    with tmpfs(tmp_path / "full", "size=96k") as mount:
        yield mount


@pytest.mark.parametrize("fmt,name", [("h5", "features"), ("zarr", "features.zarr")])
def test_a_full_disk_stops_the_job_with_a_message(cohort, tiny_tmpfs: Path, fmt: str,  # noqa: ANN001
                                                  name: str) -> None:  # fmt: skip
    """Disk full is not the slide's fault: not "slide failed" (1) for every slide, nor a
    traceback, nor (HDF5) a segfault at exit, but a message and exit 2; nothing left behind."""
    out = tiny_tmpfs / name
    (tiny_tmpfs / "filler").write_bytes(b"x" * (64 << 10))  # leave ~32 KiB
    args = [*fast_cli_args(cohort.slides_dir, out, cohort.annotations_dir), "--encoder",
            "resnet50", "--dtype", "float32", "--format", fmt]  # 2,048-d: ~8 KiB per patch
    proc = subprocess.run([sys.executable, "-m", "balnmp_cache.cli", *args], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the disk is full" in proc.stderr and "Traceback" not in proc.stderr
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no half-written slide

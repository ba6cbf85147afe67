"""`extract-features`: slides -> per-slide feature store (see docs/cli.md, docs/cluster.md).

The options are the fields of `ExtractOptions` (`extract/options.py`), turned into click
options there: their defaults, help texts, ranges and choices are declared once.
Exit status: 0 all slides done (or skipped), 1 some slides failed (listed), 2 bad usage or bad
input (a message naming the file or option; also a full disk, a read-only or missing output
folder, a store made with other settings), 128 + the signal when stopped by one (130 SIGINT
or Ctrl-C, 143 SIGTERM, 129 SIGHUP) after removing the job's temp files and locks. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from balnmp_cache._options_click import click_options
from balnmp_cache._version import __version__
from balnmp_cache.errors import BalnmpError
from balnmp_cache.extract.options import ExtractOptions

if TYPE_CHECKING:
    from balnmp_cache.extract.job import ExtractSummary

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130  # a signal: 128 + its number

# OS errors a user causes (and can fix) -> what to do about them on the command line.
USER_OS_ERRORS = {
    errno.ENOSPC: "the disk is full: free space or choose another --out, then rerun to resume",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out, then rerun "
                  "to resume",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "permission denied: choose a folder you may write (--out, --qc) or read",
    errno.EPERM: "operation not permitted: choose a folder you may write (--out, --qc)",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EEXIST: "a file is in the way of a folder: move it away, or choose another --out",
    errno.EISDIR: "is a folder where a file is needed: move it away, or choose another --out",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter --out",
}  # fmt: skip


@click.command(
    "extract-features",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit status: 0 all slides done or skipped, 1 some slides failed (listed), 2 bad "
           "usage or input (also a full disk, an unwritable --out, a store made with other "
           "settings), 130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM, e.g. a "
           "SLURM time limit); temp files and locks are removed, rerun to resume.",
)
@click.argument(
    "slides", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Feature store folder (one <slide_id>.h5 per slide) or a .zarr store.")
@click_options(ExtractOptions)
@click.option("--list-encoders", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _, value: _list_encoders(ctx) if value else None,
              help="Print every encoder (dimension, input, µm/px, pooling, precision, "
                   "licence) and exit.")
@click.version_option(__version__, prog_name="extract-features")
def main(slides: tuple[Path, ...], out: Path, **options: Any) -> None:
    """Encode every slide in SLIDE_OR_DIR... into per-slide patch embeddings under --out.

    Resumable: finished slides are skipped; several jobs (or a SLURM array) may share --out.
    """
    from balnmp_cache import _signals as signals

    try:
        with signals.handled():
            summary = _run(list(slides), out, options)
    except KeyboardInterrupt as exc:  # `signals.Interrupted`, or Ctrl-C before it is handled
        by = f" by {exc.name}" if isinstance(exc, signals.Interrupted) else ""
        click.echo(f"interrupted{by}: slides finished so far are kept in {out} (the slide being "
                   "written was discarded, its temp file and lock removed); rerun the same "
                   "command to resume", err=True)  # fmt: skip
        sys.exit(exc.exit_status if isinstance(exc, signals.Interrupted) else EXIT_INTERRUPTED)
    click.echo(summary.format())
    if summary.n_failed:
        names = ", ".join(r.slide_id for r in summary.failed)
        click.echo(f"{summary.n_failed} slide(s) failed: {names} (see {out}/manifest.csv)",
                   err=True)  # fmt: skip
        sys.exit(EXIT_FAILED)


def _list_encoders(ctx: click.Context) -> None:
    from balnmp_cache.encoders import format_encoder_table

    click.echo(format_encoder_table())
    ctx.exit(0)


def _run(slides: list[Path], out: Path, options: dict[str, Any]) -> ExtractSummary:
    """Check the options and run the job, mapping user errors to messages and exit statuses."""
    from balnmp_cache.extract.job import run_extraction
    from balnmp_cache.extract.slide_job import SlideFailure

    try:
        return run_extraction(slides, out, ExtractOptions(**options))
    except BalnmpError as exc:
        raise click.UsageError(str(exc)) from exc
    except SlideFailure as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        hint = USER_OS_ERRORS.get(exc.errno or 0)
        if hint is None:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{hint} ({exc.strerror or exc})", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()

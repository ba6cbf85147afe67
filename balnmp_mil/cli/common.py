"""What every `balnmp-mil` command shares: how errors and interruptions end the command.

Bad input is a `BalnmpError` (any `balnmp_mil.errors` class, the store's `StoreError`
included) or an OS error the user can fix (a missing file or folder, no permission, a full
disk or quota, a read-only file system) or an unreadable YAML file: it exits with status 2 and
one line, `Error: <message>`, naming the file, column or patient and the command-line fix.
Anything else is a bug and keeps its traceback (status 1). A signal (`balnmp_cache._signals`,
the rule both commands share) unwinds like an error, so a run's temporary folder is removed,
and exits with 128 + its number: 130 Ctrl-C, 143 SIGTERM (SLURM's time limit), 129 SIGHUP. Set
`BALNMP_DEBUG=1` to see the traceback of input errors too.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click
import yaml

from balnmp_cache._signals import Interrupted
from balnmp_cache.errors import BalnmpError

__all__ = ["EXIT_INTERRUPTED", "BadInput", "command_line_wording", "handle_input_errors",
           "input_message"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C that came before the handler was installed

# OS errors a user causes and can fix, with what to do (the file comes from the error).
USER_OS_ERRORS = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory; give a file",
    errno.EEXIST: "already exists; choose another --out",
    errno.EACCES: "permission denied; choose a path you may read and write",
    errno.EPERM: "operation not permitted; choose a path you may read and write",
    errno.EROFS: "read-only file system; choose a writable --out",
    errno.ENOSPC: "no space left on the device; free some space or choose another --out",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another --out",
    errno.ENAMETOOLONG: "file name too long; choose a shorter --out",
}

# balnmp_cache.store words its advice for Python callers; the command line's way to say it,
# used when the running command has that flag (else the advice is dropped).
STORE_ADVICE = (
    (", or pass on_problem='warn' to skip them", "--on-missing",
     ", or pass --on-missing warn to skip them"),
    (" (pass allow_mixed=True to combine them anyway)", "--allow-mixed",
     " (pass --allow-mixed to combine them anyway)"),
)


class BadInput(click.ClickException):
    """Printed as `Error: <message>`; exit status 2 like click's own usage errors."""

    exit_code = 2


def _flags(ctx: click.Context | None) -> set[str]:
    if ctx is None:
        return set()
    return {opt for p in ctx.command.params for opt in getattr(p, "opts", [])}


def command_line_wording(message: str, ctx: click.Context | None = None) -> str:
    """`message` with the store's Python advice put the command line's way (see
    `STORE_ADVICE`; dropped when the running command has no such flag)."""
    flags = _flags(ctx or click.get_current_context(silent=True))
    for python, flag, cli in STORE_ADVICE:
        message = message.replace(python, cli if flag in flags else "")
    return message


def input_message(exc: BaseException, ctx: click.Context | None = None) -> str | None:
    """The one-line message of an input error, or None when `exc` is not one (a bug)."""
    if isinstance(exc, BalnmpError):
        return command_line_wording(str(exc) or type(exc).__name__, ctx)
    if isinstance(exc, yaml.YAMLError):
        return f"cannot read YAML: {exc}"
    if isinstance(exc, OSError) and exc.errno in USER_OS_ERRORS:
        what = USER_OS_ERRORS[exc.errno]
        return f"{exc.filename}: {what}" if exc.filename else what
    return None


def handle_input_errors(func: F) -> F:
    """Turn input errors raised by the command into `BadInput` (exit 2) and interruptions
    into their exit statuses; anything else propagates with its traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt as exc:
            name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
            click.echo("interrupted (Ctrl-C)" if name == "SIGINT" else f"terminated ({name})",
                       err=True)  # fmt: skip
            raise click.exceptions.Exit(exc.exit_status if isinstance(exc, Interrupted)
                                        else EXIT_INTERRUPTED) from exc
        except (BalnmpError, OSError, yaml.YAMLError) as exc:
            message = input_message(exc, click.get_current_context(silent=True))
            if message is None or os.environ.get("BALNMP_DEBUG"):
                raise
            raise BadInput(message) from exc

    return cast(F, wrapper)

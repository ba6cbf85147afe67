"""`balnmp-mil`: train, cross-validate, evaluate, predict, pack, export and draw heatmaps on cached bags.

The commands only parse arguments; the work is in `balnmp_mil.workflow` (usable as a library).
Exit status: 0 ok, 1 unexpected failure, 2 bad usage or bad input (the message names the file,
column or patient), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP). A new command is a
click command in one of this folder's modules, registered in `COMMANDS` below; a command's module is imported only when the
command runs (or when help lists it), so `balnmp-mil pack` never loads torch.
"""

from __future__ import annotations

import warnings
from typing import Any, TextIO

import click

from balnmp_cache import _signals
from balnmp_cache._registry import Registry
from balnmp_cache._version import __version__
from balnmp_mil.cli.common import command_line_wording

COMMANDS: Registry[click.Command] = Registry("command")
for _name, _target in (
    ("train", "balnmp_mil.cli.train:train_cmd"),
    ("cv", "balnmp_mil.cli.train:cv_cmd"),
    ("evaluate", "balnmp_mil.cli.apply:evaluate_cmd"),
    ("predict", "balnmp_mil.cli.apply:predict_cmd"),
    ("heatmap", "balnmp_mil.cli.apply:heatmap_cmd"),
    ("pack", "balnmp_mil.cli.store:pack_cmd"),
    ("inspect", "balnmp_mil.cli.store:inspect_cmd"),
    ("export", "balnmp_mil.cli.store:export_cmd"),
    ("paper", "balnmp_mil.cli.paper:paper_group"),
):
    COMMANDS.register(_name, _target)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A user's warning as one line, `Warning: <message>` on stderr (the command-line way to
    say it); library deprecations keep Python's format."""
    if issubclass(category, DeprecationWarning) or not issubclass(category, UserWarning):
        text = warnings.formatwarning(message, category, filename, lineno, line)
    else:
        text = f"Warning: {command_line_wording(str(message))}\n"
    click.echo(text, file=file, err=True, nl=False)


class _Commands(click.Group):
    """A group whose commands come from `COMMANDS`, imported on first use; a signal unwinds
    like Ctrl-C (temporary files removed) and exits with its own status (`_signals.handled`,
    a no-op outside the main thread)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with _signals.handled(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return super().main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS.names())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return COMMANDS.get(cmd_name) if cmd_name in COMMANDS else None


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="balnmp-mil")
def main() -> None:
    """Attention-MIL on cached patch embeddings (stage 2 of balnmp)."""

"""`balnmp-mil`: train, cross-validate, evaluate, predict and draw heatmaps on cached bags.

The commands only parse arguments; the work is in `balnmp_mil.workflow*` (usable as a
library). Exit status: 0 ok, 1 unexpected failure, 2 bad usage or bad input (the message names
the file, column or patient). `pack` and `inspect` come from `balnmp_mil.cli_store`.
"""

from __future__ import annotations

import click

from balnmp_cache._version import __version__
from balnmp_mil.cli_eval import evaluate_cmd, heatmap_cmd, predict_cmd
from balnmp_mil.cli_train import cv_cmd, train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="balnmp-mil")
def main() -> None:
    """Attention-MIL on cached patch embeddings (stage 2 of balnmp)."""


for _command in (train_cmd, cv_cmd, evaluate_cmd, predict_cmd, heatmap_cmd):
    main.add_command(_command)


def _add_store_commands() -> None:
    """Register `pack` / `inspect` when balnmp_mil.cli_store is present."""
    try:
        from balnmp_mil.cli_store import inspect_cmd, pack_cmd
    except ImportError as exc:  # the store commands are optional for the rest of the CLI
        if exc.name not in ("balnmp_mil.cli_store", None):
            raise
        return
    main.add_command(pack_cmd, "pack")
    main.add_command(inspect_cmd, "inspect")


_add_store_commands()

if __name__ == "__main__":  # pragma: no cover
    main()

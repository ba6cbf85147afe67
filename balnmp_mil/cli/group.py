"""`balnmp-mil`: train, cross-validate, evaluate, predict, pack and draw heatmaps on cached bags.

The commands only parse arguments; the work is in `balnmp_mil.workflow` (usable as a library).
Exit status: 0 ok, 1 unexpected failure, 2 bad usage or bad input (the message names the file,
column or patient). A new command is a click command in one of this folder's modules, added to
`COMMANDS` below.
"""

from __future__ import annotations

import click

from balnmp_cache._version import __version__
from balnmp_mil.cli.apply import evaluate_cmd, heatmap_cmd, predict_cmd
from balnmp_mil.cli.store import inspect_cmd, pack_cmd
from balnmp_mil.cli.train import cv_cmd, train_cmd

COMMANDS = (train_cmd, cv_cmd, evaluate_cmd, predict_cmd, heatmap_cmd, pack_cmd, inspect_cmd)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="balnmp-mil")
def main() -> None:
    """Attention-MIL on cached patch embeddings (stage 2 of balnmp)."""


for _command in COMMANDS:
    main.add_command(_command)

"""`balnmp-mil paper`: what is specific to the BALNMP paper's code (`balnmp_mil.paper`).

`paper import CHECKPOINT --out RUN` makes a run of a released model; `paper splits
OFFICIAL_JSON_DIR --out DIR` writes the published splits and fixed bags. Registered in the main
group's `COMMANDS`; exit status 2 on bad input, the message naming the file. The options of
`import` are the fields of `ImportOptions` (`balnmp_mil.paper.importer`); only the positional
arguments, `--out` and `--overwrite` are written here (as `train`'s are).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from balnmp_cache._options_click import click_options
from balnmp_mil.cli.common import handle_input_errors
from balnmp_mil.paper.importer import ImportOptions

_PATH = click.Path(path_type=Path)


@click.group("paper")
def paper_group() -> None:
    """The BALNMP paper's released models, splits and bags (github.com/bupt-ai-cz/BALNMP)."""


@paper_group.command("import")
@click.argument("checkpoint", type=_PATH)
@click.option("--out", required=True, type=_PATH, help="Run directory to write.")
@click_options(ImportOptions)
@click.option("--overwrite", is_flag=True, help="Replace an earlier run directory "
                                                "(atomically); never another folder.")
@handle_input_errors
def import_cmd(checkpoint: Path, out: Path, overwrite: bool, **options: Any) -> None:
    """A released BALNMP model (the whole MILNetImageOnly or, with --clinical,
    MILNetWithClinicalData state dict) as a run directory.

    Extract features with its fine-tuned backbone (extract-features SLIDES --out FEATURES
    --encoder vgg16_bn --flatten --weights CHECKPOINT), then `balnmp-mil predict RUN
    FEATURES` and `balnmp-mil heatmap RUN SLIDE --features FEATURES` apply its head
    (with --clinical code/dataset/clinical_data/preprocessed-type-K.xlsx for a clinical one).
    """
    from balnmp_mil.paper.importer import import_checkpoint

    click.echo(import_checkpoint(checkpoint, out, overwrite=overwrite, **options).summary())


@paper_group.command("splits")
@click.argument("official_json_dir", type=_PATH)
@click.option("--out", required=True, type=_PATH,
              help="Folder for <task>.json (splits) and <task>.bags.json (fixed bags).")
@handle_input_errors
def splits_cmd(official_json_dir: Path, out: Path) -> None:
    """The paper's patient splits and fixed bags from the official {train,val,test}-type-K.json
    (K = 0..4: n0_vs_n+, n12_vs_n3, three_class, n0_vs_n12, n0_vs_n3)."""
    from balnmp_mil.paper.splits import import_splits

    for item in import_splits(official_json_dir, out):
        sizes = ", ".join(f"{part} {len(ids)}" for part, ids in item.split.parts().items())
        click.echo(f"{item.task}: {sizes} patients, {len(item.bags)} bags -> "
                   f"{out / (item.task + '.json')}, {out / (item.task + '.bags.json')}")

"""`balnmp-mil pack`, `inspect` and `export`: cohort packs, a store summary, peers' layouts.

Registered in the main group's `COMMANDS`. Exit status: 0 all good, 1 problems found
(inspect: each slide named), 2 bad input (message names the file). Given something that is
not a feature store (a table, a slide, a run directory, an empty folder, a damaged pack),
`inspect` says what it is and what to do (`balnmp_mil.workflow.diagnose`), with status 2.

Their options are the fields of `PackOptions`, `ExportOptions` (beside the store code they
drive) and `InspectOptions`, built by `balnmp_cache._options_click`; only FEATURES, `--out`
and `--overwrite`, the commands' targets, are written here (as `train`'s are).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from balnmp_cache._options import Flag, check_options, option
from balnmp_cache._options_click import click_options
from balnmp_cache.store import FeatureStore, SlideInfo, StoreError, load_bags
from balnmp_cache.store.export import ExportOptions
from balnmp_cache.store.pack import PackOptions
from balnmp_mil.cli.common import command_line_wording, handle_input_errors


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@click.command("pack")
@click.argument("features", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Pack to write: a .h5 file, or a .zarr directory with --format zarr.")
@click_options(PackOptions)
@click.option("--overwrite", is_flag=True, help="Replace an earlier pack (atomically); never "
                                                    "another file.")
@handle_input_errors
def pack_cmd(features: Path, out: Path, overwrite: bool, **options: Any) -> None:
    """Concatenate the per-slide files of FEATURES into one pack loadable in one read."""
    from balnmp_cache.store.pack import pack_store

    path = pack_store(features, out, overwrite=overwrite, **options)
    with FeatureStore(path) as pack:
        infos = [pack.info(s) for s in pack.slide_ids]
    n = sum(i.n_patches for i in infos)
    click.echo(f"packed {len(infos)} slides, {n} patches x {infos[0].feature_dim} "
               f"({infos[0].dtype}) -> {path} ({_size(path) / 1e6:.1f} MB)")


@click.command("export")
@click.argument("features", type=click.Path(path_type=Path))
@click_options(ExportOptions)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write (CLAM's feature folder, or TRIDENT's job folder).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export (atomically); never "
                                                    "another folder.")
@handle_input_errors
def export_cmd(features: Path, out: Path, overwrite: bool, **options: Any) -> None:
    """Write FEATURES in CLAM's or TRIDENT's own layout (float32), for their code to train on.

    See docs/format.md ("Exporting to CLAM and TRIDENT") for what each peer reads and how to
    point CLAM's main.py or TRIDENT's ABMIL tutorial at the folder.
    """
    from balnmp_cache.store.export import export_store

    click.echo(export_store(features, out, overwrite=overwrite, **options).summary())


@dataclass
class StoreSummary:
    """What `inspect` reports about a feature store or pack."""

    path: str
    format: str
    n_slides: int
    patches: list[int]
    feature_dims: list[int]
    dtypes: list[str]
    values: dict[str, list[str]]  # attribute -> distinct values (encoder, µm/px, ...)
    problems: list[str] = field(default_factory=list)
    named: int = 0  # slides that record each row's source file (`patch_files`)


SUMMARY_ATTRS = ("encoder", "weights", "target_mpp", "slide_mpp", "patch_size", "tissue")


def summarize(path: Path, check_features: bool = True) -> StoreSummary:
    """Metadata of every slide, plus (check_features) the problems `load_bags` would raise."""
    unreadable: list[str] = []
    infos: list[SlideInfo] = []
    with FeatureStore(path) as store:
        for sid in store.slide_ids:
            try:
                infos.append(store.info(sid))
            except StoreError as e:
                unreadable.append(str(e))
        problems = unreadable  # quick mode: metadata problems only
        if check_features:  # load_bags reports unreadable slides too, plus everything else
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    load_bags(store, on_problem="warn")
                    fatal = []
                except StoreError as e:
                    fatal = [str(e)]
            problems = [str(w.message) for w in caught] + fatal
        values = {}
        for key in SUMMARY_ATTRS:
            seen = sorted({repr(i.attrs.get(key)) for i in infos if i.attrs.get(key) is not None})
            values[key] = seen
        return StoreSummary(str(store.path), store.format, len(store.slide_ids),
                            [i.n_patches for i in infos], sorted({i.feature_dim for i in infos}),
                            sorted({str(i.dtype) for i in infos}), values, problems,
                            sum(i.has_patch_files for i in infos))  # fmt: skip


@dataclass(kw_only=True)
class InspectOptions:
    """The options of `inspect` (besides FEATURES); `--quick` is `summarize`'s
    `check_features=False`."""

    quick: bool = option(False, Flag(), help="Metadata only: skip reading features (NaN/Inf).")

    def __post_init__(self) -> None:
        check_options(self)


def _fmt(values: list[str]) -> str:
    return ", ".join(v.strip("'") for v in values) if values else "unknown"


@click.command("inspect")
@click.argument("features", type=click.Path(path_type=Path))
@click_options(InspectOptions)
@handle_input_errors
def inspect_cmd(features: Path, quick: bool) -> None:
    """Summarise a feature store or pack: slides, patches, dim, encoder, µm/px, problems."""
    from balnmp_mil.errors import InputError
    from balnmp_mil.workflow.diagnose import not_a_store

    message = not_a_store(features)
    if message is not None:
        raise InputError(message)
    s = summarize(features, check_features=not quick)
    if s.n_slides == 0:
        raise InputError(f"{s.path} is a {s.format} feature store without slides; "
                         f"extract-features SLIDES --out {s.path} writes them")
    n = np.asarray(s.patches, dtype=np.int64)
    click.echo(f"store:     {s.path} ({s.format})")
    click.echo(f"slides:    {s.n_slides}")
    if len(n):
        click.echo(f"patches:   total {int(n.sum())}; per slide min {int(n.min())} / median "
                   f"{float(np.median(n)):g} / max {int(n.max())}")
    click.echo(f"dim:       {_fmt([str(d) for d in s.feature_dims])}   dtype: {_fmt(s.dtypes)}")
    click.echo(f"encoder:   {_fmt(s.values['encoder'])}   weights: {_fmt(s.values['weights'])}")
    click.echo(f"µm/px:     target {_fmt(s.values['target_mpp'])}; "
               f"slides {_fmt(s.values['slide_mpp'])}")
    click.echo(f"patch:     {_fmt(s.values['patch_size'])} px   tissue: {_fmt(s.values['tissue'])}")
    if s.named:  # folders of patches: see docs/format.md, "Source file names"
        click.echo(f"names:     each patch's source file recorded for {s.named} of {s.n_slides} "
                   "slides")
    if not s.problems:
        click.echo("problems:  none" + (" (metadata only: --quick)" if quick else ""))
        return
    click.echo(f"problems:  {len(s.problems)}")
    for p in s.problems:
        click.echo(f"  - {command_line_wording(p)}")
    raise click.exceptions.Exit(1)

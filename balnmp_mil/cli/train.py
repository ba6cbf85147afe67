"""`balnmp-mil train` and `balnmp-mil cv`: argument parsing only.

Their options are the fields of `TrainConfig` / `CVConfig` (balnmp_mil.workflow.config), built
by `balnmp_mil.cli.options`; only `--config`, `--out` and `--overwrite` are the commands' own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from balnmp_mil.cli.common import BadInput, handle_input_errors
from balnmp_mil.cli.options import config_data, config_options
from balnmp_mil.workflow.config import CVConfig, TrainConfig, run_fields

F = TypeVar("F", bound=Callable[..., Any])


def run_options(func: F) -> F:
    """The options every run command has besides its config's: --config, --out, --overwrite."""
    func = click.option("--overwrite", is_flag=True, help=(
        "Replace an earlier run directory (atomically, after success); never a folder that "
        "is not a run."))(func)
    func = click.option("--out", type=click.Path(path_type=Path), required=True,
                        help="Run directory to create.")(func)
    return click.option("--config", type=click.Path(path_type=Path), help=(
        "YAML/JSON config (e.g. RUN/config.yaml); options given here override it."))(func)


def _data(ctx: click.Context, cls: type[TrainConfig], config: Path | None) -> tuple[dict, str]:
    data, source = config_data(ctx, run_fields(cls), config)
    if source == "command line" and data.get("features") is None:
        raise BadInput("missing FEATURES (a feature store or pack) or --config FILE")
    if source == "command line" and data.get("labels") is None:
        raise BadInput("missing --labels CSV (patient labels) or --config FILE")
    return data, source


@click.command("train")
@config_options(run_fields(TrainConfig), "train")
@run_options
@click.pass_context
@handle_input_errors
def train_cmd(ctx: click.Context, config: Path | None, out: Path, overwrite: bool,
              **_: Any) -> None:
    """Train one model on FEATURES and write the run directory OUT.

    Splits patients (stratified) into train/val/test, fits the clinical encoder on train only,
    trains with early stopping on val, evaluates every split at 0.5 and at the Youden threshold
    chosen on val, and writes config.yaml, model.pt + model.json, splits.json,
    predictions.csv, metrics.json, report.md, report.html, roc.png and history.csv.
    """
    from balnmp_mil.workflow import train_run

    cfg = TrainConfig.from_dict(*_data(ctx, TrainConfig, config))
    result = train_run(cfg, out, overwrite=overwrite, config=config)
    click.echo(result.summary())


@click.command("cv")
@config_options(run_fields(CVConfig), "cv")
@run_options
@click.pass_context
@handle_input_errors
def cv_cmd(ctx: click.Context, config: Path | None, out: Path, overwrite: bool,
           **_: Any) -> None:
    """K-fold cross-validation on FEATURES; prints a mean ± sd table and writes OUT.

    Each fold's test patients are never seen in training; per setting (image-only,
    image + clinical, clinical-only logistic regression) the table shows test AUC and
    threshold metrics as mean ± sd over folds. Writes cv.csv, predictions.csv, metrics.json,
    report.md, report.html, roc.png, splits.json and config.yaml.
    """
    from balnmp_mil.workflow import cv_run

    cfg = CVConfig.from_dict(*_data(ctx, CVConfig, config))
    result = cv_run(cfg, out, overwrite=overwrite, config=config)
    click.echo(result.summary())

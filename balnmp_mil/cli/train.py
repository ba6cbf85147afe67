"""`balnmp-mil train` and `balnmp-mil cv`: argument parsing only (see balnmp_mil.workflow.config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from balnmp_mil.cli.common import (
    BadInput,
    handle_input_errors,
    merge_config,
    parse_model_args,
    split_list,
)

TASK_HELP = (
    "ALN task: n0_vs_n+, n12_vs_n3, three_class, n0_vs_n12 or n0_vs_n3 "
    "(default: use the labels table's `label` column as is)."
)
# Options shared by train and cv, in help order; names match TrainConfig fields.
_SHARED: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--labels",), dict(type=click.Path(path_type=Path),
                         help="Labels CSV/XLSX: patient_id (or BCNB `Patient ID`) and `label` "
                              "or `ALN status`; optional slide_id column.")),
    (("--clinical",), dict(type=click.Path(path_type=Path),
                           help="Clinical table (BCNB columns); may be the labels file.")),
    (("--clinical-variant",), dict(type=click.Choice(["full", "paper5"]),
                                   help="Clinical encoding: full (default) or the paper's 5 "
                                        "features.")),
    (("--clinical-impute/--no-clinical-impute",), dict(
        default=None, help="Fill missing clinical values with training medians / modes "
                           "instead of failing.")),
    (("--task",), dict(help=TASK_HELP)),
    (("--seed",), dict(type=int, help="Seed of the split, initialisation and bootstrap [0].")),
    (("--epochs",), dict(type=int, help="Training epochs [FitConfig default].")),
    (("--lr",), dict(type=float, help="Learning rate.")),
    (("--weight-decay",), dict(type=float, help="AdamW/Adam weight decay.")),
    (("--bags-per-step",), dict(type=int, help="Bags per optimisation step.")),
    (("--instances-per-bag",), dict(type=int, help="Sample at most this many patches per bag "
                                                   "in training.")),
    (("--patience",), dict(type=int, help="Early-stopping patience in epochs (on val).")),
    (("--monitor",), dict(type=click.Choice(["auc", "loss"]),
                          help="Validation metric that picks the kept epoch [auc].")),
    (("--optimizer",), dict(type=click.Choice(["adam", "adamw", "sgd"]),
                            help="Optimiser [adam].")),
    (("--schedule",), dict(type=click.Choice(["cosine", "constant"]),
                           help="Learning-rate schedule [cosine].")),
    (("--val",), dict(type=float, help="Validation fraction of patients [0.15].")),
    (("--bag-level",), dict(type=click.Choice(["patient", "slide"]),
                            help="One bag per patient (default) or per slide.")),
    (("--on-missing",), dict(type=click.Choice(["error", "warn"]),
                             help="Labelled slides absent from FEATURES: fail (default) or skip "
                                  "with a warning.")),
    (("--device",), dict(help="torch device, e.g. cuda, cuda:1, cpu [cuda when available].")),
    (("--model-arg",), dict(multiple=True, metavar="KEY=VALUE",
                            help="Extra build_model argument (repeatable), e.g. hidden=128.")),
    (("--ci",), dict(type=click.Choice(["bootstrap", "delong"]), help="AUC CI method.")),
    (("--n-bootstrap",), dict(type=int, help="Bootstrap resamples for the AUC CI [1000].")),
    (("--config",), dict(type=click.Path(path_type=Path),
                         help="YAML/JSON config (e.g. RUN/config.yaml); options given here "
                              "override it.")),
    (("--out",), dict(type=click.Path(path_type=Path), required=True,
                      help="Run directory to create.")),
    (("--overwrite",), dict(is_flag=True, help="Replace an earlier run directory "
                                                "(atomically, after success); never a folder "
                                                "that is not a run.")),
]
SHARED_NAMES = ["features", "labels", "clinical", "clinical_variant", "clinical_impute", "task",
                "seed", "epochs", "lr", "weight_decay", "bags_per_step", "instances_per_bag",
                "patience", "monitor", "optimizer", "schedule", "val", "bag_level", "on_missing",
                "device", "model_arg", "ci", "n_bootstrap"]
CV_NAMES = ["folds", "models", "compare"]


def shared_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Apply the options common to train and cv (and the FEATURES argument)."""
    for decls, attrs in reversed(_SHARED):
        func = click.option(*decls, **attrs)(func)
    return click.argument("features", required=False, type=click.Path(path_type=Path))(func)


def _config_data(ctx: click.Context, names: list[str], config: Path | None
                 ) -> tuple[dict[str, Any], str]:
    """Config file + explicit options, with --model-arg folded into model_kwargs."""
    data, source = merge_config(ctx, names, config)
    if "model_arg" in data:
        data["model_kwargs"] = {**(data.get("model_kwargs") or {}),
                                **parse_model_args(tuple(data.pop("model_arg")))}
    if source == "command line" and data.get("features") is None:
        raise BadInput("missing FEATURES (a feature store or pack) or --config FILE")
    if source == "command line" and data.get("labels") is None:
        raise BadInput("missing --labels CSV (patient labels) or --config FILE")
    return data, source


@click.command("train")
@shared_options
@click.option("--model", help="Registered MIL model, e.g. abmil [abmil].")
@click.option("--clinical-only/--no-clinical-only", default=None,
              help="Fit the clinical-only logistic-regression baseline instead of a MIL model.")
@click.option("--test", type=float, help="Test fraction of patients [0.2].")
@click.option("--splits", type=click.Path(path_type=Path),
              help="Reuse a saved split (splits.json of an earlier run).")
@click.pass_context
@handle_input_errors
def train_cmd(ctx: click.Context, config: Path | None, out: Path, overwrite: bool,
              **_: Any) -> None:
    """Train one model on FEATURES and write the run directory OUT.

    Splits patients (stratified) into train/val/test, fits the clinical encoder on train only,
    trains with early stopping on val, evaluates every split at 0.5 and at the Youden threshold
    chosen on val, and writes config.yaml, model.pt + model.json, splits.json,
    predictions.csv, metrics.json, report.md, roc.png and history.csv.
    """
    from balnmp_mil.workflow import TrainConfig, train_run

    names = [*SHARED_NAMES, "model", "clinical_only", "test", "splits"]
    data, source = _config_data(ctx, names, config)
    cfg = TrainConfig.from_dict(data, source=source)
    result = train_run(cfg, out, overwrite=overwrite)
    click.echo(result.summary())


@click.command("cv")
@shared_options
@click.option("--folds", type=int, help="Number of folds [5].")
@click.option("--models", help="Comma-separated MIL models [abmil].")
@click.option("--compare", help="Comma-separated settings among image, image+clinical, "
                                "clinical [all three with --clinical, else image].")
@click.pass_context
@handle_input_errors
def cv_cmd(ctx: click.Context, config: Path | None, out: Path, overwrite: bool,
           **_: Any) -> None:
    """K-fold cross-validation on FEATURES; prints a mean ± sd table and writes OUT.

    Each fold's test patients are never seen in training; per setting (image-only,
    image + clinical, clinical-only logistic regression) the table shows test AUC and
    threshold metrics as mean ± sd over folds. Writes cv.csv, predictions.csv, metrics.json,
    report.md, roc.png, splits.json and config.yaml.
    """
    from balnmp_mil.workflow import CVConfig, cv_run

    data, source = _config_data(ctx, [*SHARED_NAMES, *CV_NAMES], config)
    for key in ("models", "compare"):
        if isinstance(data.get(key), str):
            data[key] = split_list(data[key])
    cfg = CVConfig.from_dict(data, source=source)
    result = cv_run(cfg, out, overwrite=overwrite)
    click.echo(result.summary())

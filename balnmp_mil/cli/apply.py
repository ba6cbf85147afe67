"""`balnmp-mil evaluate | predict | heatmap`: argument parsing only (see balnmp_mil.workflow).

Their options (and FEATURES, SLIDE) are the fields of `EvaluateOptions` / `PredictOptions`
(`balnmp_mil.workflow.apply_options`) and `HeatmapOptions`
(`balnmp_mil.workflow.heatmap_options`); only RUN and `--out`, the commands' targets, are
written here (as `train`'s `--out` is). Options that a run also has (`--ci`, `--n-bootstrap`,
`--device`, `--on-missing`, `--allow-mixed`) come from their `TrainConfig` declarations; left
out, the run's own value.
`--allow-store-mismatch` too, but it is never saved with a run: left out, it is off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from balnmp_cache._options_click import click_options
from balnmp_mil.cli.common import handle_input_errors
from balnmp_mil.cli.options import option_of
from balnmp_mil.workflow.apply_options import EvaluateOptions, PredictOptions
from balnmp_mil.workflow.config import TrainConfig
from balnmp_mil.workflow.heatmap_options import COHORT_OPTIONS, HeatmapOptions

F = TypeVar("F", bound=Callable[..., Any])

_PATH = click.Path(path_type=Path)
_RUN = click.argument("run", type=_PATH)


def _run_options(*names: str) -> Callable[[F], F]:
    """The options `names` as `train` declares them; left out, the run's value is used
    (the device: cuda when available)."""

    def deco(func: F) -> F:
        for name in reversed(names):
            shown = {"device": "cuda when available", "allow_store_mismatch": "off"}.get(
                name, "the run's")
            func = option_of(TrainConfig, name, default_text=shown)(func)
        return func

    return deco


@click.command("evaluate")
@_RUN
@click_options(EvaluateOptions)
@_run_options("ci", "n_bootstrap", "device", "on_missing", "allow_mixed",
              "allow_store_mismatch")
@click.option("--out", type=_PATH, help="Also write the metrics as JSON here (atomically).")
@handle_input_errors
def evaluate_cmd(run: Path, features: Path | None, labels: Path | None, clinical: Path | None,
                 out: Path | None, device: str | None, **overrides: Any) -> None:
    """Recompute the metrics of the saved run RUN, or evaluate it on new data.

    Without --features: from RUN/predictions.csv (train/val/test at 0.5 and at the Youden
    threshold chosen on val). With --features and --labels: the run's model (and clinical
    encoder) on new patients, at 0.5 and at the run's Youden threshold.
    """
    from balnmp_cache.store._atomic import check_output
    from balnmp_mil.errors import InputError
    from balnmp_mil.workflow.apply import evaluate_run
    from balnmp_mil.workflow.rundir import write_file, write_json

    if out is not None:
        check_output(out, [("RUN", run), ("--features", features), ("--labels", labels),
                           ("--clinical", clinical)], InputError)
    result = evaluate_run(run, features, labels, clinical, device=device, **overrides)
    click.echo(result.summary(), nl=False)
    if out is not None:
        write_file(out, lambda tmp: write_json(tmp, result.metrics))
        click.echo(f"metrics: {out}")


@click.command("predict")
@_RUN
@click.option("--out", type=_PATH, required=True, help="Predictions CSV to write.")
@click_options(PredictOptions)
@_run_options("device", "on_missing", "allow_mixed", "allow_store_mismatch")
@handle_input_errors
def predict_cmd(run: Path, features: Path, out: Path, labels: Path | None,
                clinical: Path | None, device: str | None, **overrides: Any) -> None:
    """Predict with the saved run RUN on the bags of FEATURES; write a CSV.

    Columns: patient_id, [label], prob_<class>..., prediction (class at threshold 0.5).
    Without --labels every slide is its own patient.
    """
    from balnmp_mil.workflow.apply import predict_run

    frame = predict_run(run, features, out, labels=labels, clinical=clinical, device=device,
                        **overrides)
    click.echo(f"{len(frame)} patients -> {out}")


@click.command("heatmap")
@_RUN
@click.option("--out", type=_PATH, required=True,
              help="PNG to write (with --slides: the folder to write into).")
@click_options(HeatmapOptions)
@_run_options("allow_store_mismatch")
@handle_input_errors
def heatmap_cmd(run: Path, out: Path, allow_store_mismatch: bool | None, **kwargs: Any) -> None:
    """Draw what the saved run RUN looked at on SLIDE, over its thumbnail (PNG).

    The map is the attention, or for models without one (mean, max) each patch's instance
    score (the class probability of the patch alone). The slide's bag is read from the run's
    feature store (or --features) by slide id (file name without extension); the top-k
    patches are shown as a gallery read from the slide. --geojson also writes the patches as
    QuPath tiles (File > Import objects, then Measure > Show measurement maps).

    With --slides DIR instead of SLIDE: every slide of DIR with a bag in the store (or of
    --split) in parallel, OUT/<slide>.png and .geojson each, and OUT/index.md + index.csv.
    Slides that fail are listed there and the others go on; the exit status is then 1
    (2 for an error that stops everything). Only this command opens slides.
    """
    from balnmp_mil.errors import InputError

    mismatch = bool(allow_store_mismatch)
    slide = kwargs.pop("slide")
    cohort = {name: kwargs.pop(name) for name in COHORT_OPTIONS}
    slides = cohort.pop("slides")
    if slides is not None:
        if any(v is not None for v in (slide, kwargs["patient"], kwargs["geojson_out"])):
            raise InputError("--slides draws a folder: leave out SLIDE, --patient and "
                             "--geojson (each slide gets OUT/<slide id>.geojson)")
        from balnmp_mil.workflow.heatmap_cohort import heatmap_cohort

        del kwargs["patient"], kwargs["geojson_out"]
        result = heatmap_cohort(run, slides, out, allow_store_mismatch=mismatch, **cohort,
                                **kwargs)
        click.echo(result.summary())
        if result.failed:
            raise click.exceptions.Exit(1)
        return
    if slide is None:
        raise InputError("give SLIDE, or --slides DIR for a folder of slides")
    if cohort["split"] is not None or cohort["jobs"] is not None:
        raise InputError("--split and --jobs go with --slides DIR")
    from balnmp_mil.workflow.heatmap import heatmap_run

    res = heatmap_run(run, slide, out, allow_store_mismatch=mismatch, **kwargs)
    click.echo(res.summary())

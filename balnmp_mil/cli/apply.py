"""`balnmp-mil evaluate | predict | heatmap`: argument parsing only (see balnmp_mil.workflow).

Options that a run also has (`--ci`, `--n-bootstrap`, `--device`, `--on-missing`,
`--allow-mixed`) come from their `TrainConfig` declarations; left out, the run's own value.
`--allow-store-mismatch` too, but it is never saved with a run: left out, it is off.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from balnmp_mil.cli.common import handle_input_errors
from balnmp_mil.cli.options import option_of
from balnmp_mil.workflow.config import TrainConfig

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
@click.option("--features", type=_PATH, help="Evaluate on this feature store instead.")
@click.option("--labels", type=_PATH, help="Labels of the new patients (with --features).")
@click.option("--clinical", type=_PATH, help="Clinical table of the new patients (clinical "
                                             "runs; default: the run's table).")
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
@click.argument("features", type=_PATH)
@click.option("--out", type=_PATH, required=True, help="Predictions CSV to write.")
@click.option("--labels", type=_PATH, help="Optional labels table: groups slides by patient "
                                           "(patient_id, slide_id) and adds the true label.")
@click.option("--clinical", type=_PATH, help="Clinical table (runs trained with clinical "
                                             "data; default: the run's table).")
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
@click.argument("slide", type=_PATH)
@click.option("--out", type=_PATH, required=True, help="PNG to write.")
@click.option("--features", type=_PATH, help="Feature store holding SLIDE [the run's].")
@click.option("--patient", help="Patient id of SLIDE for clinical runs [the slide id].")
@click.option("--clinical", type=_PATH, help="Clinical table [the run's].")
@click.option("--top-k", type=int, default=8, show_default=True, help="Patches in the gallery.")
@click.option("--thumbnail-size", type=int, default=2048, show_default=True,
              help="Longest side of the thumbnail, px.")
@click.option("--backend", default="auto", show_default=True,
              help="Slide reader: auto, cucim, openslide, image, patches.")
@click.option("--mpp", type=float, help="Level-0 µm/px when the slide does not record it.")
@click.option("--patch-size-level0", type=float,
              help="Side of a patch in level-0 px, for stores that do not record it (CLAM "
                   "h5_files without patches/).")
@_run_options("allow_store_mismatch")
@handle_input_errors
def heatmap_cmd(run: Path, slide: Path, out: Path, features: Path | None, patient: str | None,
                clinical: Path | None, top_k: int, thumbnail_size: int, backend: str,
                mpp: float | None, patch_size_level0: float | None,
                allow_store_mismatch: bool | None) -> None:
    """Draw the attention of the saved run RUN on SLIDE over its thumbnail (PNG).

    The slide's bag is read from the run's feature store (or --features) by slide id (file
    name without extension); the top-k patches are shown as a gallery read from the slide.
    Only this command opens slides (balnmp_cache.slides, imported on use).
    """
    from balnmp_mil.workflow.heatmap import heatmap_run

    result = heatmap_run(run, slide, out, features=features, patient=patient,
                         clinical=clinical, top_k=top_k, thumbnail_size=thumbnail_size,
                         backend=backend, mpp=mpp, patch_size_level0=patch_size_level0,
                         allow_store_mismatch=bool(allow_store_mismatch))
    click.echo(result.summary())

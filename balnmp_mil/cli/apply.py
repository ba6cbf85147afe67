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
@click.argument("slide", type=_PATH, required=False)
@click.option("--out", type=_PATH, required=True,
              help="PNG to write (with --slides: the folder to write into).")
@click.option("--geojson", "geojson_out", type=_PATH,
              help="Also write QuPath GeoJSON here: one tile per patch with its attention, "
                   "attention rank and instance score, the tissue outline and the tumour "
                   "annotations (always written with --slides).")
@click.option("--slides", type=_PATH, help="A folder of slides: draw every slide of the "
                                           "run's cohort found there (SLIDE left out).")
@click.option("--split", type=click.Choice(["train", "val", "test"]),
              help="With --slides: only this split's slides (every fold's for a cv run).")
@click.option("--jobs", type=click.IntRange(min=1),
              help="With --slides: slides drawn at once [the CPUs available].")
@click.option("--progress/--no-progress", default=None,
              help="With --slides: a progress bar [on a terminal].")
@click.option("--features", type=_PATH, help="Feature store holding SLIDE [the run's].")
@click.option("--annotations", type=_PATH,
              help="Tumour annotations for the GeoJSON: a file, or a folder of <slide "
                   "id>.json|.geojson [the folder the store was extracted with]. For "
                   "features of BCNB's paper_patches drawn on WSIs/<id>.jpg: the region "
                   "file that places the patches [<id>.json beside SLIDE].")
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
def heatmap_cmd(run: Path, slide: Path | None, out: Path, slides: Path | None,
                split: str | None, jobs: int | None, progress: bool | None,
                patient: str | None, allow_store_mismatch: bool | None,
                **kwargs: Any) -> None:
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
    if slides is not None:
        if slide is not None or patient is not None or kwargs["geojson_out"] is not None:
            raise InputError("--slides draws a folder: leave out SLIDE, --patient and "
                             "--geojson (each slide gets OUT/<slide id>.geojson)")
        from balnmp_mil.workflow.heatmap_cohort import heatmap_cohort

        kwargs.pop("geojson_out")
        result = heatmap_cohort(run, slides, out, split=split, jobs=jobs, progress=progress,
                                allow_store_mismatch=mismatch, **kwargs)
        click.echo(result.summary())
        if result.failed:
            raise click.exceptions.Exit(1)
        return
    if slide is None:
        raise InputError("give SLIDE, or --slides DIR for a folder of slides")
    if split is not None or jobs is not None:
        raise InputError("--split and --jobs go with --slides DIR")
    from balnmp_mil.workflow.heatmap import heatmap_run

    res = heatmap_run(run, slide, out, patient=patient, allow_store_mismatch=mismatch, **kwargs)
    click.echo(res.summary())

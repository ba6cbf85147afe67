"""The data options of `balnmp-mil evaluate` and `predict`, declared once
(`balnmp_cache._options`): what to apply a saved run to.

The commands build their options from these fields; `evaluate_run` and `predict_run` take them
as keywords with the same defaults. The run options both commands can override (`--device`,
`--on-missing`, ...) are `TrainConfig`'s own fields; RUN and `--out` are the commands' targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from balnmp_cache._options import Text, check_options, option

__all__ = ["EvaluateOptions", "PredictOptions"]


@dataclass(kw_only=True)
class EvaluateOptions:
    """New data to evaluate a run on (none: the run's own predictions.csv)."""

    features: str | Path | None = option(None, Text(), path=True,
                                  help="Evaluate on this feature store instead.")
    labels: str | Path | None = option(None, Text(), path=True,
                                help="Labels of the new patients (with --features).")
    clinical: str | Path | None = option(None, Text(), path=True, help=(
        "Clinical table of the new patients (clinical runs; default: the run's table)."))

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(kw_only=True)
class PredictOptions:
    """The bags to predict on, and what groups and labels them."""

    features: str | Path = option(check=Text(), argument=True, path=True,
                           help="Feature store or pack to predict on.")
    labels: str | Path | None = option(None, Text(), path=True, help=(
        "Optional labels table: groups slides by patient (patient_id, slide_id) and adds the "
        "true label."))
    clinical: str | Path | None = option(None, Text(), path=True, help=(
        "Clinical table (runs trained with clinical data; default: the run's table)."))

    def __post_init__(self) -> None:
        check_options(self)

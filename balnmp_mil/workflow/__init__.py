"""Workflows behind `balnmp-mil`: a run is a config in, a run directory out.

`config` declares what defines a run; `steps` are the pieces `train` and `cv` share; `apply`
evaluates and predicts with a saved run; `heatmap` draws its attention on a slide (and
`geojson` writes it for QuPath), `heatmap_cohort` on every slide of a folder; `rundir`
writes and reads run directories atomically; `compat` checks a store against the record of
the store a run was trained on; `diagnose` says what a path that is not a store is.
"""

from __future__ import annotations

from balnmp_mil.errors import InputError, RunDirError
from balnmp_mil.workflow.apply import EvalResult, evaluate_run, predict_run
from balnmp_mil.workflow.config import CVConfig, TrainConfig
from balnmp_mil.workflow.cv import CVResult, cv_run
from balnmp_mil.workflow.heatmap import HeatmapResult, heatmap_run
from balnmp_mil.workflow.heatmap_cohort import CohortHeatmaps, heatmap_cohort
from balnmp_mil.workflow.rundir import Run, load_run
from balnmp_mil.workflow.train import RunResult, train_run

__all__ = [
    "CVConfig",
    "CVResult",
    "CohortHeatmaps",
    "EvalResult",
    "HeatmapResult",
    "InputError",
    "Run",
    "RunDirError",
    "RunResult",
    "TrainConfig",
    "cv_run",
    "evaluate_run",
    "heatmap_cohort",
    "heatmap_run",
    "load_run",
    "predict_run",
    "train_run",
]

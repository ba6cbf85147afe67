"""`balnmp-mil heatmap RUN --slides DIR --out DIR`: every slide of a run's cohort (or of one
split) drawn in parallel, one PNG + one GeoJSON per slide, and an index.

The slides are the files (or slide folders) of DIR whose slide id has a bag in the run's
feature store (or `--features`); with `split`, only the slides of that split's patients (the
run's `splits.json`; for a cross-validation run, that part of every fold, so `test` is every
patient once). A slide of the selection with no file in DIR, or whose heatmap fails, is listed
in the index with its error; the others go on. `index.md` and `index.csv` (slide_id, status,
n_patches, probabilities, png, geojson, error) and `index.html` (the run's `report.html` with
each patient's heatmaps linked, and the failures) are written last, and atomically.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balnmp_cache.slides.ids import SLIDE_SUFFIXES, is_slide_folder
from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of
from balnmp_cache.store._atomic import check_output
from balnmp_mil.errors import InputError
from balnmp_mil.workflow import rundir
from balnmp_mil.workflow.heatmap_index import INDEX_HTML, INDEX_MD, write_index
from balnmp_mil.workflow.heatmap_options import HeatmapOptions


@dataclass
class CohortHeatmaps:
    """Per slide: a `HeatmapResult` (drawn) or an error message (failed)."""

    out: Path
    drawn: list[Any] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.drawn)} slides drawn, {len(self.failed)} failed -> "
                 f"{self.out / INDEX_MD}"]
        lines += [f"  failed {sid}: {err}" for sid, err in self.failed.items()]
        return "\n".join(lines)


def slide_patients(run: rundir.Run) -> dict[str, str]:
    """Slide id -> patient id from the run's labels table when it has a slide column (else
    empty: a slide id is its patient id)."""
    from balnmp_mil.data.labels import PATIENT_COLUMNS, SLIDE_COLUMNS, find_column, normalize_id
    from balnmp_mil.data.tables import read_table

    labels = run.config.get("labels")
    if not labels or not Path(labels).is_file():
        return {}
    table = read_table(labels, "labels file")
    slide_col = find_column(table, *SLIDE_COLUMNS, required=False)
    if slide_col is None:
        return {}
    pid = table[find_column(table, *PATIENT_COLUMNS)].map(normalize_id)
    return {str(s): p for s, p in zip(table[slide_col], pid, strict=True)}


def split_patients(run: rundir.Run, split: str) -> set[str]:
    """Patient ids of `split`: that part of the run's split, of every fold's for a
    cross-validation run."""
    if run.splits is None:
        raise InputError(f"run {run.path} has no {rundir.SPLITS}; leave out --split")
    folds = run.splits if isinstance(run.splits, list) else [run.splits]
    if split not in folds[0].parts():
        raise InputError(f"--split {split}: a run's splits are train, val and test")
    return {p for fold in folds for p in fold.parts()[split]}


def slide_files(slides_dir: Path) -> dict[str, Path]:
    """Slide id -> file (or slide folder) in `slides_dir`, first in name order."""
    if not slides_dir.is_dir():
        raise InputError(f"--slides {slides_dir} is not a folder of slides")
    found: dict[str, Path] = {}
    for path in sorted(slides_dir.iterdir()):
        is_slide = (path.is_file() and path.name.lower().endswith(SLIDE_SUFFIXES)) or (
            path.is_dir() and is_slide_folder(path))
        if is_slide:
            found.setdefault(slide_id_of(path), path)
    return found


def store_slides(store: Path) -> list[str]:
    from balnmp_cache.store import FeatureStore
    from balnmp_mil.workflow.diagnose import check_store_path

    check_store_path(store)
    with FeatureStore(store) as fs:
        return list(fs.slide_ids)


def _one(args: tuple[Any, ...]) -> tuple[str, Any, str | None]:
    """Worker: one slide's heatmap; its error as a message, never raised."""
    from balnmp_cache.errors import BalnmpError
    from balnmp_mil.workflow.heatmap import heatmap_run

    sid, slide, png, gj, kwargs = args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sid, heatmap_run(kwargs.pop("run"), slide, png, geojson_out=gj, **kwargs), None
    except (BalnmpError, OSError) as exc:
        return sid, None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one slide's failure must not stop the cohort
        return sid, None, f"{type(exc).__name__}: {exc}"


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # the pool gives the parallelism


def heatmap_cohort(run_path: str | Path, slides: str | Path, out: str | Path,
                   split: str | None = None, jobs: int | None = None,
                   progress: bool | None = None, features: str | Path | None = None,
                   **kwargs: Any) -> CohortHeatmaps:
    """Draw every selected slide (see the module docstring) in a pool of `jobs` processes
    (default: the CPUs this process may use); `kwargs` go to `heatmap_run`. The options are
    checked as `HeatmapOptions` first, so a bad one fails once, not on every slide."""
    HeatmapOptions(slides=slides, split=split, jobs=jobs, progress=progress, features=features,
                   **{k: v for k, v in kwargs.items() if k != "allow_store_mismatch"})
    run = rundir.load_run(run_path, device="cpu")
    out = Path(out)
    check_output(out, [("RUN", run_path), ("--slides", slides), ("--features", features)],
                 InputError)
    store = Path(features or run.config.get("features") or "")
    if not store.exists():
        raise InputError(f"feature store {store} does not exist; pass --features")
    wanted = store_slides(store)
    patients = slide_patients(run)
    if split is not None:
        chosen = split_patients(run, split)
        wanted = [s for s in wanted if patients.get(s, s) in chosen]
    files = slide_files(Path(slides))
    result = CohortHeatmaps(out)
    for sid in wanted:
        if sid not in files:
            result.failed[sid] = f"no slide file for {sid} in {slides}"
    tasks = [(sid, files[sid], out / f"{sid}.png", out / f"{sid}.geojson",
              {"run": run_path, "features": store, "patient": patients.get(sid), **kwargs})
             for sid in wanted if sid in files]
    if not tasks and not result.failed:
        raise InputError(f"no slide of {slides} has a bag in {store}"
                         + (f" in split {split}" if split else ""))
    out.mkdir(parents=True, exist_ok=True)
    _draw_all(tasks, result, jobs, progress)
    write_index(out, result.drawn, result.failed, wanted)
    _write_report(run, out, result, patients)
    return result


def _write_report(run: rundir.Run, out: Path, result: CohortHeatmaps,
                  patients: dict[str, str]) -> None:
    """`OUT/index.html`: the run's report with each patient's heatmaps linked."""
    from balnmp_mil.evaluation.report_html import run_html

    links: dict[str, list[tuple[str, str]]] = {}
    for r in result.drawn:
        links.setdefault(patients.get(r.slide_id, r.slide_id), []).append(
            (r.slide_id, r.path.name))
    text = run_html(run.path, run.metrics, run.config, heatmaps=links, failed=result.failed)
    rundir.write_file(out / INDEX_HTML, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _draw_all(tasks: list[tuple[Any, ...]], result: CohortHeatmaps, jobs: int | None,
              progress: bool | None) -> None:
    import sys

    from tqdm.auto import tqdm

    n = max(1, min(jobs or len(os.sched_getaffinity(0)), len(tasks) or 1))
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    bar = tqdm(total=len(tasks), unit="slide", desc="heatmap", disable=disable,
               dynamic_ncols=True)
    ctx = multiprocessing.get_context("spawn")  # torch and slide readers are fork-unsafe
    with bar, ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_one, t): t[0] for t in tasks}
        for fut in as_completed(futures):
            try:
                sid, drawn, error = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died (BrokenProcessPool)
                sid, drawn, error = futures[fut], None, f"{type(exc).__name__}: {exc}"
            if drawn is not None:
                result.drawn.append(drawn)
            else:
                result.failed[sid] = str(error)
            bar.set_postfix_str(sid)
            bar.update(1)
    result.drawn.sort(key=lambda r: r.slide_id)

"""Synthetic BALNMP-style demo cohort: H&E-like biopsy slides, tumour annotations, clinical
table and the ground truth of the planted signal.

`make_demo_cohort(out, n_patients=60, seed=0)` or
`python -m balnmp_cache.synthetic --out DIR --patients N --seed S` writes:

    out/slides/<pid>.svs          tiled pyramidal JPEG TIFF, Aperio-style (MPP, AppMag)
    out/annotations/<pid>.json    BALNMP JSON, tumour polygon in level-0 px
    out/clinical.csv              BCNB columns, `Patient ID` 1..N, `ALN status`
    out/truth.json                per patient: the planted-signal cells (for tests)

The signal: in N+ patients a minority (20-35 %) of tumour patches hold denser, larger,
rounder nuclei (stronger and more of them for N+(>2)); N0 patients have none (a few have one
weakly abnormal "decoy" cell). Attention pooling finds it; mean pooling dilutes it.
Everything is deterministic by seed (same seed: byte-identical CSV/JSON and pixels).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from balnmp_cache.errors import OptionError
from balnmp_cache.synthetic.clinical import assign_aln_status, make_clinical_table
from balnmp_cache.synthetic.geometry import (
    BiopsyPlan,
    cell_fractions,
    cells_mask,
    choose_signal_cells,
    plan_biopsy,
    polygon_area,
    polygon_mask,
    tissue_core_mask,
)
from balnmp_cache.synthetic.render import random_stain, render_tissue
from balnmp_cache.synthetic.tiff import COMPRESSIONS, write_pyramidal_tiff

__all__ = [
    "CohortConfig",
    "DemoCohort",
    "RENDER_MPP",
    "make_demo_cohort",
    "render_tissue",
    "tissue_core_mask",
    "write_pyramidal_tiff",
]

RENDER_MPP = 0.5  # slides are rendered at 0.5 µm/px (20x) and upsampled for finer mpp
TRUTH_VERSION = 1
# Per ALN status: (fraction of tumour cells with signal, signal strength) ranges.
SIGNAL_LEVELS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "N0": ((0.0, 0.0), (0.0, 0.0)),
    "N+(1-2)": ((0.20, 0.28), (0.80, 0.95)),
    "N+(>2)": ((0.27, 0.35), (0.95, 1.10)),
}
DECOY_PROBABILITY = 0.2  # chance that an N0 slide has one weakly abnormal cell


@dataclass(frozen=True)
class CohortConfig:
    """Size and format options of a synthetic cohort (all lengths at 0.5 µm/px).

    `mpp` is the written level-0 resolution: 0.5 (AppMag 20) or 0.25 (AppMag 40: the same
    physical content with twice the pixels per side; nearest-neighbour upsampled, so the
    40x slide's level 1 equals the 20x level 0 up to JPEG). `patch_um` is the side of a
    signal cell (112 µm = a 224 px patch at 0.5 µm/px); `tumour_patches` the tumour
    area range in such cells (shrunk when the slide is too small).
    """

    n_patients: int = 60
    seed: int = 0
    width: int = 3584
    height: int = 1792
    mpp: float = 0.5
    levels: int = 3
    tile: int = 256
    compression: str = "jpeg"
    quality: int = 90
    patch_um: float = 112.0
    tumour_patches: tuple[float, float] = (30.0, 42.0)
    positive_fraction: float = 0.4

    def __post_init__(self) -> None:
        scale = RENDER_MPP / self.mpp if self.mpp > 0 else 0.0
        if scale < 1 or abs(scale - round(scale)) > 1e-9:
            raise OptionError(f"mpp must be {RENDER_MPP} divided by an integer, got {self.mpp}")
        if self.n_patients < 1:
            raise OptionError(f"n_patients must be >= 1, got {self.n_patients}")
        if min(self.width, self.height) < 64:
            raise OptionError(
                f"slides must be at least 64 px per side, got {self.width}x{self.height}"
            )
        if self.compression not in COMPRESSIONS:
            raise OptionError(f"compression must be one of {sorted(COMPRESSIONS)}")
        if self.patch_um / RENDER_MPP < 8:
            raise OptionError(f"patch_um must be >= {8 * RENDER_MPP} µm, got {self.patch_um}")

    @property
    def scale(self) -> int:
        """Written pixels per rendered pixel (1 at 20x, 2 at 40x)."""
        return int(round(RENDER_MPP / self.mpp))

    @property
    def cell_px(self) -> int:
        """Side of a signal cell in level-0 pixels of the written slide."""
        return int(round(self.patch_um / RENDER_MPP)) * self.scale


@dataclass
class DemoCohort:
    """What `make_demo_cohort` wrote; `patients` is the clinical table plus
    `patient_id` (str), `slide_path`, `annotation_path` and `signal_fraction`."""

    root: Path
    slides_dir: Path
    annotations_dir: Path
    clinical_csv: Path
    truth_json: Path
    patients: pd.DataFrame
    config: CohortConfig
    truth: dict[str, Any] = field(repr=False, default_factory=dict)
    seconds: float = 0.0
    reused: bool = False


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class _Patient:
    """One rendered patient slide (at the rendering resolution) and what was planted in it."""

    image: np.ndarray
    plan: BiopsyPlan
    candidates: np.ndarray  # grid cells almost all tumour
    signal_cells: list[tuple[int, int]]
    decoy_cells: list[tuple[int, int]]
    strength: float
    density: float
    fragments: int


def _render_patient(cfg: CohortConfig, pid: int, status: str) -> _Patient:
    """Draw one patient's biopsy, tumour and planted signal, and render it (seeded by pid)."""
    rng = np.random.default_rng([cfg.seed, pid, 1])
    h, w = cfg.height, cfg.width
    cell = int(round(cfg.patch_um / RENDER_MPP))
    area = rng.uniform(*cfg.tumour_patches) * cell * cell
    fragments = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    plan = plan_biopsy(rng, h, w, tumour_area_px=area, fragments=fragments, mpp=RENDER_MPP)
    tissue = tissue_core_mask(rng, h, w, plan.core)
    tumour = polygon_mask(plan.tumour_polygon, (h, w))
    candidates = cell_fractions(tumour, cell) >= 0.75
    (f_lo, f_hi), (s_lo, s_hi) = SIGNAL_LEVELS[status]
    fraction = rng.uniform(f_lo, f_hi) if f_hi > 0 else 0.0
    strength = rng.uniform(s_lo, s_hi) if s_hi > 0 else 0.0
    signal_cells = choose_signal_cells(rng, candidates, fraction)
    decoy_cells: list[tuple[int, int]] = []
    if status == "N0" and rng.random() < DECOY_PROBABILITY:
        decoy_cells = choose_signal_cells(rng, candidates, 1e-9, cluster_size=(1, 1))
    density = float(rng.uniform(0.75, 1.25))
    image = render_tissue(
        rng,
        h,
        w,
        tissue_mask=tissue,
        tumour_mask=tumour,
        signal_mask=cells_mask(signal_cells, cell, (h, w)) if signal_cells else None,
        decoy_mask=cells_mask(decoy_cells, cell, (h, w)) if decoy_cells else None,
        nuclei_density=density,
        signal_strength=strength,
        mpp=RENDER_MPP,
        stain=random_stain(rng),
        centre_y=plan.core.centre_y,
    )
    return _Patient(image, plan, candidates, signal_cells, decoy_cells, float(strength), density,
                    fragments)  # fmt: skip


def _make_patient(cfg: CohortConfig, pid: int, status: str, root: Path) -> dict[str, Any]:
    """Render, write and describe one patient's slide; returns its truth record."""
    p = _render_patient(cfg, pid, status)
    k = cfg.scale
    image = p.image if k == 1 else np.repeat(np.repeat(p.image, k, axis=0), k, axis=1)
    slide = root / "slides" / f"{pid}.svs"
    write_pyramidal_tiff(slide, image, mpp=cfg.mpp, levels=cfg.levels, tile=cfg.tile,
                         compression=cfg.compression, quality=cfg.quality)  # fmt: skip
    del image
    vertices = (p.plan.tumour_polygon * k).tolist()
    annotation = {"positive": [{"name": "tumor 1", "vertices": vertices}], "negative": []}
    _atomic_write_text(root / "annotations" / f"{pid}.json", json.dumps(annotation))
    n_candidates = int(p.candidates.sum())
    return {
        "aln_status": status,
        "slide": f"slides/{pid}.svs",
        "annotation": f"annotations/{pid}.json",
        "width": cfg.width * k,
        "height": cfg.height * k,
        "mpp": cfg.mpp,
        "cell_size": cfg.cell_px,
        "signal_cells": [[c * cfg.cell_px, r * cfg.cell_px] for r, c in p.signal_cells],
        "decoy_cells": [[c * cfg.cell_px, r * cfg.cell_px] for r, c in p.decoy_cells],
        "n_tumour_cells": n_candidates,
        "signal_fraction": round(len(p.signal_cells) / max(n_candidates, 1), 4),
        "signal_strength": round(p.strength, 4),
        "nuclei_density": round(p.density, 4),
        "fragments": p.fragments,
        "tumour_area_px": round(polygon_area(p.plan.tumour_polygon) * k * k, 1),
    }


def _config_record(cfg: CohortConfig) -> dict[str, Any]:
    rec = asdict(cfg)
    rec["tumour_patches"] = list(cfg.tumour_patches)
    return rec


def _prepare_output(root: Path, cfg: CohortConfig, overwrite: bool) -> bool:
    """Check `root`; return True when it already holds this exact cohort (reuse it)."""
    truth_path = root / "truth.json"
    if not root.exists() or not any(root.iterdir()):
        return False
    if truth_path.exists():
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            truth = {}
        same = truth.get("config") == _config_record(cfg) and truth.get("version") == TRUTH_VERSION
        if same and not overwrite:
            return all((root / p["slide"]).exists() for p in truth.get("patients", {}).values())
    if not overwrite:
        raise FileExistsError(
            f"{root} is not empty and does not hold a cohort made with these options; "
            "choose another --out or pass --overwrite (overwrite=True) to replace it"
        )
    # Remove only what a cohort writes, never the user's other files.
    for sub, patterns in (("slides", ("*.svs", ".*.tmp-*")), ("annotations", ("*.json",))):
        for pattern in patterns:
            for p in (root / sub).glob(pattern):
                p.unlink()
    for name in ("clinical.csv", "truth.json"):
        (root / name).unlink(missing_ok=True)
    return False


def make_demo_cohort(
    out: str | os.PathLike[str],
    n_patients: int = 60,
    seed: int = 0,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    **options: Any,
) -> DemoCohort:
    """Write a synthetic cohort to `out` (see the module docstring) and describe it.

    `options` are `CohortConfig` fields (`width`, `height`, `mpp`, `levels`, `compression`,
    `tumour_patches`, ...). A directory that already holds the same cohort (same options and
    seed) is reused; any other non-empty directory is refused unless `overwrite`. `workers`
    threads render slides in parallel (default 2).
    """
    t0 = time.perf_counter()
    cfg = CohortConfig(n_patients=n_patients, seed=seed, **options)
    root = Path(out)
    reused = _prepare_output(root, cfg, overwrite)
    truth_path, csv_path = root / "truth.json", root / "clinical.csv"
    if reused:
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
    else:
        truth = _write_cohort(root, cfg, workers)
    table = pd.read_csv(csv_path)
    table["patient_id"] = table["Patient ID"].map(lambda x: str(int(x)))
    recs = [truth["patients"][pid] for pid in table["patient_id"]]
    table["slide_path"] = [str(root / r["slide"]) for r in recs]
    table["annotation_path"] = [str(root / r["annotation"]) for r in recs]
    table["signal_fraction"] = [r["signal_fraction"] for r in recs]
    return DemoCohort(
        root=root,
        slides_dir=root / "slides",
        annotations_dir=root / "annotations",
        clinical_csv=csv_path,
        truth_json=truth_path,
        patients=table,
        config=cfg,
        truth=truth,
        seconds=time.perf_counter() - t0,
        reused=reused,
    )


def _write_cohort(root: Path, cfg: CohortConfig, workers: int | None) -> dict[str, Any]:
    """Write clinical.csv, every slide and annotation, then truth.json (returned)."""
    (root / "slides").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 0])
    ids = list(range(1, cfg.n_patients + 1))
    statuses = assign_aln_status(rng, cfg.n_patients, cfg.positive_fraction)
    table = make_clinical_table(rng, statuses, ids)
    _atomic_write_text(root / "clinical.csv", table.to_csv(index=False, lineterminator="\n"))
    n_workers = max(1, workers if workers is not None else min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(n_workers) as pool:
        records = list(pool.map(lambda a: _make_patient(cfg, a[0], a[1], root), zip(ids, statuses)))
    truth = {
        "version": TRUTH_VERSION,
        "config": _config_record(cfg),
        "patients": {str(pid): rec for pid, rec in zip(ids, records)},
    }
    # truth.json is written last: its presence marks a complete cohort.
    _atomic_write_text(root / "truth.json", json.dumps(truth, indent=1) + "\n")
    return truth

"""`python -m balnmp_cache.synthetic`: write the demo cohort from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from balnmp_cache.errors import BalnmpError
from balnmp_cache.synthetic.cohort import CohortConfig, make_demo_cohort
from balnmp_cache.synthetic.tiff import COMPRESSIONS

__all__ = ["main"]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m balnmp_cache.synthetic",
        description="Write a synthetic BALNMP-style cohort (slides, annotations, clinical.csv).",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--patients", type=int, default=60, help="number of patients (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--width", type=int, default=CohortConfig.width, help="slide width, px at 0.5 µm/px"
    )
    p.add_argument(
        "--height", type=int, default=CohortConfig.height, help="slide height, px at 0.5 µm/px"
    )
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 µm/px: 0.5 (20x) or 0.25 (40x)")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    p.add_argument("--compression", default="jpeg", choices=sorted(COMPRESSIONS))
    p.add_argument("--workers", type=int, default=None, help="parallel threads (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a different cohort in --out")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    args = _parse_args(argv)
    try:
        cohort = make_demo_cohort(
            args.out,
            n_patients=args.patients,
            seed=args.seed,
            overwrite=args.overwrite,
            workers=args.workers,
            width=args.width,
            height=args.height,
            mpp=args.mpp,
            levels=args.levels,
            compression=args.compression,
        )
    except (FileExistsError, BalnmpError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = cohort.patients["ALN status"].value_counts().to_dict()
    n_cells = sum(p["n_tumour_cells"] for p in cohort.truth["patients"].values())
    verb = "reused" if cohort.reused else f"wrote in {cohort.seconds:.1f} s"
    print(
        f"synthetic cohort {verb}: {len(cohort.patients)} patients "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}), "
        f"~{n_cells} tumour patches of {cohort.config.patch_um:g} µm\n"
        f"  slides:      {cohort.slides_dir}\n"
        f"  annotations: {cohort.annotations_dir}\n"
        f"  clinical:    {cohort.clinical_csv}\n"
        f"  truth:       {cohort.truth_json}"
    )
    return 0

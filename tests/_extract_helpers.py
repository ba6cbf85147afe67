"""Shared fixtures for the extraction tests: a tiny generated cohort and fast job options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from balnmp_cache.synthetic import DemoCohort, make_demo_cohort

# Small slides (1024x768, 3 levels) with a few 32 µm tumour cells: ~10 annotated patches.
TINY = {"width": 1024, "height": 768, "tumour_patches": (4.0, 6.0), "patch_um": 32.0}

# resnet18, random init, 32 px patches at 1 µm/px encoded at 32 px: seconds per slide on CPU.
FAST: dict[str, Any] = {
    "encoder": "resnet18",
    "weights": "none",
    "mpp": 1.0,
    "patch_size": 32,
    "input_size": 32,
    "device": "cpu",
    "batch_size": 4,
    "progress": False,
}


def tiny_cohort(root: Path, n: int = 3, seed: int = 0) -> DemoCohort:
    return make_demo_cohort(root, n_patients=n, seed=seed, **TINY)


def fast_cli_args(slides: Path, out: Path, annotations: Path | None = None) -> list[str]:
    """The FAST options as `extract-features` arguments."""
    args = [str(slides), "--out", str(out), "--encoder", "resnet18", "--weights", "none",
            "--mpp", "1.0", "--patch-size", "32", "--input-size", "32", "--device", "cpu",
            "--batch-size", "4", "--no-progress"]  # fmt: skip
    if annotations is not None:
        args += ["--annotations", str(annotations)]
    return args

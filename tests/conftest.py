"""Shared pytest configuration and fixtures: CPU-only by default, GPU tests skipped without
CUDA, the docs tests' demo tree built once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Two-core CI machines: keep BLAS/torch from oversubscribing when tests run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` when no CUDA device is present (they run on lent GPUs)."""
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run on a GPU node: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs tests' demo tree: `<tmp>/demo` with `cohort/` and `features/`."""
    from _docs_helpers import make_tiny_demo

    return make_tiny_demo(tmp_path_factory.mktemp("docs"))

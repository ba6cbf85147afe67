"""balnmp_mil: attention multiple-instance learning on cached patch embeddings (stage 2).

Never imports slide readers: it depends on the feature-store format only.
"""

from __future__ import annotations

import importlib
from typing import Any

from balnmp_cache._version import __version__

_EXPORTS = {
    "load_cohort": "balnmp_mil.cohort",
    "Cohort": "balnmp_mil.cohort",
    "build_model": "balnmp_mil.models",
    "fit": "balnmp_mil.train",
    "predict": "balnmp_mil.train",
    "evaluate": "balnmp_mil.metrics",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'balnmp_mil' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)

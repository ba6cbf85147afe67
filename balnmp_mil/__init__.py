"""balnmp_mil: attention multiple-instance learning on cached patch embeddings (stage 2).

Never imports slide readers: it depends on the feature-store format only. The folders are the
architecture (see docs/architecture.md): `segment` -> `models`, `data` -> `training`,
`evaluation` -> `workflow` -> `cli`.
"""

from __future__ import annotations

from balnmp_cache import _compat
from balnmp_cache._registry import lazy_face
from balnmp_cache._version import __version__

_compat.install()

_EXPORTS = {
    "load_cohort": "balnmp_mil.data",
    "Cohort": "balnmp_mil.data",
    "build_model": "balnmp_mil.models",
    "fit": "balnmp_mil.training",
    "predict": "balnmp_mil.training",
    "evaluate": "balnmp_mil.evaluation",
    "MILError": "balnmp_mil.errors",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

"""MIL models: one module per family, each model one `@register_model` class.

`base` holds the interface every model implements (`forward` over packed bags, `forward_one`
per bag); `registry` builds models by name. Importing this package registers the built-ins:
`pool` (mean/max), `attention` (ABMIL, gated, the paper's head), `clam`, `dsmil`, `transmil`.
"""

from __future__ import annotations

from balnmp_mil.models import attention, clam, dsmil, pool, transmil  # noqa: F401 - register
from balnmp_mil.models.base import ClassifierHead, Dropout, MILModel, MILOutput
from balnmp_mil.models.registry import MODELS, build_model, list_models, register_model

__all__ = [
    "MODELS",
    "ClassifierHead",
    "Dropout",
    "MILModel",
    "MILOutput",
    "build_model",
    "list_models",
    "register_model",
]

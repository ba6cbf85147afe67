"""The model registry: `@register_model("name")` on a `MILModel` subclass, `build_model` by name.

What a model can do is declared on its class (`vmappable`: the vectorised sweep may batch its
fits with `torch.func.vmap`), never in a list kept elsewhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from balnmp_cache._registry import Registry
from balnmp_mil.errors import ModelError
from balnmp_mil.models.base import MILModel

__all__ = ["MODELS", "build_model", "hyperparameters", "list_models", "register_model",
           "saved_config"]

MODELS: Registry[type[MILModel]] = Registry("model", "--model")


def register_model(name: str) -> Callable[[type[MILModel]], type[MILModel]]:
    """Class decorator adding a model to the registry under `name`."""

    def deco(cls: type[MILModel]) -> type[MILModel]:
        cls.name = name
        MODELS.register(name, cls)
        return cls

    return deco


def list_models() -> list[str]:
    """Names of the registered models."""
    return sorted(MODELS.names())


def hyperparameters(cls: type[MILModel]) -> list[str] | None:
    """The keywords a model class takes beyond the shapes (None: any, it takes `**kwargs`)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n in params if n not in ("self", "in_dim", "n_classes", "clinical_dim")]


def _check_hyperparameters(name: str, cls: type[MILModel], kwargs: dict[str, Any]) -> None:
    allowed = hyperparameters(cls)
    unknown = [] if allowed is None else [k for k in kwargs if k not in allowed]
    if unknown:
        raise ModelError(f"model {name!r} takes no {', '.join(map(repr, unknown))} "
                         f"(--model-arg); it takes {', '.join(allowed or []) or 'none'}")


def build_model(
    name: str, in_dim: int, n_classes: int, clinical_dim: int = 0, seed: int | None = None,
    **kwargs: Any,
) -> MILModel:
    """Instantiate a registered model; `seed` makes its initial weights reproducible without
    touching the caller's global RNG. A keyword the model does not take is a `ModelError`."""
    cls = MODELS.get(name)
    _check_hyperparameters(name, cls, kwargs)
    if seed is None:
        return cls(in_dim=in_dim, n_classes=n_classes, clinical_dim=clinical_dim, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(in_dim=in_dim, n_classes=n_classes, clinical_dim=clinical_dim, **kwargs)


# Saved configs (a run's `model.json`) of models whose name now means another architecture:
# (name, a keyword only the old one took) -> the name the old architecture is registered as.
# balnmp 0.1's `balnmp` (dropout 0.25 throughout, attention width 128) is now `balnmp_v0`;
# `balnmp` is the paper's head, which takes `embed_dropout`/`attention_dropout` instead.
RENAMED = {("balnmp", "dropout"): "balnmp_v0"}


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved model config as `build_model` reads it today: an architecture renamed since it
    was saved gets its new name (see `RENAMED`), so old runs rebuild the model they trained."""
    for (name, keyword), now in RENAMED.items():
        if config.get("name") == name and keyword in config:
            return {**config, "name": now}
    return config

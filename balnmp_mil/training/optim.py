"""Optimisers and learning-rate schedules: one registry each (`--optimizer`, `--schedule`).

An optimiser is a registered `Optimizer` class: `build` makes the `torch.optim` optimiser `fit`
steps, and `stacked_update` applies the same update to the stacked (M, ...) parameters of a
vectorised sweep. What an entry can do is a class attribute: `stackable = False` (the default
for a new entry) makes the sweep fall back to sequential fits. A schedule is a function
`(lr, epoch, epochs) -> lr of that epoch`. A new entry is one `register` call; the command line
offers it with no other edit.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from balnmp_cache._registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULES", "Optimizer", "StackedState"]

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass
class StackedState:
    """Optimiser state of a vectorised sweep: per-parameter buffers and per-model step counts."""

    weight_decay: float
    momentum: float
    steps: list[int]
    exp_avg: dict[str, torch.Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, torch.Tensor] = field(default_factory=dict)


def per_model(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """(M,) python floats -> (M, 1, ..., 1) tensor broadcastable against `like`."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1)))


class Optimizer(abc.ABC):
    """A registered optimiser: how `fit` builds it and how the sweep applies it when stacked."""

    # The vectorised sweep can apply this optimiser to stacked parameters (`stacked_update`).
    stackable: ClassVar[bool] = False

    @staticmethod
    @abc.abstractmethod
    def build(params: list[torch.Tensor], lr: float, weight_decay: float,
              momentum: float) -> torch.optim.Optimizer:
        """The torch optimiser over `params` (every registered optimiser defines it)."""

    @classmethod
    def stacked_update(cls, state: StackedState, key: str, p: torch.Tensor, g: torch.Tensor,
                       lrs: list[float], mask: torch.Tensor) -> torch.Tensor:
        """The updated stacked parameter `p` (M, ...); models off in `mask` keep their state.
        Only a `stackable` optimiser has one; the sweep never stacks the others."""
        raise TypeError(f"{cls.__name__} has no stacked update (stackable = False); the sweep "
                        "fits models with it one after another")


OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer", "--optimizer")


def _fused(params: list[torch.Tensor]) -> bool | None:
    """Adam/AdamW's fused kernel (one launch per step) when every parameter is on CUDA; on
    CPU (None) the default implementation, which is what CLAM-style loops use too."""
    return True if params and all(p.is_cuda for p in params) else None


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """`torch.optim.Adam` (L2 weight decay added to the gradient)."""

    stackable = True
    decoupled_decay: ClassVar[bool] = False

    @staticmethod
    def build(params: list[torch.Tensor], lr: float, weight_decay: float,
              momentum: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fused(params))

    @classmethod
    def stacked_update(cls, state: StackedState, key: str, p: torch.Tensor, g: torch.Tensor,
                       lrs: list[float], mask: torch.Tensor) -> torch.Tensor:
        lr = per_model(lrs, p)
        if cls.decoupled_decay:
            p = p * (1 - lr * state.weight_decay)
        elif state.weight_decay:
            g = g + state.weight_decay * p
        b1, b2 = BETAS
        m = state.exp_avg[key].lerp(g, 1 - b1)
        v = state.exp_avg_sq[key] * b2 + (1 - b2) * g * g
        state.exp_avg[key] = torch.where(mask, m, state.exp_avg[key])
        state.exp_avg_sq[key] = torch.where(mask, v, state.exp_avg_sq[key])
        steps = [max(s, 1) for s in state.steps]
        step_size = per_model([a / (1 - b1**s) for a, s in zip(lrs, steps, strict=True)], p)
        bc2_sqrt = per_model([math.sqrt(1 - b2**s) for s in steps], p)
        denom = v.sqrt() / bc2_sqrt + EPS
        return p - step_size * (m / denom)


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """`torch.optim.AdamW` (decoupled weight decay)."""

    decoupled_decay = True

    @staticmethod
    def build(params: list[torch.Tensor], lr: float, weight_decay: float,
              momentum: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fused(params))


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """`torch.optim.SGD` with `momentum` (no dampening, not Nesterov)."""

    stackable = True

    @staticmethod
    def build(params: list[torch.Tensor], lr: float, weight_decay: float,
              momentum: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @classmethod
    def stacked_update(cls, state: StackedState, key: str, p: torch.Tensor, g: torch.Tensor,
                       lrs: list[float], mask: torch.Tensor) -> torch.Tensor:
        lr = per_model(lrs, p)
        if state.weight_decay:
            g = g + state.weight_decay * p
        first = per_model([float(s <= 1) for s in state.steps], p) > 0
        buf = torch.where(first, g, state.exp_avg[key] * state.momentum + g)
        state.exp_avg[key] = torch.where(mask, buf, state.exp_avg[key])
        return p - lr * buf


Schedule = Callable[[float, int, int], float]
SCHEDULES: Registry[Schedule] = Registry("learning-rate schedule", "--schedule")


@SCHEDULES.register("cosine")
def cosine(lr: float, epoch: int, epochs: int) -> float:
    """Cosine from `lr` at epoch 0 down towards 0 at `epochs`, once per epoch."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@SCHEDULES.register("constant")
def constant(lr: float, epoch: int, epochs: int) -> float:
    """The same learning rate every epoch."""
    return lr


@SCHEDULES.register("warm_restarts")
def warm_restarts(lr: float, epoch: int, epochs: int) -> float:
    """The BALNMP code's schedule: `CosineAnnealingWarmRestarts(T_0=20, T_mult=2)` (cosine
    down to 0 over 20 epochs, then 40, 80, ...) stepped at the START of each epoch
    (`code/train.py`: `scheduler.step()` before training), so epoch 0 already uses the lr of
    position 1 of the cycle."""
    t, period = epoch + 1, 20
    while t >= period:
        t, period = t - period, period * 2
    return lr * 0.5 * (1.0 + math.cos(math.pi * t / period))

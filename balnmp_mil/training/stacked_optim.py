"""Registered optimisers applied to stacked (M, ...) parameters with per-model learning rates.

Each optimiser's update follows `torch.optim` (`Optimizer.stacked_update` in
`balnmp_mil.training.optim`: Adam's L2 weight decay, AdamW's decoupled decay, SGD with momentum
and no dampening), so a sweep tracks M separate `fit` runs; models whose `active` flag is False
this step keep their parameters and optimiser state unchanged.
"""

from __future__ import annotations

import torch

from balnmp_mil.training.optim import OPTIMIZERS, StackedState

__all__ = ["StackedOptimizer"]


class StackedOptimizer:
    """Functional optimiser state for dicts of stacked parameters."""

    def __init__(self, optimizer: str, weight_decay: float, momentum: float,
                 params: dict[str, torch.Tensor]) -> None:
        self.rule = OPTIMIZERS.get(optimizer)
        first = next(iter(params.values()))
        self.state = StackedState(
            weight_decay, momentum, [0] * first.shape[0],
            exp_avg={k: torch.zeros_like(v) for k, v in params.items()},
            exp_avg_sq={k: torch.zeros_like(v) for k, v in params.items()},
        )

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             lr: torch.Tensor, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of every active model; returns the new parameter dict."""
        act = active.tolist()
        self.state.steps = [s + int(a) for s, a in zip(self.state.steps, act, strict=True)]
        lrs = lr.tolist()
        out = {}
        for k, p in params.items():
            mask = active.to(p.device).view(-1, *([1] * (p.dim() - 1)))
            g = grads[k].to(p.dtype)
            new = self.rule.stacked_update(self.state, k, p, g, lrs, mask)
            out[k] = torch.where(mask, new, p)
        return out

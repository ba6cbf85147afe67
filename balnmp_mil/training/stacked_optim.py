"""Adam / AdamW / SGD on stacked (M, ...) parameters with per-model learning rates.

The update formulas follow ``torch.optim`` (Adam's L2 weight decay, AdamW's decoupled decay,
SGD with momentum and no dampening) so a sweep tracks M separate ``fit`` runs; models whose
``active`` flag is False this step keep their parameters and optimiser state unchanged.
"""

from __future__ import annotations

import math

import torch

from balnmp_mil.training.fit import FitConfig

__all__ = ["StackedOptimizer"]

BETAS = (0.9, 0.999)
EPS = 1e-8


def _per_model(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """(M,) python floats -> (M, 1, ..., 1) tensor broadcastable against ``like``."""
    t = torch.tensor(values, dtype=like.dtype, device=like.device)
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """Functional optimiser state for dicts of stacked parameters."""

    def __init__(self, cfg: FitConfig, params: dict[str, torch.Tensor]) -> None:
        self.kind, self.wd, self.momentum = cfg.optimizer, cfg.weight_decay, cfg.momentum
        self.exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
        first = next(iter(params.values()))
        self.steps = [0] * first.shape[0]

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             lr: torch.Tensor, active: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of every active model; returns the new parameter dict."""
        act = active.tolist()
        self.steps = [s + int(a) for s, a in zip(self.steps, act, strict=True)]
        lrs = lr.tolist()
        out = {}
        for k, p in params.items():
            mask = active.to(p.device).view(-1, *([1] * (p.dim() - 1)))
            g = grads[k].to(p.dtype)
            new = self._update(k, p, g, lrs, mask)
            out[k] = torch.where(mask, new, p)
        return out

    def _update(self, k: str, p: torch.Tensor, g: torch.Tensor, lrs: list[float],
                mask: torch.Tensor) -> torch.Tensor:
        lr = _per_model(lrs, p)
        if self.kind == "sgd":
            if self.wd:
                g = g + self.wd * p
            first = _per_model([float(s <= 1) for s in self.steps], p) > 0
            buf = torch.where(first, g, self.exp_avg[k] * self.momentum + g)
            self.exp_avg[k] = torch.where(mask, buf, self.exp_avg[k])
            return p - lr * buf
        if self.kind == "adamw":
            p = p * (1 - lr * self.wd)
        elif self.wd:
            g = g + self.wd * p
        b1, b2 = BETAS
        m = self.exp_avg[k].lerp(g, 1 - b1)
        v = self.exp_avg_sq[k] * b2 + (1 - b2) * g * g
        self.exp_avg[k] = torch.where(mask, m, self.exp_avg[k])
        self.exp_avg_sq[k] = torch.where(mask, v, self.exp_avg_sq[k])
        steps = [max(s, 1) for s in self.steps]
        step_size = _per_model([a / (1 - b1**s) for a, s in zip(lrs, steps, strict=True)], p)
        bc2_sqrt = _per_model([math.sqrt(1 - b2**s) for s in steps], p)
        denom = v.sqrt() / bc2_sqrt + EPS
        return p - step_size * (m / denom)

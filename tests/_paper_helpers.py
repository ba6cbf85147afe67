"""The official BALNMP head re-stated for the tests: a random state dict in the official
names and shapes (`code/models/attention_aggregator.py`, `mil_net.py`) and its forward
written with plain tensor operations."""

from __future__ import annotations

import torch


def official_head(in_dim: int, n_classes: int = 2, clinical: bool = False,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """A random head in the official names and shapes (AttentionAggregator(in, 1), L=256)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"attention_aggregator.fc1.0.weight": (256, in_dim),
              "attention_aggregator.fc1.0.bias": (256,),
              "attention_aggregator.attention.0.weight": (1, 256),
              "attention_aggregator.attention.0.bias": (1,),
              "attention_aggregator.attention.3.weight": (1, 1),
              "attention_aggregator.attention.3.bias": (1,),
              "classifier.0.weight": (64, 256 + (50 if clinical else 0)),
              "classifier.0.bias": (64,),
              "classifier.2.weight": (n_classes, 64), "classifier.2.bias": (n_classes,)}
    return {k: torch.randn(s, generator=g) * 0.3 for k, s in shapes.items()}


def official_forward(state: dict[str, torch.Tensor], x: torch.Tensor,
                     clinical: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The official forward in eval mode, re-stated with plain tensor operations: fc1
    (Linear, ReLU), attention (Linear, Tanh, Linear) -> (N, 1) -> transpose -> softmax over
    the bag -> m = a @ h; cat(m, clinical.repeat(1, 10)); classifier (Linear, ReLU, Linear)."""
    def lin(t, name):
        return t @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = torch.relu(lin(x.view(-1, x.shape[-1]), "attention_aggregator.fc1.0"))
    a = lin(torch.tanh(lin(h, "attention_aggregator.attention.0")),
            "attention_aggregator.attention.3")
    a = torch.softmax(a.transpose(1, 0), dim=1)
    m = a @ h
    if clinical is not None:
        m = torch.cat([m, clinical.reshape(1, -1).repeat(1, 10)], dim=-1)
    return lin(torch.relu(lin(m, "classifier.0")), "classifier.2"), a.flatten()

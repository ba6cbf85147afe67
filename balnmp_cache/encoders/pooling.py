"""How a transformer's tokens become one embedding per patch.

`TokenPool` runs a backbone's `forward_features` (timm: all tokens after the final norm,
ordered `[class, registers..., patches...]`; a Swin returns its (B, H, W, C) map) and pools:

- `cls`: the class token;
- `cls+mean`: the class token joined to the mean of the patch tokens, register tokens
  skipped (Virchow, Virchow2, H0-mini, Midnight);
- `mean`: the mean of all tokens of a model without a class token (CTransPath's Swin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from balnmp_cache.errors import EncoderError

__all__ = ["POOLINGS", "TokenPool"]

POOLINGS = {
    "cls": "class token",
    "cls+mean": "class token + mean of patch tokens",
    "mean": "mean of all tokens",
}


class TokenPool(nn.Module):
    """`backbone.forward_features(x)` pooled by `rule`; `prefix`: tokens before the patch
    tokens (class + registers), `width`: the token width. Parameters keep the backbone's
    names under `backbone.`."""

    def __init__(self, backbone: nn.Module, rule: str, prefix: int, width: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.prefix = prefix
        self.width = width
        self.rule = rule
        self.set_rule(rule)

    def set_rule(self, rule: str) -> int:
        """Switch the pooling rule; returns the new feature dimension."""
        allowed = ("mean",) if self.prefix == 0 else ("cls", "cls+mean")
        if rule not in allowed:
            raise EncoderError(f"--pooling {rule!r}: this encoder offers "
                               f"{', '.join(allowed)}")  # fmt: skip
        self.rule = rule
        return self.feature_dim

    @property
    def feature_dim(self) -> int:
        return 2 * self.width if self.rule == "cls+mean" else self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = cast("Callable[[torch.Tensor], torch.Tensor]", self.backbone.forward_features)
        tokens = features(x)
        if tokens.dim() == 4:  # a (B, H, W, C) map
            tokens = tokens.flatten(1, 2)
        if self.rule == "mean":
            return tokens.mean(dim=1)
        cls = tokens[:, 0]
        if self.rule == "cls":
            return cls
        return torch.cat([cls, tokens[:, self.prefix:].mean(dim=1)], dim=-1)

"""Pooling baselines: mean and max of instance embeddings (no learned attention)."""

from __future__ import annotations

import torch
from torch import nn

from balnmp_mil.models.base import ClassifierHead, Dropout, MILModel, MILOutput
from balnmp_mil.models.registry import register_model
from balnmp_mil.segment import Segments, segment_max, segment_mean

__all__ = ["MeanPool", "MaxPool"]


class _PoolMIL(MILModel):
    """Embedding MLP -> pooling -> linear head."""

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, embed_dim: int = 256,
        dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, embed_dim=embed_dim, dropout=dropout)
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), Dropout(dropout))
        self.head = ClassifierHead(embed_dim, n_classes, clinical_dim)


@register_model("mean")
class MeanPool(_PoolMIL):
    """Mean of embedded instances; attention is the uniform 1/n of each bag."""

    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        h = self.embed(x)
        counts = seg.counts.clamp(min=1).to(h.dtype)
        return MILOutput(self.head(segment_mean(h, seg), clinical),
                         (1.0 / counts).index_select(0, seg.ids))

    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        h = self.embed(x)
        a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=h.dtype, device=h.device)
        return MILOutput(self.head(h.mean(0, keepdim=True), clinical), a)


@register_model("max")
class MaxPool(_PoolMIL):
    """Elementwise max of embedded instances (no attention)."""

    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        return MILOutput(self.head(segment_max(self.embed(x), seg), clinical))

    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        return MILOutput(self.head(self.embed(x).amax(0, keepdim=True), clinical))

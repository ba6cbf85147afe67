"""DSMIL (Li, Li & Eliceiri, CVPR 2021): a max-pooling instance classifier picks each class's
critical instance; every instance is then weighted by its similarity to that instance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from balnmp_mil.models.base import ClassifierHead, Dropout, MILModel, MILOutput
from balnmp_mil.models.registry import register_model
from balnmp_mil.segment import Segments, segment_argmax, segment_max, segment_softmax, segment_sum

__all__ = ["DSMIL"]


@register_model("dsmil")
class DSMIL(MILModel):
    """Dual-stream MIL. Stream 1: instance classifier, max over instances per class. Stream 2:
    queries q(x), attention = softmax over the bag of <q(x_i), q(x_critical,c)> / sqrt(d), bag
    embedding per class = sum_i A_ic v(x_i), fcc over the C embeddings (the original Conv1d is
    this Linear). `logits` are stream 2; `aux_loss` = `max_weight` x CE of stream 1."""

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, query_dim: int = 128,
        value_dim: int = 128, dropout: float = 0.0, max_weight: float = 0.5,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, query_dim=query_dim,
                         value_dim=value_dim, dropout=dropout, max_weight=max_weight)
        self.max_weight = max_weight
        self.instance_classifier = nn.Linear(in_dim, n_classes)
        self.q = nn.Sequential(nn.Linear(in_dim, query_dim), nn.ReLU(),
                               nn.Linear(query_dim, query_dim), nn.Tanh())
        self.v = nn.Sequential(Dropout(dropout), nn.Linear(in_dim, value_dim), nn.ReLU())
        self.head = ClassifierHead(n_classes * value_dim, n_classes, clinical_dim)
        self.scale = 1.0 / math.sqrt(query_dim)

    def _aux(self, max_logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        valid = labels >= 0
        loss = F.cross_entropy(max_logits.float(), labels.clamp(min=0), reduction="none")
        w = valid.to(loss.dtype)
        return self.max_weight * (loss * w).sum() / w.sum().clamp(min=1)

    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        inst = self.instance_classifier(x)  # (P, C)
        crit = segment_argmax(inst, seg)  # (B, C) packed rows
        q = self.q(x)  # (P, dq)
        q_crit = q.index_select(0, crit.reshape(-1)).view(seg.n_bags, self.n_classes, -1)
        sim = torch.einsum("pd,pcd->pc", q, q_crit.index_select(0, seg.ids)) * self.scale
        a = segment_softmax(sim, seg)  # (P, C)
        v = self.v(x)
        emb = torch.stack([segment_sum(a[:, c : c + 1] * v, seg) for c in range(self.n_classes)],
                          dim=1)  # (B, C, dv)
        logits = self.head(emb.flatten(1), clinical)
        aux = self._aux(segment_max(inst, seg), labels)
        return MILOutput(logits, a.mean(1), aux)

    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        inst = self.instance_classifier(x)  # (N, C)
        crit = inst.argmax(0)  # (C,)
        q = self.q(x)
        a = torch.softmax(q @ q[crit].T * self.scale, dim=0)  # (N, C)
        emb = a.T @ self.v(x)  # (C, dv)
        logits = self.head(emb.reshape(1, -1), clinical)
        aux = self._aux(inst.amax(0, keepdim=True), None if labels is None else labels.reshape(1))
        return MILOutput(logits, a.mean(1), aux)

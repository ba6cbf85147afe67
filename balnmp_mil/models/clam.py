"""CLAM-SB (Lu et al., Nature Biomedical Engineering 2021): gated attention pooling plus an
instance-level clustering loss on the most and least attended patches of each bag."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from balnmp_mil.models.attention import AttentionMIL, AttentionScorer
from balnmp_mil.models.base import ClassifierHead, Dropout, MILOutput
from balnmp_mil.models.registry import register_model
from balnmp_mil.segment import Segments, segment_rank, segment_sum

__all__ = ["CLAMSB"]


@register_model("clam_sb")
class CLAMSB(AttentionMIL):
    """Single-branch CLAM. `aux_loss` = `instance_weight` x the mean over labelled bags of
    the instance loss: for the bag's own class, the top-k attended instances are pseudo-labelled
    positive and the bottom-k negative (k = min(k_sample, n // 2)); with `subtyping` the top-k
    are also negatives for every other class. Bags labelled < 0 are ignored."""

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, embed_dim: int = 512,
        attention_dim: int = 256, dropout: float = 0.25, k_sample: int = 8,
        subtyping: bool = False, instance_weight: float = 0.3,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, embed_dim=embed_dim,
                         attention_dim=attention_dim, dropout=dropout, k_sample=k_sample,
                         subtyping=subtyping, instance_weight=instance_weight)
        self.k_sample, self.subtyping, self.instance_weight = k_sample, subtyping, instance_weight
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), Dropout(dropout))
        self.scorer = AttentionScorer(embed_dim, attention_dim, gated=True, dropout=dropout)
        self.head = ClassifierHead(embed_dim, n_classes, clinical_dim)
        # one binary (in-class / out-of-class) instance classifier per class, stacked
        self.instance_classifiers = nn.Linear(embed_dim, 2 * n_classes)

    def _instance_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.instance_classifiers(h).view(h.shape[0], self.n_classes, 2)

    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        h, scores, a, z = self.pool_packed(x, seg)
        out = MILOutput(self.head(z, clinical), a)
        if labels is not None:
            out.aux_loss = self._packed_instance_loss(h, scores, seg, labels)
        return out

    def _packed_instance_loss(
        self, h: torch.Tensor, scores: torch.Tensor, seg: Segments, labels: torch.Tensor
    ) -> torch.Tensor:
        counts = seg.counts
        k_bag = torch.minimum(counts // 2, torch.full_like(counts, self.k_sample))
        valid_bag = labels >= 0  # bags too small for k >= 1 contribute 0
        ids = seg.ids
        rank = segment_rank(scores, seg)
        k_row, n_row = k_bag.index_select(0, ids), counts.index_select(0, ids)
        top = rank < k_row
        bottom = rank >= n_row - k_row
        y_row = labels.clamp(min=0).index_select(0, ids)
        logp = F.log_softmax(self._instance_logits(h).float(), dim=-1)  # (P, C, 2)
        own = logp.gather(1, y_row.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)  # (P, 2)
        ce_in = torch.where(top, -own[:, 1], -own[:, 0]) * (top | bottom).to(own.dtype)
        per_bag = segment_sum(ce_in, seg) / (2 * k_bag).clamp(min=1).to(own.dtype)
        if self.subtyping:
            other = torch.ones_like(logp[..., 0]).scatter(1, y_row.view(-1, 1), 0.0)
            ce_out = (-logp[..., 0] * other).sum(1) * top.to(own.dtype)
            per_bag = per_bag + segment_sum(ce_out, seg) / k_bag.clamp(min=1).to(own.dtype)
            per_bag = per_bag / self.n_classes
        w = valid_bag.to(per_bag.dtype)
        return self.instance_weight * (per_bag * w).sum() / w.sum().clamp(min=1)

    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        h, a, z = self.pool_one(x)
        out = MILOutput(self.head(z, clinical), a)
        if labels is None:
            return out
        y = int(labels.reshape(-1)[0])
        k = min(self.k_sample, x.shape[0] // 2)
        if y < 0 or k == 0:
            out.aux_loss = h.new_zeros(())
            return out
        inst = self._instance_logits(h).float()
        top = torch.topk(a, k).indices
        bottom = torch.topk(-a, k).indices
        sel = torch.cat([top, bottom])
        target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(x.device)
        loss = F.cross_entropy(inst[sel, y], target)
        if self.subtyping:
            for c in range(self.n_classes):
                if c != y:
                    loss = loss + F.cross_entropy(inst[top, c], torch.zeros_like(target[:k]))
            loss = loss / self.n_classes
        out.aux_loss = self.instance_weight * loss
        return out

"""Attention-pooling MIL: ABMIL (Ilse et al. 2018) and the BALNMP head (Xu et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from balnmp_mil.models.base import ClassifierHead, Dropout, MILModel, MILOutput
from balnmp_mil.models.registry import register_model
from balnmp_mil.segment import Segments, segment_softmax, segment_sum

__all__ = ["ABMIL", "BALNMP", "AttentionMIL", "AttentionScorer", "BALNMPv0", "PaperAttention"]


class AttentionScorer(nn.Module):
    """Ilse et al.'s attention score: w^T tanh(V h), or gated w^T (tanh(V h) * sigm(U h))."""

    def __init__(self, dim: int, hidden: int, gated: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.gated = gated
        self.v = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh())
        self.u = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid()) if gated else None
        self.drop = Dropout(dropout)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.v(h)
        if self.u is not None:
            a = a * self.u(h)
        return self.w(self.drop(a)).squeeze(-1)


class AttentionMIL(MILModel):
    """Instance embedding -> attention scores -> softmax per bag -> weighted sum -> head."""

    embed: nn.Module
    scorer: nn.Module
    head: ClassifierHead

    def pool_packed(
        self, x: torch.Tensor, seg: Segments
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings h (P, E), raw scores (P,), attention (P,) and pooled z (B, E)."""
        h = self.embed(x)
        scores = self.scorer(h)
        a = segment_softmax(scores, seg)
        return h, scores, a, segment_sum(a.unsqueeze(1) * h, seg)

    def pool_one(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One bag: embeddings h (N, E), attention (N,) and pooled z (1, E)."""
        h = self.embed(x)
        a = torch.softmax(self.scorer(h), dim=0)
        return h, a, (a.unsqueeze(1) * h).sum(0, keepdim=True)

    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        _, _, a, z = self.pool_packed(x, seg)
        return MILOutput(self.head(z, clinical), a)

    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        _, a, z = self.pool_one(x)
        return MILOutput(self.head(z, clinical), a)


@register_model("abmil")
class ABMIL(AttentionMIL):
    """Attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018), gated or not."""

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, embed_dim: int = 256,
        attention_dim: int = 128, gated: bool = True, dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, embed_dim=embed_dim,
                         attention_dim=attention_dim, gated=gated, dropout=dropout)
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), Dropout(dropout))
        self.scorer = AttentionScorer(embed_dim, attention_dim, gated, dropout)
        self.head = ClassifierHead(embed_dim, n_classes, clinical_dim)


class PaperAttention(nn.Module):
    """The BALNMP attention score, in the official order (`attention_aggregator.py`
    `self.attention`): Linear(E->D) -> Dropout -> Tanh -> Linear(D->1) -> Dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), Dropout(dropout), nn.Tanh(),
                                 nn.Linear(hidden, 1), Dropout(dropout))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


@register_model("balnmp")
class BALNMP(AttentionMIL):
    """The BALNMP paper's MIL head as its code builds it (Xu et al., Front. Oncol. 2021;
    `code/models/mil_net.py`, `attention_aggregator.py`): Linear(D->256) -> Dropout(0.5) ->
    ReLU; attention of width 1 with dropout on its logits; softmax over the bag, `m = a^T h`;
    classifier Linear(256 + 10 x K -> 64) -> ReLU -> Linear(64 -> C), the K clinical values
    tiled 10 times. Takes raw (not z-scored) features unless `fit(standardize=True)`."""

    standardize_default = False

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, embed_dim: int = 256,
        attention_dim: int = 1, mlp_dim: int = 64, embed_dropout: float = 0.5,
        attention_dropout: float = 0.5, head_dropout: float = 0.0, clinical_repeat: int = 10,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, embed_dim=embed_dim,
                         attention_dim=attention_dim, mlp_dim=mlp_dim,
                         embed_dropout=embed_dropout, attention_dropout=attention_dropout,
                         head_dropout=head_dropout, clinical_repeat=clinical_repeat)
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), Dropout(embed_dropout),
                                   nn.ReLU())
        self.scorer = PaperAttention(embed_dim, attention_dim, attention_dropout)
        self.head = ClassifierHead(embed_dim, n_classes, clinical_dim, hidden=mlp_dim,
                                   dropout=head_dropout, clinical_repeat=clinical_repeat)


@register_model("balnmp_v0")
class BALNMPv0(AttentionMIL):
    """balnmp 0.1's `balnmp` head (kept so its runs load, and as `--model balnmp_v0`):
    Linear D->256 + ReLU, tanh attention of width 128, MLP to 64, dropout 0.25 throughout,
    the clinical vector joined once; inputs z-scored by default."""

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, embed_dim: int = 256,
        attention_dim: int = 128, mlp_dim: int = 64, dropout: float = 0.25,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, embed_dim=embed_dim,
                         attention_dim=attention_dim, mlp_dim=mlp_dim, dropout=dropout)
        self.embed = nn.Sequential(nn.Linear(in_dim, embed_dim), nn.ReLU(), Dropout(dropout))
        self.scorer = AttentionScorer(embed_dim, attention_dim, gated=False, dropout=dropout)
        self.head = ClassifierHead(embed_dim, n_classes, clinical_dim, hidden=mlp_dim,
                                   dropout=dropout)

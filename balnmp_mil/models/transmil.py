"""TransMIL (Shao et al., NeurIPS 2021): a class token and two self-attention layers with a
pyramid position encoding generator (PPEG) over the bag laid out as a square grid.

Deviation: the original approximates self-attention with Nystrom attention; here attention is
exact (masked multi-head softmax attention through PyTorch's fused scaled-dot-product kernels),
which the Nystrom layer approximates and which is affordable for biopsy-sized bags.

Packing: bags are processed in groups of similar length, padded inside the group with a key
mask; PPEG places each bag's H x H grid in the top-left of a zero canvas, which is exactly the
zero-padded per-bag convolution. No per-bag Python loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from balnmp_mil.models.base import ClassifierHead, MILModel, MILOutput
from balnmp_mil.models.registry import register_model
from balnmp_mil.segment import Segments

__all__ = ["TransMIL"]


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with residual; returns the class-token attention.

    The attention itself is `F.scaled_dot_product_attention` (fused kernels: no (L, L)
    weight matrix kept for backward; 1.5-3x faster than the explicit softmax on CPU for
    160-1,000-token bags); the [CLS] row of the weights, which heatmaps need, is computed
    on its own from the same scores.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (G, L, dim); key_mask (G, L) True for real tokens. Returns (x', cls attn (G, L))."""
        g, n, d = x.shape
        qkv = self.qkv(self.norm(x)).view(g, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (G, heads, L, dh) each
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        s = (q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(d // self.heads)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        cls_att = torch.softmax(s, dim=-1)[:, :, 0, :].mean(1)
        return x + self.proj(out.transpose(1, 2).reshape(g, n, d)), cls_att


class PPEG(nn.Module):
    """Depthwise 7x7 + 5x5 + 3x3 convolutions plus identity over the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim) for k in (7, 5, 3)
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:  # (G, dim, H, W)
        return grid + sum(c(grid) for c in self.convs)


@register_model("transmil")
class TransMIL(MILModel):
    """fc (D -> dim) + ReLU, [CLS] + square-padded tokens, attention, PPEG, attention,
    LayerNorm, classifier on [CLS]. Attention output: the last layer's [CLS] attention (mean
    over heads) folded onto the bag's instances and renormalised."""

    vmappable = False  # the square token grid's size depends on each bag's length

    def __init__(
        self, in_dim: int, n_classes: int, clinical_dim: int = 0, dim: int = 512,
        heads: int = 8, dropout: float = 0.1, max_group_tokens: int = 1 << 20,
    ) -> None:
        super().__init__(in_dim, n_classes, clinical_dim, dim=dim, heads=heads,
                         dropout=dropout, max_group_tokens=max_group_tokens)
        self.max_group_tokens = max_group_tokens
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.layer1 = SelfAttention(dim, heads, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = SelfAttention(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = ClassifierHead(dim, n_classes, clinical_dim)

    # -- reference: one bag ------------------------------------------------------------
    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        h = self.fc(x)
        n = h.shape[0]
        side = math.ceil(math.sqrt(n))
        add = side * side - n
        h = torch.cat([h, h[:add]])
        t = torch.cat([self.cls_token, h]).unsqueeze(0)
        t, _ = self.layer1(t)
        grid = t[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        grid = self.ppeg(grid).flatten(2).transpose(1, 2)
        t = torch.cat([t[:, :1], grid], dim=1)
        t, w = self.layer2(t)
        logits = self.head(self.norm(t[:, 0]), clinical)
        src = torch.cat([torch.arange(n), torch.arange(add)]).to(x.device)
        att = h.new_zeros(n).index_add(0, src, w[0, 1:])
        return MILOutput(logits, att / att.sum())

    # -- packed: groups of bags ----------------------------------------------------------
    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        h = self.fc(x)
        counts = seg.counts.cpu()
        sides = torch.ceil(torch.sqrt(counts.double())).long()
        sides = torch.where(sides * sides < counts, sides + 1, sides)
        cls_out = h.new_zeros(seg.n_bags, h.shape[1])
        att = h.new_zeros(h.shape[0])
        for group in self._groups(sides):
            c_g, a_g, rows_g = self._group_forward(h, seg.offsets.cpu()[group], counts[group],
                                                   sides[group])
            cls_out = cls_out.index_copy(0, group.to(h.device), c_g)
            att = att.index_add(0, rows_g, a_g)
        logits = self.head(self.norm(cls_out), clinical)
        return MILOutput(logits, att)

    def _groups(self, sides: torch.Tensor) -> list[torch.Tensor]:
        """Bags sorted by grid size, cut so each padded group stays under max_group_tokens."""
        order = torch.argsort(sides, stable=True)
        groups, start = [], 0
        for i in range(1, order.numel() + 1):
            if i == order.numel():
                groups.append(order[start:i])
                break
            length = 1 + int(sides[order[i]]) ** 2
            if (i + 1 - start) * length * length > self.max_group_tokens and i > start:
                groups.append(order[start:i])
                start = i
        return groups

    def _group_forward(
        self, h: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor, sides: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = h.device
        g, side_max = counts.numel(), int(sides.max())
        lmax = 1 + side_max * side_max
        t = torch.arange(lmax).unsqueeze(0)  # token position
        n, sd = counts.unsqueeze(1), sides.unsqueeze(1)
        j = t - 1
        inst = torch.where(j < n, j, j - n)  # duplicated padding tokens wrap to the start
        valid = t < 1 + sd * sd
        src = torch.where((t == 0) | ~valid, 0, starts.unsqueeze(1) + inst + 1)
        ext = torch.cat([self.cls_token, h])
        tokens = ext.index_select(0, src.reshape(-1).to(dev)).view(g, lmax, -1)
        mask = valid.to(dev)
        tokens, _ = self.layer1(tokens, mask)
        # PPEG: token j of bag b sits at (j // side_b, j % side_b) on a zero canvas
        cell = (j // sd) * side_max + j % sd
        grid_tok = valid & (t > 0)
        flat = (torch.arange(g).unsqueeze(1) * side_max * side_max + cell)[grid_tok].to(dev)
        dim = tokens.shape[-1]
        canvas = tokens.new_zeros(g * side_max * side_max, dim)
        canvas = canvas.index_copy(0, flat, tokens[grid_tok.to(dev)])
        grid = canvas.view(g, side_max, side_max, dim).permute(0, 3, 1, 2)
        grid = self.ppeg(grid).permute(0, 2, 3, 1).reshape(-1, dim)
        tokens = tokens.masked_scatter(grid_tok.to(dev).unsqueeze(-1),
                                       grid.index_select(0, flat))
        tokens, w = self.layer2(tokens, mask)
        # fold [CLS] attention on instance tokens back to packed rows, renormalise per bag
        rows = (starts.unsqueeze(1) + inst)[grid_tok].to(dev)
        bag_of = torch.arange(g).unsqueeze(1).expand(g, lmax)[grid_tok].to(dev)
        wt = w[grid_tok.to(dev)]
        total = wt.new_zeros(g).index_add(0, bag_of, wt)
        return tokens[:, 0], wt / total.index_select(0, bag_of), rows

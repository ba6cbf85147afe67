"""Segment (per-bag) reductions over packed instances.

A packed batch stores the instances of B bags back to back in one (P, ...) tensor; bag b owns
rows `offsets[b]:offsets[b+1]`. These helpers reduce within each bag without padding and are
written with scatter/index ops only, so they also run under `torch.func.vmap` when given a
precomputed `Segments` (the vectorised sweep relies on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Segments",
    "as_segments",
    "segment_ids",
    "segment_sum",
    "segment_max",
    "segment_mean",
    "segment_softmax",
    "segment_argmax",
    "segment_rank",
    "gather_ranges",
]


def segment_ids(offsets: torch.Tensor, n: int) -> torch.Tensor:
    """Bag index of each of the `n` packed instances, shape (n,) int64."""
    counts = offsets[1:] - offsets[:-1]
    bags = torch.arange(counts.numel(), device=offsets.device)
    return torch.repeat_interleave(bags, counts, output_size=n)


@dataclass
class Segments:
    """Precomputed bag layout of a packed batch: `ids` (P,), `offsets` (B+1,), `n_bags`."""

    ids: torch.Tensor
    offsets: torch.Tensor
    n_bags: int

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


def as_segments(offsets: torch.Tensor | Segments, n: int) -> Segments:
    """Turn `offsets` into a `Segments` for `n` instances (no-op for Segments)."""
    if isinstance(offsets, Segments):
        return offsets
    return Segments(segment_ids(offsets, n), offsets, offsets.numel() - 1)


def _expand(ids: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return ids.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


def segment_sum(x: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Sum of `x` (P, ...) within each bag -> (B, ...)."""
    seg = as_segments(offsets, x.shape[0])
    out = x.new_zeros((seg.n_bags, *x.shape[1:]))
    return out.index_add(0, seg.ids, x)


def segment_mean(x: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Mean of `x` within each bag (empty bags give zeros) -> (B, ...)."""
    seg = as_segments(offsets, x.shape[0])
    counts = seg.counts.clamp(min=1).to(x.dtype)
    return segment_sum(x, seg) / counts.view(-1, *([1] * (x.dim() - 1)))


def segment_max(x: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Elementwise max of `x` (P, ...) within each bag -> (B, ...); empty bags give 0.

    Gradients flow to the maximal entries (shared evenly between exact ties, like `amax`).
    """
    seg = as_segments(offsets, x.shape[0])
    out = x.new_zeros((seg.n_bags, *x.shape[1:]))
    return out.scatter_reduce(0, _expand(seg.ids, x), x, reduce="amax", include_self=False)


def segment_softmax(scores: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Softmax of `scores` (P,) or (P, K) within each bag (each column separately).

    Numerically stable: the per-bag maximum is subtracted before exponentiating.
    """
    seg = as_segments(offsets, scores.shape[0])
    peak = segment_max(scores.detach(), seg)
    e = torch.exp(scores - peak.index_select(0, seg.ids))
    denom = segment_sum(e, seg)
    return e / denom.index_select(0, seg.ids)


def segment_argmax(x: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Packed row index of the first maximum of `x` (P, ...) within each bag -> (B, ...).

    Empty bags get index 0 (callers must mask them).
    """
    seg = as_segments(offsets, x.shape[0])
    peak = segment_max(x.detach(), seg).index_select(0, seg.ids)
    rows = torch.arange(x.shape[0], device=x.device)
    rows = _expand(rows, x)
    cand = torch.where(x.detach() == peak, rows, torch.full_like(rows, x.shape[0]))
    first = torch.full((seg.n_bags, *x.shape[1:]), x.shape[0], dtype=torch.long, device=x.device)
    first = first.scatter_reduce(0, _expand(seg.ids, x), cand, reduce="amin", include_self=True)
    return torch.where(first >= x.shape[0], torch.zeros_like(first), first)


def segment_rank(scores: torch.Tensor, offsets: torch.Tensor | Segments) -> torch.Tensor:
    """Rank (0 = largest) of each score (P,) within its bag, ties broken by position."""
    seg = as_segments(offsets, scores.shape[0])
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    order = order[torch.argsort(seg.ids[order], stable=True)]
    pos = torch.arange(order.numel(), device=order.device)
    within = pos - seg.offsets[:-1].index_select(0, seg.ids[order])
    return torch.zeros_like(order).scatter(0, order, within)


def gather_ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenated `arange(s, s+c)` for every (start, count): the rows of selected bags."""
    total = int(counts.sum())
    excl = torch.cumsum(counts, 0) - counts
    rep_start = torch.repeat_interleave(starts - excl, counts, output_size=total)
    return torch.arange(total, device=starts.device) + rep_start

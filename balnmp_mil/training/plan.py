"""An epoch's layout: which instances of each bag are used and which bags share each step.

All draws come from a seeded CPU `torch.Generator`, so the plan (and with it a CPU run) repeats
bit for bit; `device_steps` copies an epoch's plan to the device once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from balnmp_mil.segment import gather_ranges, segment_rank
from balnmp_mil.training.config import FitConfig, resolve_bags_per_step

__all__ = ["EpochPlan", "batch_rows", "device_steps", "epoch_plan"]


@dataclass
class EpochPlan:
    """One epoch's instance selection (`rows`, `offsets` per bag) and bag batches."""

    rows: torch.Tensor | None
    offsets: torch.Tensor
    batches: list[torch.Tensor]


def epoch_plan(offsets: torch.Tensor, cfg: FitConfig, gen: torch.Generator) -> EpochPlan:
    """Subsample up to `cfg.instances_per_bag` rows per bag (kept in order), then shuffle bags
    into batches of `cfg.bags_per_step` ("auto": `resolve_bags_per_step` of the number of
    bags). All draws come from `gen` (CPU)."""
    instances_per_bag = cfg.instances_per_bag
    offsets = offsets.cpu()
    n_bags = offsets.numel() - 1
    rows = None
    if instances_per_bag is not None:
        n_inst = int(offsets[-1])
        keys = torch.rand(n_inst, generator=gen)
        keep = segment_rank(keys, offsets) < instances_per_bag
        rows = torch.nonzero(keep).flatten()
        counts = (offsets[1:] - offsets[:-1]).clamp(max=instances_per_bag)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    perm = torch.randperm(n_bags, generator=gen)
    per_step = resolve_bags_per_step(cfg.bags_per_step, n_bags)
    return EpochPlan(rows, offsets, list(torch.split(perm, per_step)))


def batch_rows(plan: EpochPlan, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed row indices of `bags` under `plan` and their offsets."""
    starts = plan.offsets[:-1][bags]
    counts = plan.offsets[1:][bags] - starts
    rows = gather_ranges(starts, counts)
    if plan.rows is not None:
        rows = plan.rows[rows]
    return rows, torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])


def device_steps(
    plan: EpochPlan, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """An epoch's steps as (rows, offsets, bags) on `device`: the plan is laid out on the
    CPU and copied once per epoch, so a step costs no host-device copy or synchronisation."""
    order = torch.cat(plan.batches)
    rows, offs = batch_rows(plan, order)
    rows_d, offs_d, order_d = (t.to(device) for t in (rows, offs, order))
    first = 0
    for bags in plan.batches:
        last = first + len(bags)
        r0, r1 = int(offs[first]), int(offs[last])
        yield rows_d[r0:r1], offs_d[first : last + 1] - r0, order_d[first:last]
        first = last

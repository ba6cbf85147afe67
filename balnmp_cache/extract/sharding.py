"""Splitting a slide list between jobs (`--shard I/N`, SLURM arrays) and GPUs (`--devices`).

Shards are a deterministic round-robin over slides sorted by id, so every job of an array
computes the same partition independently and each slide belongs to exactly one shard.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from balnmp_cache.errors import OptionError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise OptionError(
                f"shard {self.index}/{self.count} is out of range: use I/N with 0 <= I < N"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T], key: Sequence[str] | None = None) -> list[T]:
        """The items of this shard: round-robin over `items` ordered by `key` (default str)."""
        keys = [str(k) for k in (key if key is not None else items)]
        order = sorted(range(len(items)), key=lambda i: keys[i])
        return [items[i] for rank, i in enumerate(order) if rank % self.count == self.index]


def parse_shard(text: str) -> Shard:
    """Parse "I/N" (0-based I)."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise OptionError(f"--shard {text!r} is not of the form I/N, e.g. 0/4") from None
    return Shard(i, n)


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of this SLURM array task, or None outside an array job.

    Uses SLURM_ARRAY_TASK_ID relative to SLURM_ARRAY_TASK_MIN (so `--array=1-8` works as well
    as `--array=0-7`) and SLURM_ARRAY_TASK_COUNT.
    """
    env = os.environ if env is None else env
    task, count = env.get("SLURM_ARRAY_TASK_ID"), env.get("SLURM_ARRAY_TASK_COUNT")
    if not task or not count:
        return None
    try:
        index = int(task) - int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        return Shard(index, int(count))
    except ValueError as exc:
        raise OptionError(
            f"cannot derive a shard from SLURM_ARRAY_TASK_ID={task} "
            f"SLURM_ARRAY_TASK_COUNT={count}: {exc}; pass --shard I/N explicitly"
        ) from None


def resolve_shard(shard: str | Shard | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """An explicit shard wins; otherwise the SLURM array's; otherwise None (all slides)."""
    if isinstance(shard, Shard):
        return shard
    if shard:
        return parse_shard(shard)
    return shard_from_env(env)


def parse_devices(text: str | Sequence[str | int] | None) -> list[str]:
    """`--devices 0,1` -> ["cuda:0", "cuda:1"]; names like "cpu" or "cuda:2" pass through."""
    if text is None or text == "":
        return []
    parts = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    out = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        out.append(f"cuda:{int(part)}" if part.isdigit() else part)
    if len(set(out)) != len(out):
        raise OptionError(f"--devices {text!r} lists a device twice")
    return out

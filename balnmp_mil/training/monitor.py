"""Early stopping: which validation quantity ranks the epochs (`--monitor`) and the best so far.

A monitor is a registered `Monitor` (the history column it reads and whether higher is
better). AUC saturates on small validation sets (often 1.0 from the first epoch), so epochs
are ranked by (score, -validation loss): an untrained epoch tied at AUC 1.0 is not the one kept.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from balnmp_cache._registry import Registry

__all__ = ["MONITORS", "NO_KEY", "EarlyStopping", "Monitor", "choose_monitor", "monitor_score"]


@dataclass(frozen=True)
class Monitor:
    """A history column early stopping ranks epochs by; `sign` +1 when higher is better."""

    column: str
    sign: float
    needs_two_classes: bool = False  # undefined on a one-class validation set


MONITORS: Registry[Monitor] = Registry("monitor", "--monitor")
MONITORS.register("auc", Monitor("val_auc", 1.0, needs_two_classes=True))
MONITORS.register("loss", Monitor("val_loss", -1.0))

NO_KEY = (-math.inf, -math.inf)


def choose_monitor(name: str, val_labels: torch.Tensor | None, stacklevel: int = 2) -> str:
    """`name`, or "loss" (with a warning) when the validation set cannot rank by it."""
    if (val_labels is not None and MONITORS.get(name).needs_two_classes
            and val_labels.unique().numel() < 2):
        warnings.warn("validation set has one class; early stopping monitors loss",
                      stacklevel=stacklevel + 1)
        return "loss"
    return name


def monitor_score(row: Mapping[str, float], monitor: str) -> tuple[float, tuple[float, float]]:
    """The monitored score of an epoch's validation row (higher is better) and its ranking key
    (ties broken by validation loss)."""
    spec = MONITORS.get(monitor)
    score = spec.sign * row[spec.column]
    return score, (score, -row["val_loss"])


@dataclass
class EarlyStopping:
    """The best epoch so far by `monitor`, and how many epochs have passed without a better one."""

    monitor: str
    patience: int | None
    best_epoch: int
    best_score: float = -math.inf
    best_key: tuple[float, float] = NO_KEY
    stale: int = 0

    def update(self, row: Mapping[str, float], epoch: int) -> bool:
        """Rank this epoch; True when it is the best so far (the caller keeps its weights)."""
        score, key = monitor_score(row, self.monitor)
        if key > self.best_key:
            self.best_key, self.best_score, self.best_epoch, self.stale = key, score, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        """More than `patience` epochs without improvement."""
        return self.patience is not None and self.stale > self.patience

    def final_score(self) -> float:
        """The best epoch's monitored value in its own units (AUC, or validation loss)."""
        return MONITORS.get(self.monitor).sign * self.best_score

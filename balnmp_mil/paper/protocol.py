"""The BALNMP code's training protocol as `--protocol paper` (`code/train.py`,
`code/utils/utils.py` at github.com/bupt-ai-cz/BALNMP)."""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_PROTOCOL"]

# FitConfig field -> value, each the default of the official training script.
PAPER_PROTOCOL: dict[str, Any] = {
    "optimizer": "sgd",          # --optimizer default "SGD"
    "lr": 1e-4,                  # --lr 0.0001
    "momentum": 0.3,             # --momentum 0.3
    "weight_decay": 1e-3,        # --weight_decay 0.001 (L2, torch.optim.SGD)
    "schedule": "warm_restarts",  # CosineAnnealingWarmRestarts(T_0=20, T_mult=2), stepped first
    "epochs": 200,               # --epoch 200
    "train_stop_auc": 0.98,      # --train_stop_auc 0.98: stop after an epoch above it
    "class_weights": None,       # F.cross_entropy(output, label), unweighted
    "bags_per_step": 1,          # DataLoader(batch_size=1): one bag per step
    "monitor": "auc",            # best.pth: the epoch of the highest validation AUC
}

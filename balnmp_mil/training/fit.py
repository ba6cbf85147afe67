"""Training on a packed cohort: many bags per optimiser step, no padding, early stopping.

Randomness is owned here: the model's dropout draws from a forked, seeded global stream and
shuffling/subsampling from a seeded `torch.Generator`, so CPU reruns are bit-identical and the
caller's RNG state is left untouched. The options are `FitConfig`'s fields.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from balnmp_mil.data.cohort import Cohort
from balnmp_mil.errors import InputError
from balnmp_mil.models import MILModel, MILOutput
from balnmp_mil.training.config import FitConfig, resolve_bags_per_step
from balnmp_mil.training.inference import (
    auc_score,
    autocast,
    bag_logits,
    merge_bags,
    merge_patients,
    predict,
)
from balnmp_mil.training.monitor import NO_KEY, EarlyStopping, choose_monitor, monitor_score
from balnmp_mil.training.optim import OPTIMIZERS, SCHEDULES
from balnmp_mil.training.plan import EpochPlan, batch_rows, device_steps, epoch_plan

__all__ = [
    "NO_KEY",
    "OPTIMIZERS",
    "EpochPlan",
    "FitConfig",
    "FitResult",
    "auc_score",
    "bag_logits",
    "batch_rows",
    "class_weight_vector",
    "device_steps",
    "epoch_plan",
    "fit",
    "fit_config",
    "lr_at",
    "make_optimizer",
    "merge_bags",
    "monitor_score",
    "predict",
]


@dataclass
class FitResult:
    """The trained model (best epoch restored when validating), per-epoch history."""

    model: MILModel
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float | None
    config: FitConfig = field(default_factory=FitConfig)


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` over the model's parameters (see `OPTIMIZERS`)."""
    entry = OPTIMIZERS.get(cfg.optimizer)
    return entry.build(list(model.parameters()), cfg.lr, cfg.weight_decay, cfg.momentum)


def lr_at(cfg: FitConfig, epoch: int, base: float | None = None) -> float:
    """Learning rate of `epoch` (0-based) under `cfg.schedule` (see `SCHEDULES`)."""
    lr = cfg.lr if base is None else base
    return SCHEDULES.get(cfg.schedule)(lr, epoch, cfg.epochs)


def class_weight_vector(
    spec: str | Sequence[float] | None, labels: torch.Tensor, n_classes: int
) -> torch.Tensor | None:
    """None, "balanced" (n / (C * n_c), like scikit-learn) or explicit per-class weights."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise InputError(f"class_weights {spec!r} (--class-weights): must be balanced, "
                             "none or one weight per class")
        counts = torch.bincount(labels.cpu(), minlength=n_classes).double()
        w = labels.numel() / (n_classes * counts.clamp(min=1))
        return w.float()
    w = torch.as_tensor(list(spec), dtype=torch.float32)
    if w.numel() != n_classes:
        raise InputError(f"class_weights (--class-weights) has {w.numel()} entries for "
                         f"{n_classes} classes; give one weight per class")
    return w


def fit_config(options: dict[str, Any], base: FitConfig | None = None) -> FitConfig:
    """`base` (or the defaults) with `options` (FitConfig field names) applied and checked."""
    known = [f.name for f in fields(FitConfig)]
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"unknown fit options {sorted(unknown)}; valid: {sorted(known)}")
    base = base or FitConfig()
    return FitConfig(**{**{name: getattr(base, name) for name in known}, **options})


def fit(
    model: MILModel, train: Cohort, val: Cohort | None = None, **options: Any
) -> FitResult:
    """Train `model` on `train`; with `val`, keep the best epoch by `monitor`.

    Options are the fields of `FitConfig` (or `config=FitConfig(...)`); the result's config
    holds the bags per step used (`bags_per_step="auto"` resolved for `train`'s bags).
    """
    base = options.pop("config", None)
    cfg = fit_config(options, base)
    cfg = replace(cfg, bags_per_step=resolve_bags_per_step(cfg.bags_per_step, train.n_bags))
    device = torch.device(cfg.device) if cfg.device is not None else train.device
    train = train.to(device) if train.device != device else train
    if val is not None and val.device != device:
        val = val.to(device)
    model.to(device)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        return _fit(model, train, val, cfg, device)


def _loss(out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    loss = F.cross_entropy(out.logits.float(), y, weight=weight)
    return loss if out.aux_loss is None else loss + out.aux_loss.float()


class _Trainer:
    """What one `fit` holds between epochs: the optimiser, scaler, generator and class weights."""

    def __init__(self, model: MILModel, train: Cohort, cfg: FitConfig,
                 device: torch.device) -> None:
        self.model, self.train, self.cfg, self.device = model, train, cfg, device
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.standardizes(model):
            model.set_input_stats(train.features)
        self.y_bags = train.bag_labels
        weight = class_weight_vector(cfg.class_weights, self.y_bags, model.n_classes)
        self.weight = None if weight is None else weight.to(device)
        self.clin = train.bag_clinical()
        self.probs: torch.Tensor | None = None
        self.opt = make_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                           and not torch.cuda.is_bf16_supported())

    def epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; its history row (epoch, lr, mean training loss)."""
        lr = lr_at(self.cfg, epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        plan = epoch_plan(self.train.offsets, self.cfg, self.gen)
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # read once per epoch
        if self.cfg.train_stop_auc is not None:  # the epoch's own training outputs, per bag
            self.probs = torch.zeros(self.train.n_bags, self.model.n_classes, device=self.device)
        for rows, offs, bags in device_steps(plan, self.device):
            total += self.step(rows, offs, bags) * bags.numel()
        row = {"epoch": epoch, "lr": lr, "train_loss": float(total) / max(self.train.n_bags, 1)}
        if self.probs is not None:
            merged = merge_patients(self.probs, self.train, self.cfg.merge)
            row["train_auc"] = auc_score(self.train.labels.cpu().numpy(), merged)
        return row

    def step(self, rows: torch.Tensor, offs: torch.Tensor, bags: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the packed `bags`; the loss (detached, float64)."""
        x = self.train.features.index_select(0, rows).float()
        y = self.y_bags.index_select(0, bags)
        c = None if self.clin is None else self.clin.index_select(0, bags)
        with autocast(self.device, self.cfg.amp):
            out = self.model(x, offs, c, y)
        loss = _loss(out, y, self.weight)
        if self.probs is not None:
            self.probs[bags] = torch.softmax(out.logits.detach().float(), 1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach().double()


def _epochs(cfg: FitConfig) -> Iterable[int]:
    show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    if not show:
        return range(cfg.epochs)
    from tqdm.auto import tqdm

    return tqdm(range(cfg.epochs), desc="fit", unit="epoch")


def _fit(
    model: MILModel, train: Cohort, val: Cohort | None, cfg: FitConfig, device: torch.device
) -> FitResult:
    trainer = _Trainer(model, train, cfg, device)
    monitor = choose_monitor(cfg.monitor, None if val is None else val.labels, stacklevel=3)
    stop = EarlyStopping(monitor, cfg.patience, best_epoch=cfg.epochs - 1)
    history: list[dict[str, Any]] = []
    best_state = None
    for epoch in _epochs(cfg):
        t0 = time.perf_counter()
        row = trainer.epoch(epoch)
        if val is not None:
            row.update(_validate(model, val, cfg))
            if stop.update(row, epoch):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if val is not None and stop.exhausted or _train_auc_reached(row, cfg):
            break
    best_epoch = stop.best_epoch
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
    model.eval()
    final = None if val is None else stop.final_score()
    return FitResult(model, history, best_epoch, final, cfg)


def _train_auc_reached(row: dict[str, Any], cfg: FitConfig) -> bool:
    """The paper's stop: this epoch's training AUC above `train_stop_auc` (NaN never is)."""
    return cfg.train_stop_auc is not None and row.get("train_auc", 0.0) > cfg.train_stop_auc


def _validate(model: MILModel, val: Cohort, cfg: FitConfig) -> dict[str, float]:
    logits, _ = bag_logits(model, val, amp=cfg.amp)
    y = val.bag_labels
    loss = float(F.cross_entropy(logits, y))
    probs = merge_patients(torch.softmax(logits, 1), val, cfg.merge)
    return {"val_loss": loss, "val_auc": auc_score(val.labels.cpu().numpy(), probs)}

"""Training and prediction on a packed cohort: many bags per optimiser step, no padding.

Randomness is owned here: the model's dropout draws from a forked, seeded global stream and
shuffling/subsampling from a seeded ``torch.Generator``, so CPU reruns are bit-identical and the
caller's RNG state is left untouched.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from balnmp_mil.data.cohort import Cohort
from balnmp_mil.models import MILModel, MILOutput
from balnmp_mil.segment import gather_ranges, segment_rank

__all__ = [
    "FitConfig",
    "FitResult",
    "fit",
    "predict",
    "bag_logits",
    "class_weight_vector",
    "epoch_plan",
    "device_steps",
    "lr_at",
    "OPTIMIZERS",
    "make_optimizer",
]


@dataclass
class FitConfig:
    """Training options (see docs/models.md)."""

    epochs: int = 100
    lr: float = 2e-4
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    bags_per_step: int = 8
    instances_per_bag: int | None = None
    class_weights: str | Sequence[float] | None = "balanced"
    patience: int | None = None
    monitor: str = "auc"
    seed: int = 0
    device: str | None = None
    amp: bool = True
    momentum: float = 0.9
    merge: str = "mean"
    progress: bool = False
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant'; got {self.schedule!r}")
        if self.monitor not in ("auc", "loss"):
            raise ValueError(f"monitor must be 'auc' or 'loss'; got {self.monitor!r}")
        if self.epochs < 1 or self.bags_per_step < 1:
            raise ValueError("epochs and bags_per_step must be >= 1")
        if self.instances_per_bag is not None and self.instances_per_bag < 1:
            raise ValueError("instances_per_bag must be >= 1 or None")


@dataclass
class FitResult:
    """The trained model (best epoch restored when validating), per-epoch history."""

    model: MILModel
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float | None
    config: FitConfig = field(default_factory=FitConfig)


def _fused(params: list[torch.Tensor]) -> dict[str, bool]:
    """Adam/AdamW's fused kernel (one launch per step) when every parameter is on CUDA; on
    CPU the default implementation, which is what CLAM-style loops use too."""
    return {"fused": True} if params and all(p.is_cuda for p in params) else {}


OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], FitConfig], torch.optim.Optimizer]] = {
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay, **_fused(p)),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay,
                                            **_fused(p)),
    "sgd": lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum,
                                        weight_decay=c.weight_decay),
}


def make_optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` over the model's parameters (see :data:`OPTIMIZERS`)."""
    return OPTIMIZERS[cfg.optimizer](list(model.parameters()), cfg)


def lr_at(cfg: FitConfig, epoch: int, base: float | None = None) -> float:
    """Learning rate of ``epoch`` (0-based): constant, or cosine from lr down to 0."""
    lr = cfg.lr if base is None else base
    if cfg.schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def class_weight_vector(
    spec: str | Sequence[float] | None, labels: torch.Tensor, n_classes: int
) -> torch.Tensor | None:
    """None, "balanced" (n / (C * n_c), like scikit-learn) or explicit per-class weights."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a list or None; got {spec!r}")
        counts = torch.bincount(labels.cpu(), minlength=n_classes).double()
        w = labels.numel() / (n_classes * counts.clamp(min=1))
        return w.float()
    w = torch.as_tensor(list(spec), dtype=torch.float32)
    if w.numel() != n_classes:
        raise ValueError(f"class_weights has {w.numel()} entries for {n_classes} classes")
    return w


@dataclass
class EpochPlan:
    """One epoch's instance selection (``rows``, ``offsets`` per bag) and bag batches."""

    rows: torch.Tensor | None
    offsets: torch.Tensor
    batches: list[torch.Tensor]


def epoch_plan(offsets: torch.Tensor, cfg: FitConfig, gen: torch.Generator) -> EpochPlan:
    """Subsample up to ``instances_per_bag`` rows per bag (kept in order), then shuffle bags
    into batches of ``bags_per_step``. All draws come from ``gen`` (CPU)."""
    offsets = offsets.cpu()
    n_bags = offsets.numel() - 1
    rows = None
    if cfg.instances_per_bag is not None:
        n_inst = int(offsets[-1])
        keys = torch.rand(n_inst, generator=gen)
        keep = segment_rank(keys, offsets) < cfg.instances_per_bag
        rows = torch.nonzero(keep).flatten()
        counts = (offsets[1:] - offsets[:-1]).clamp(max=cfg.instances_per_bag)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    perm = torch.randperm(n_bags, generator=gen)
    return EpochPlan(rows, offsets, list(torch.split(perm, cfg.bags_per_step)))


def batch_rows(plan: EpochPlan, bags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed row indices of ``bags`` under ``plan`` and their offsets."""
    starts = plan.offsets[:-1][bags]
    counts = plan.offsets[1:][bags] - starts
    rows = gather_ranges(starts, counts)
    if plan.rows is not None:
        rows = plan.rows[rows]
    return rows, torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])


def device_steps(
    plan: EpochPlan, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """An epoch's steps as (rows, offsets, bags) on ``device``: the plan is laid out on the
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


def _autocast(device: torch.device, amp: bool) -> Any:
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def _loss(out: MILOutput, y: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    loss = F.cross_entropy(out.logits.float(), y, weight=weight)
    return loss if out.aux_loss is None else loss + out.aux_loss.float()


def _device(cfg: FitConfig, cohort: Cohort) -> torch.device:
    return torch.device(cfg.device) if cfg.device is not None else cohort.device


def fit(
    model: MILModel, train: Cohort, val: Cohort | None = None, **options: Any
) -> FitResult:
    """Train ``model`` on ``train``; with ``val``, keep the best epoch by ``monitor``.

    Options are the fields of :class:`FitConfig` (or ``config=FitConfig(...)``).
    """
    cfg = options.pop("config", None) or FitConfig()
    known = {f.name for f in fields(FitConfig)}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown fit options {sorted(unknown)}; valid: {sorted(known)}")
    cfg = FitConfig(**{**asdict(cfg), **options})
    device = _device(cfg, train)
    train = train.to(device) if train.device != device else train
    if val is not None and val.device != device:
        val = val.to(device)
    model.to(device)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        return _fit(model, train, val, cfg, device)


def _fit(
    model: MILModel, train: Cohort, val: Cohort | None, cfg: FitConfig, device: torch.device
) -> FitResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.standardize:
        model.set_input_stats(train.features)
    y_bags = train.bag_labels
    weight = class_weight_vector(cfg.class_weights, y_bags, model.n_classes)
    weight = None if weight is None else weight.to(device)
    clin = train.bag_clinical()
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                  and not torch.cuda.is_bf16_supported())
    monitor = cfg.monitor
    if val is not None and monitor == "auc" and val.labels.unique().numel() < 2:
        warnings.warn("validation set has one class; early stopping monitors loss", stacklevel=3)
        monitor = "loss"
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, stale = -math.inf, cfg.epochs - 1, None, 0
    best_key = NO_KEY
    epochs: Any = range(cfg.epochs)
    if cfg.progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="fit", unit="epoch")
    for epoch in epochs:
        t0 = time.perf_counter()
        lr = lr_at(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        plan = epoch_plan(train.offsets, cfg, gen)
        total = torch.zeros((), dtype=torch.float64, device=device)  # read once per epoch
        for rows, offs, bags in device_steps(plan, device):
            x = train.features.index_select(0, rows).float()
            y = y_bags.index_select(0, bags)
            c = None if clin is None else clin.index_select(0, bags)
            with _autocast(device, cfg.amp):
                out = model(x, offs, c, y)
            loss = _loss(out, y, weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.detach().double() * bags.numel()
        train_loss = float(total) / max(train.n_bags, 1)
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss}
        if val is not None:
            row.update(_validate(model, val, cfg))
            score, key = monitor_score(row, monitor)
            if key > best_key:
                best_key, best_score, best_epoch, stale = key, score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if cfg.patience is not None and val is not None and stale > cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history) - 1
    model.eval()
    final = None if val is None else (best_score if monitor == "auc" else -best_score)
    return FitResult(model, history, best_epoch, final, cfg)


def _validate(model: MILModel, val: Cohort, cfg: FitConfig) -> dict[str, float]:
    logits, _ = bag_logits(model, val, amp=cfg.amp)
    y = val.bag_labels
    loss = float(F.cross_entropy(logits, y))
    probs = merge_patients(torch.softmax(logits, 1), val, cfg.merge)
    return {"val_loss": loss, "val_auc": auc_score(val.labels.cpu().numpy(), probs)}


NO_KEY = (-math.inf, -math.inf)


def monitor_score(row: dict[str, Any], monitor: str) -> tuple[float, tuple[float, float]]:
    """The monitored score of an epoch's validation row (higher is better) and its ranking key.

    AUC saturates on small validation sets (often 1.0 from the first epoch): ties are broken
    by validation loss, so an untrained epoch is not the one kept.
    """
    score = row["val_auc"] if monitor == "auc" else -row["val_loss"]
    return score, (score, -row["val_loss"])


def auc_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of the last class, or macro one-vs-rest AUC; nan with one class present."""
    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    present = np.unique(y)
    if len(present) < probs.shape[1]:
        return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


@torch.no_grad()
def bag_logits(
    model: nn.Module, cohort: Cohort, max_instances: int = 1 << 18, amp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eval-mode logits (B, C) float32 and attention (P,) (or None), in chunks of bags."""
    was_training = model.training
    model.eval()
    device = cohort.device
    offs = cohort.offsets.cpu()
    clin = cohort.bag_clinical()
    logits, atts = [], []
    b = 0
    while b < cohort.n_bags:
        e = int(torch.searchsorted(offs, offs[b] + max_instances, right=True)) - 1
        e = min(max(e, b + 1), cohort.n_bags)
        x = cohort.features[int(offs[b]) : int(offs[e])].float()
        o = (offs[b : e + 1] - offs[b]).to(device)
        c = None if clin is None else clin[b:e]
        with _autocast(device, amp):
            out = model(x, o, c)
        logits.append(out.logits.float())
        atts.append(None if out.attention is None else out.attention.float())
        b = e
    model.train(was_training)
    att = None if any(a is None for a in atts) else torch.cat(atts)
    return torch.cat(logits), att


def merge_patients(bag_probs: torch.Tensor, cohort: Cohort, merge: str = "mean") -> np.ndarray:
    """Bag probabilities (B, C) -> patient probabilities (n_patients, C) by mean or max."""
    return merge_bags(bag_probs, cohort.bag_patient, len(cohort), merge)


def merge_bags(
    bag_probs: torch.Tensor, bag_patient: torch.Tensor, n_patients: int, merge: str = "mean"
) -> np.ndarray:
    """Merge bag rows into ``n_patients`` rows by their ``bag_patient`` index (mean or max)."""
    idx = bag_patient.to(bag_probs.device)
    if bag_probs.shape[0] == n_patients and torch.equal(
        idx.cpu(), torch.arange(n_patients)
    ):
        return bag_probs.cpu().double().numpy()
    shape = (n_patients, bag_probs.shape[1])
    if merge == "mean":
        s = bag_probs.new_zeros(shape).index_add(0, idx, bag_probs)
        n = torch.bincount(idx, minlength=n_patients).clamp(min=1).unsqueeze(1)
        out = s / n
    elif merge == "max":
        m = bag_probs.new_zeros(shape).scatter_reduce(
            0, idx.unsqueeze(1).expand_as(bag_probs), bag_probs, "amax", include_self=False
        )
        out = m / m.sum(1, keepdim=True)
    else:
        raise ValueError(f"merge must be 'mean' or 'max'; got {merge!r}")
    return out.cpu().double().numpy()


def predict(
    model: nn.Module, cohort: Cohort, merge: str = "mean", return_attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Patient-level probabilities (n_patients, C); with ``return_attention`` also the
    per-instance attention (P,) in cohort row order (None for models without attention)."""
    model.to(cohort.device)
    logits, att = bag_logits(model, cohort)
    probs = merge_patients(torch.softmax(logits, 1), cohort, merge)
    if return_attention:
        return probs, None if att is None else att.cpu().numpy()
    return probs

"""MIL accuracy benchmark: `fit`'s defaults vs a one-bag-per-step loop, k-fold CV, small cohorts.

Generates cohorts of several sizes (default 50, 100, 300 and 1,000 bags) with a planted
instance-level signal: in a positive bag (~40 % of bags) a minority of the instances (5-15 %)
are shifted along one hidden direction. For each size and seed it runs stratified k-fold
cross-validation of every method on the same folds from the same initial weights:

- `default`: `fit(build_model("abmil", ...), train, seed=seed, epochs=E)` and `predict`, as a
  user calls them, every other training option at its default; a number N instead runs the
  same with an explicit `bags_per_step=N` (`--ours default 8 1`);
- `per-bag`, the reference: a plain torch loop written here, independent of `fit` (its own
  z-scoring, balanced class weights, `torch.optim.Adam`, cosine schedule per epoch, one bag per
  optimiser step through the model's plain per-bag forward `forward_one`), same architecture,
  learning rate, weight decay and epochs.

It prints per run the pooled out-of-fold accuracy and AUC and the seconds, then per size the
mean over seeds with its spread (sd over seeds: the noise), the paired difference
method - reference (mean ± its standard error over seeds) and whether that difference is within
noise (|mean| <= the reference's sd over seeds).

The default (3 seeds, 3 folds, 20 epochs) is sized for a shared 2-core CPU: a few minutes per
size and seed, most of it the reference loop at 1,000 bags; each size (and seed) can run as its
own process (`--sizes 1000 --seeds 2`). `fit`'s own default is 100 epochs (`--epochs 100`):
fewer epochs are the harder test for packed steps, whose deficit is in optimiser steps.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from balnmp_mil.data.cohort import Cohort, cohort_from_bags
from balnmp_mil.models import build_model
from balnmp_mil.training import FitConfig, fit, predict

REFERENCE = "per-bag"


@dataclass
class Score:
    """One cross-validation run: pooled out-of-fold accuracy and AUC, seconds of all folds."""

    acc: float
    auc: float
    seconds: float


def make_cohort(n_bags: int, instances: int, dim: int, signal: float, seed: int) -> Cohort:
    """Bags of ~`instances` rows (log-normal sizes, at least 4); in a positive bag 5-15 % of
    the rows carry `signal` x a hidden unit direction."""
    rng = np.random.default_rng([seed, n_bags])
    sizes = np.clip(rng.lognormal(np.log(instances) - 0.125, 0.5, n_bags), 4, None).astype(int)
    labels = (rng.random(n_bags) < 0.4).astype(int)
    labels[:2] = [0, 1]  # both classes, however small the cohort
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    bags = []
    for n, y in zip(sizes, labels, strict=True):
        x = rng.normal(size=(n, dim))
        if y:
            k = max(1, round(n * rng.uniform(0.05, 0.15)))
            x[rng.choice(n, k, replace=False)] += signal * direction
        bags.append(x.astype(np.float32))
    return cohort_from_bags(bags, labels)


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """`k` test folds, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    start = 0
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        fold_of[members] = (start + np.arange(len(members))) % k
        start += len(members)
    return [np.flatnonzero(fold_of == f) for f in range(k)]


def _bags(cohort: Cohort) -> list[torch.Tensor]:
    offs = cohort.offsets.tolist()
    return [cohort.features[offs[b] : offs[b + 1]].float() for b in range(cohort.n_bags)]


def reference_fit(model: torch.nn.Module, train: Cohort, epochs: int, seed: int,
                  lr: float, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One bag per optimiser step, written without `fit`; returns the z-scoring (mean, std)."""
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)
    mean = train.features.float().mean(0)
    std = train.features.float().std(0, correction=0).clamp_min(1e-6)
    bags = [(b - mean) / std for b in _bags(train)]
    y = train.labels.long()
    counts = torch.bincount(y, minlength=train.n_classes).double()
    weight = (len(y) / (train.n_classes * counts.clamp(min=1))).float()  # "balanced"
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        for b in torch.randperm(len(bags), generator=gen).tolist():
            out = model.forward_one(bags[b])
            loss = F.cross_entropy(out.logits, y[b : b + 1], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return mean, std


@torch.no_grad()
def reference_predict(model: torch.nn.Module, cohort: Cohort, mean: torch.Tensor,
                      std: torch.Tensor) -> np.ndarray:  # fmt: skip
    model.eval()
    rows = [torch.softmax(model.forward_one((b - mean) / std).logits, 1) for b in _bags(cohort)]
    return torch.cat(rows).numpy()


def cross_validate(cohort: Cohort, folds: list[np.ndarray], seed: int, epochs: int,
                   method: str) -> Score:  # fmt: skip
    """Out-of-fold probabilities of `method` ("default", a bags-per-step count or the
    reference) over `folds`; their accuracy and AUC."""
    y = cohort.labels.numpy()
    probs = np.zeros((len(y), cohort.n_classes))
    defaults = FitConfig()
    t0 = time.perf_counter()
    for test in folds:
        train, held_out = cohort.subset(np.setdiff1d(np.arange(len(y)), test)), cohort.subset(test)
        model = build_model("abmil", cohort.feature_dim, cohort.n_classes, seed=seed)
        if method == REFERENCE:
            stats = reference_fit(model, train, epochs, seed, defaults.lr, defaults.weight_decay)
            probs[test] = reference_predict(model, held_out, *stats)
            continue
        options = {} if method == "default" else {"bags_per_step": int(method)}
        probs[test] = predict(fit(model, train, epochs=epochs, seed=seed, **options).model,
                              held_out)
    seconds = time.perf_counter() - t0
    return Score(float(np.mean(probs.argmax(1) == y)), float(roc_auc_score(y, probs[:, 1])),
                 seconds)


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _paired(d: np.ndarray, noise: float) -> str:
    """Mean ± standard error of a paired difference; within noise when |mean| is at most
    `noise`, the reference's sd over seeds (with one seed there is no noise to compare)."""
    se = _sd(d) / math.sqrt(len(d))
    verdict = "within noise" if abs(d.mean()) <= noise + 1e-9 else "OUTSIDE noise"
    return f"{d.mean():+.3f} ± {se:.3f} {verdict if len(d) > 1 else ''}"


def summarise(size: int, runs: dict[str, list[Score]]) -> None:
    """Per method: mean (sd) over seeds, seconds, speed vs reference, paired difference."""
    ref = runs[REFERENCE]
    ref_acc, ref_auc = np.array([s.acc for s in ref]), np.array([s.auc for s in ref])
    ref_t = float(np.median([s.seconds for s in ref]))
    print(f"{size:>5} bags  {REFERENCE:>8}: acc {ref_acc.mean():.3f} (sd {_sd(ref_acc):.3f})  "
          f"AUC {ref_auc.mean():.3f} (sd {_sd(ref_auc):.3f})  {ref_t:7.1f}s")
    for method, scores in runs.items():
        if method == REFERENCE:
            continue
        acc, auc = np.array([s.acc for s in scores]), np.array([s.auc for s in scores])
        t = float(np.median([s.seconds for s in scores]))
        print(f"{'':>11}{method:>8}: acc {acc.mean():.3f} (sd {_sd(acc):.3f})  AUC "
              f"{auc.mean():.3f} (sd {_sd(auc):.3f})  {t:7.1f}s {ref_t / t:4.1f}x | - ref: acc "
              f"{_paired(acc - ref_acc, _sd(ref_acc))}, AUC {_paired(auc - ref_auc, _sd(ref_auc))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="each seed draws its own cohort, folds, initial weights and training")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20,
                    help="every method (fit's default is 100; fewer epochs are the harder test "
                    "for packed steps, whose deficit is in optimiser steps)")
    ap.add_argument("--instances", type=int, default=24, help="mean instances per bag")
    ap.add_argument("--dim", type=int, default=32, help="feature dimension")
    ap.add_argument("--signal", type=float, default=3.0,
                    help="shift of the signal instances along the hidden direction")
    ap.add_argument("--ours", nargs="+", default=["default"],
                    help="'default' (every option at fit's default) and/or explicit "
                    "bags-per-step counts, e.g. --ours default 8 1")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: these small matrices gain nothing from more)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    methods = [*args.ours, REFERENCE]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}; {args.folds}-fold CV, {args.epochs} epochs, ~"
          f"{args.instances} instances x {args.dim} per bag, signal {args.signal}, seeds "
          f"{args.seeds}")
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # first use imports torch._dynamo
    results: dict[int, dict[str, list[Score]]] = {}
    for size in args.sizes:
        results[size] = {m: [] for m in methods}
        for seed in args.seeds:
            cohort = make_cohort(size, args.instances, args.dim, args.signal, seed)
            folds = stratified_folds(cohort.labels.numpy(), args.folds, seed)
            cells = []
            for method in methods:
                score = cross_validate(cohort, folds, seed, args.epochs, method)
                results[size][method].append(score)
                cells.append(f"{method} acc {score.acc:.3f} AUC {score.auc:.3f} "
                             f"{score.seconds:.1f}s")
            print(f"size {size:>5} seed {seed}: " + " | ".join(cells), flush=True)
    print("\nmean (sd over seeds = the noise); method - reference, paired by seed: mean ± "
          "standard error, within noise when |mean| <= the reference's sd")
    for size, runs in results.items():
        summarise(size, runs)


if __name__ == "__main__":
    main()

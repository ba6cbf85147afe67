"""MIL engine benchmark: packed training vs a batch-size-1 per-bag loop, sweep vs sequential.

Makes a BALNMP-scale cohort (``--scale 1``: 1,058 bags, ~170,000 instances x 1,024, a planted
signal in a few instances of positive bags), writes it as a per-slide store + pack, loads it
with ``load_cohort`` and prints, measured in this one run on this machine:

- seconds/epoch and test AUC of ``fit`` (many bags per step) and of a CLAM-style loop (one bag
  per optimiser step, same model, data, optimiser, schedule, class weights and epochs);
- a 20-model sweep (5 folds x 2 seeds x 2 learning rates) vectorised vs 20 sequential fits;
- peak memory of loading + one epoch (a fresh subprocess) relative to the feature bytes.

Default ``--scale 0.1`` keeps it to a few minutes on a small CPU. Epoch times are reported as
the best and the median epoch, since a shared machine's load varies from minute to minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from balnmp_mil.data.cohort import Cohort, load_cohort
from balnmp_mil.models import build_model
from balnmp_mil.training.fit import (
    FitConfig,
    auc_score,
    class_weight_vector,
    fit,
    lr_at,
    make_optimizer,
    predict,
)
from balnmp_mil.training.sweep import sweep

N_BAGS, N_INSTANCES = 1058, 170_000


def make_store(out: Path, scale: float, dim: int, seed: int) -> tuple[Path, pd.DataFrame]:
    """Per-slide HDF5 store + pack of a synthetic cohort; returns (pack path, labels)."""
    from balnmp_cache.store import FeatureStore
    from balnmp_cache.store.pack import pack_store

    rng = np.random.default_rng(seed)
    n_bags = max(20, round(N_BAGS * scale))
    mean = N_INSTANCES / N_BAGS
    sizes = np.clip(rng.lognormal(np.log(mean) - 0.18, 0.6, n_bags), 8, None).astype(int)
    labels = (rng.random(n_bags) < 0.38).astype(int)  # BCNB: ~38% N+
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    attrs = {"encoder": "synthetic", "weights": "none", "target_mpp": 0.5}
    with FeatureStore(out / "store", mode="a", format="h5") as store:
        for i, (n, y) in enumerate(zip(sizes, labels, strict=True)):
            x = rng.normal(size=(n, dim)).astype(np.float32)
            if y:
                k = max(1, int(n * rng.uniform(0.05, 0.15)))
                x[:k] += 3.0 * direction
            coords = np.zeros((n, 2), dtype=np.int64)
            with store.writer(f"b{i:04d}", dim, "float16", dict(attrs), {}) as w:
                w.append(x.astype(np.float16), coords)
    pack = pack_store(out / "store", out / "cohort.h5", progress=False)
    return pack, pd.DataFrame({"slide_id": [f"b{i:04d}" for i in range(n_bags)],
                               "label": labels})


def split(cohort: Cohort, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = cohort.labels.numpy()
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: max(1, (y == c).sum() // 5)]
                           for c in np.unique(y)])
    return np.setdiff1d(np.arange(len(y)), test), np.sort(test)


def per_bag_loop(model: torch.nn.Module, train: Cohort, cfg: FitConfig) -> list[float]:
    """CLAM-style training: one bag per forward/backward/optimiser step."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)  # the same optimiser fit builds (Adam defaults on CPU)
    weight = class_weight_vector(cfg.class_weights, train.bag_labels, train.n_classes)
    offs, y = train.offsets.tolist(), train.bag_labels
    seconds = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        model.train()
        for b in torch.randperm(train.n_bags, generator=gen).tolist():
            out = model.forward_bag(train.features[offs[b] : offs[b + 1]].float())
            loss = F.cross_entropy(out.logits, y[b : b + 1], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if train.features.is_cuda:
            torch.cuda.synchronize()  # queued kernels belong to this epoch
        seconds.append(time.perf_counter() - t0)
    return seconds


def _rss(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(pack: str, labels: str, dtype: str) -> None:
    """Fresh process: peak RSS growth of load_cohort + one epoch vs the feature bytes."""
    fit(build_model("abmil", 8, 2), load_cohort_stub(), epochs=1)  # import/allocator warm-up
    _reset_peak()
    base = _rss("VmRSS")
    cohort = load_cohort(pack, labels, dtype=getattr(torch, dtype))
    loaded = _rss("VmHWM")
    fit(build_model("abmil", cohort.feature_dim, 2, seed=0), cohort, epochs=1)
    peak = _rss("VmHWM")
    nbytes = cohort.features.numel() * cohort.features.element_size()
    print(json.dumps({"feature_bytes": nbytes, "load_peak": loaded - base,
                      "train_peak": peak - base}))


def load_cohort_stub() -> Cohort:
    from balnmp_mil.data.cohort import cohort_from_bags

    return cohort_from_bags([np.ones((3, 8)), np.zeros((2, 8))], [0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=0.1, help="1.0 = BALNMP (1,058 bags)")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sweep-epochs", type=int, default=2)
    ap.add_argument("--long-epochs", type=int, default=0,
                    help="also time load_cohort(pack) + a fit of this many epochs (the GPU "
                    "target is 100 epochs in <= 5 s); 0: skip")
    ap.add_argument("--bags-per-step", nargs="+", default=["auto"],
                    help="ours is timed for each value, a number or auto (fit's default; the "
                    "loop once); the long run and the sweep use the first")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is; "
                    "1 is much faster on a busy 2-core machine)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip", nargs="*", default=[], choices=["loop", "sweep", "memory"])
    ap.add_argument("--memory-child", nargs=3, metavar=("PACK", "LABELS", "DTYPE"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, device {args.device}")
    t0 = time.perf_counter()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # first use imports torch._dynamo
    print(f"torch.optim first-use import (once per process, not counted below): "
          f"{time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        pack, labels = make_store(Path(tmp), args.scale, args.dim, seed=0)
        labels.to_csv(Path(tmp) / "labels.csv", index=False)
        print(f"cohort written in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        cohort = load_cohort(pack, labels, device=args.device)
        load_s = time.perf_counter() - t0
        print(f"load_cohort(pack): {load_s:.2f}s  bags={cohort.n_bags} "
              f"instances={cohort.n_instances} dim={cohort.feature_dim}")
        tr_idx, te_idx = split(cohort, seed=0)
        train, test = cohort.subset(tr_idx), cohort.subset(te_idx)
        ours: dict[str, list[float]] = {}
        for bps in args.bags_per_step:
            cfg = FitConfig(epochs=args.epochs, lr=args.lr, bags_per_step=bps)
            t0 = time.perf_counter()
            res = fit(build_model("abmil", cohort.feature_dim, 2, seed=0), train, config=cfg)
            total = time.perf_counter() - t0
            used = res.config.bags_per_step
            bps = f"{used} ({bps})" if str(used) != bps else bps
            ours[bps] = [h["seconds"] for h in res.history]
            auc = auc_score(test.labels.cpu().numpy(), predict(res.model, test))
            print(f"ours     : {bps} bags/step {min(ours[bps]):.3f} s/epoch best (median "
                  f"{np.median(ours[bps]):.3f}; {args.epochs} epochs {total:.1f}s, "
                  f"+load {load_s + total:.1f}s)  test AUC {auc:.3f}")
        if "loop" not in args.skip:
            model = build_model("abmil", cohort.feature_dim, 2, seed=0).to(args.device)
            secs = per_bag_loop(model, train, FitConfig(epochs=args.epochs, lr=args.lr))
            loop_auc = auc_score(test.labels.cpu().numpy(), predict(model, test))
            print(f"per-bag  : {min(secs):.3f} s/epoch best (median {np.median(secs):.3f})  "
                  f"test AUC {loop_auc:.3f}")
            for bps, o in ours.items():
                print(f"  -> ours at {bps} bags/step {min(secs) / min(o):.1f}x faster (best), "
                      f"{np.median(secs) / np.median(o):.1f}x (median)")
        if args.long_epochs:
            long_run(pack, labels, tr_idx, args)
        if "sweep" not in args.skip:
            run_sweep(cohort, tr_idx, args)
        if "memory" not in args.skip:
            for dtype in ("float32", "float16"):
                out = subprocess.run(
                    [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
                     "--memory-child", str(pack),
                     str(Path(tmp) / "labels.csv"), dtype], capture_output=True, text=True,
                    check=True)
                m = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"memory ({dtype} storage): features {m['feature_bytes'] / 2**20:.0f} MiB,"
                      f" peak RSS growth load {m['load_peak'] / m['feature_bytes']:.2f}x, "
                      f"load+epoch {m['train_peak'] / m['feature_bytes']:.2f}x")


def long_run(pack: Path, labels: pd.DataFrame, tr_idx: np.ndarray,
             args: argparse.Namespace) -> None:  # fmt: skip
    """Wall time of loading the pack and training ``--long-epochs`` epochs, end to end."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t0 = time.perf_counter()
    cohort = load_cohort(pack, labels, device=args.device)
    sync()
    load_s = time.perf_counter() - t0
    cfg = FitConfig(epochs=args.long_epochs, lr=args.lr, bags_per_step=args.bags_per_step[0])
    res = fit(build_model("abmil", cohort.feature_dim, 2, seed=0), cohort.subset(tr_idx),
              config=cfg)  # fmt: skip
    sync()
    total = time.perf_counter() - t0
    print(f"long run : load_cohort {load_s:.2f}s + {args.long_epochs} epochs -> {total:.1f}s "
          f"in all (final train loss {res.history[-1]['train_loss']:.3f})")


def run_sweep(cohort: Cohort, tr_idx: np.ndarray, args: argparse.Namespace) -> None:
    """20 models: 5 folds x 2 seeds x 2 lrs, vectorised vs sequential."""
    folds = np.array_split(np.random.default_rng(1).permutation(tr_idx), 5)
    splits = [(np.setdiff1d(tr_idx, f), f) for f in folds]
    opts = dict(seeds=(0, 1), lrs=(args.lr, 2 * args.lr), epochs=args.sweep_epochs,
                bags_per_step=args.bags_per_step[0], model_kwargs={"dropout": 0.0})
    sweep("abmil", cohort.subset(tr_idx[:16]), [(np.arange(12), np.arange(12, 16))],
          epochs=1, vectorise=True)  # one-time torch.func import/warm-up, not timed
    t0 = time.perf_counter()
    vec = sweep("abmil", cohort, splits, vectorise=True, **opts)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq = sweep("abmil", cohort, splits, vectorise=False, **opts)
    t_seq = time.perf_counter() - t0
    diff = max(abs(a.history[-1]["val_loss"] - b.history[-1]["val_loss"])
               for a, b in zip(vec.results, seq.results, strict=True))
    print(f"sweep    : 20 models x {args.sweep_epochs} epochs vectorised {t_vec:.1f}s vs "
          f"sequential {t_seq:.1f}s -> {t_vec / t_seq:.2f}x of sequential "
          f"(max |val loss diff| {diff:.1e})")


if __name__ == "__main__":
    main()

"""Train M models at once (splits x seeds x learning rates), vectorised with `torch.func`.

Each model sees exactly the batches `balnmp_mil.training.fit.fit` would give it (same seeded
generator, same epoch plan); the M batches of a step are padded to one shape and run through
`vmap(grad(functional_call))` over the stacked parameters, and Adam/AdamW/SGD are applied to
the stacked tensors with per-model learning rates. Results equal M separate fits up to float
rounding, except for dropout, which draws from vmap's own stream (set dropout=0 for equality).
Models whose class says `vmappable = False` (TransMIL) fall back to sequential fits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from balnmp_mil.data.cohort import Cohort
from balnmp_mil.errors import SplitError
from balnmp_mil.models import MODELS, MILModel, build_model
from balnmp_mil.segment import Segments, gather_ranges
from balnmp_mil.training.config import FitConfig, resolve_bags_per_step
from balnmp_mil.training.fit import FitResult, class_weight_vector, fit, lr_at
from balnmp_mil.training.inference import auc_score, autocast, merge_bags
from balnmp_mil.training.monitor import EarlyStopping, choose_monitor
from balnmp_mil.training.optim import OPTIMIZERS
from balnmp_mil.training.plan import EpochPlan, batch_rows, epoch_plan
from balnmp_mil.training.stacked_optim import StackedOptimizer

__all__ = ["SweepSpec", "SweepResult", "sweep"]
EVAL_BAGS = 64


@dataclass
class SweepSpec:
    """Which split, seed and learning rate a model of the sweep was trained with."""

    split: int
    seed: int
    lr: float


@dataclass
class SweepResult:
    """One FitResult per spec, in the order of `specs` (splits, then seeds, then lrs)."""

    specs: list[SweepSpec]
    results: list[FitResult]
    vectorised: bool
    seconds: float


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # global bag ids, cohort rows, offsets


class PatientSplit(Protocol):
    """A split by patient ids (`balnmp_mil.data.splits.Split`, or anything shaped like it)."""

    train: Sequence[str]
    val: Sequence[str]


# (train patient indices, val patient indices or None), or a split by patient ids
SplitLike = tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray | None] | PatientSplit


class _Padded(NamedTuple):
    """M models' batches padded to one shape, stacked on a leading model axis."""

    x: torch.Tensor
    ids: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor  # -1 for padding bags
    clinical: torch.Tensor | None
    n_bags: int


@dataclass
class _Part:
    """One model's view of the cohort: bags (global ids) of a split part, packed row map."""

    bags: torch.Tensor
    rows: torch.Tensor  # subset row -> cohort row
    offsets: torch.Tensor
    bag_labels: torch.Tensor
    bag_patient: torch.Tensor  # within the part
    labels: torch.Tensor  # per patient of the part


def _part(cohort: Cohort, idx: np.ndarray) -> _Part:
    idx_t, keep, new_patient = cohort.bag_selection(idx)
    offs = cohort.offsets.cpu()
    counts = (offs[1:] - offs[:-1])[keep]
    return _Part(
        bags=keep,
        rows=gather_ranges(offs[:-1][keep], counts),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]),
        bag_labels=cohort.labels.cpu()[cohort.bag_patient.cpu()[keep]],
        bag_patient=new_patient,
        labels=cohort.labels.cpu()[idx_t],
    )


def _eval_batch(part: _Part, chunk: int) -> Batch | None:
    """The `chunk`-th run of `EVAL_BAGS` validation bags of one model (None past its end)."""
    sel = torch.arange(chunk * EVAL_BAGS, min((chunk + 1) * EVAL_BAGS, part.bags.numel()))
    if sel.numel() == 0:
        return None
    starts, ends = part.offsets[:-1][sel], part.offsets[1:][sel]
    rows = gather_ranges(starts, ends - starts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(ends - starts, 0)])
    return part.bags[sel], part.rows[rows], offsets


def _split_indices(cohort: Cohort, split: SplitLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(train, val) patient indices from an index pair or an object with .train/.val ids."""
    if isinstance(split, (tuple, list)):
        train_idx, val_idx = split
        return np.asarray(train_idx), None if val_idx is None else np.asarray(val_idx)
    pos = {p: i for i, p in enumerate(cohort.patient_ids)}
    missing = [p for p in list(split.train) + list(split.val or []) if p not in pos]
    if missing:
        raise SplitError(f"split names patients not in the cohort: {missing[:10]}")
    val = [pos[p] for p in split.val] if split.val else None
    return np.array([pos[p] for p in split.train]), None if val is None else np.array(val)


def sweep(
    model_name: str,
    cohort: Cohort,
    splits: Sequence[SplitLike],
    seeds: Sequence[int] = (0,),
    lrs: Sequence[float] = (2e-4,),
    model_kwargs: dict[str, Any] | None = None,
    vectorise: bool | str = "auto",
    **fit_options: Any,
) -> SweepResult:
    """Fit `model_name` for every (split, seed, lr); `fit_options` as for `fit`.

    `splits`: (train_idx, val_idx or None) patient-index pairs, or Split objects with
    `.train`/`.val` patient ids. `vectorise`: True, False, or "auto" (vectorised on CUDA,
    where it removes per-step launch overhead; sequential on CPU, where training is bound by
    matrix multiplies and padding the M batches to one shape only adds work). Models whose
    class is not `vmappable`, optimisers that are not `stackable` and `train_stop_auc` are
    fitted one by one.
    """
    t0 = time.perf_counter()
    kwargs = dict(model_kwargs or {})
    known = {f.name for f in fields(FitConfig)} - {"seed", "lr"}
    unknown = set(fit_options) - known
    if unknown:
        raise TypeError(f"unknown sweep options {sorted(unknown)}; valid: {sorted(known)}")
    specs = [SweepSpec(s, seed, lr) for s in range(len(splits)) for seed in seeds for lr in lrs]
    cfgs = [FitConfig(**{**fit_options, "seed": s.seed, "lr": s.lr}) for s in specs]
    parts = [_split_indices(cohort, sp) for sp in splits]
    clinical_dim = 0 if cohort.clinical is None else int(cohort.clinical.shape[1])
    models = [build_model(model_name, cohort.feature_dim, cohort.n_classes, clinical_dim,
                          seed=spec.seed, **kwargs) for spec in specs]
    if vectorise == "auto":
        vectorise = torch.device(cfgs[0].device or cohort.device).type == "cuda"
    if (not vectorise or not MODELS.get(model_name).vmappable
            or not OPTIMIZERS.get(cfgs[0].optimizer).stackable
            or cfgs[0].train_stop_auc is not None):  # a per-model stop `fit` knows
        results = []
        for spec, model, cfg in zip(specs, models, cfgs, strict=True):
            tr, va = parts[spec.split]
            val = None if va is None else cohort.subset(va)
            results.append(fit(model, cohort.subset(tr), val, config=cfg))
        return SweepResult(specs, results, False, time.perf_counter() - t0)
    results = _VectorisedSweep(cohort, models, specs, parts, cfgs).run()
    return SweepResult(specs, results, True, time.perf_counter() - t0)


class _VectorisedSweep:
    """State of a vectorised sweep: stacked parameters, optimiser state, per-model plans."""

    def __init__(self, cohort: Cohort, models: list[MILModel], specs: list[SweepSpec],
                 parts: list[tuple[np.ndarray, np.ndarray | None]], cfgs: list[FitConfig]):
        self.cohort, self.models, self.cfgs = cohort, models, cfgs
        self.device = torch.device(cfgs[0].device) if cfgs[0].device else cohort.device
        if self.device != cohort.device:
            self.cohort = cohort = cohort.to(self.device)
        for m in models:
            m.to(self.device)
        self.base = models[0]
        self.train = [_part(cohort, parts[s.split][0]) for s in specs]
        for m, c, part in zip(models, cfgs, self.train, strict=True):
            if c.standardizes(m):  # as fit does: the statistics of this model's training rows
                m.set_input_stats(cohort.features, part.rows.to(self.device))
        self.params, self.buffers = stack_module_state(models)
        self.params = {k: v.detach() for k, v in self.params.items()}
        vals = [parts[s.split][1] for s in specs]
        self.val = [None if v is None else _part(cohort, v) for v in vals]
        self.clin = cohort.bag_clinical()
        n_cls = cohort.n_classes
        weights = [class_weight_vector(c.class_weights, p.bag_labels, n_cls)
                   for c, p in zip(cfgs, self.train, strict=True)]
        self.class_w = torch.stack([torch.ones(n_cls) if w is None else w for w in weights])
        self.class_w = self.class_w.to(self.device)
        self.opt = StackedOptimizer(cfgs[0].optimizer, cfgs[0].weight_decay, cfgs[0].momentum,
                                    self.params)

    # -- padded, vmapped forward -----------------------------------------------------
    def _pad(self, batches: Sequence[Batch | None]) -> _Padded:
        """Per-model (global bag ids, cohort rows, offsets) -> stacked padded inputs.

        Padding instances go to one extra bag and padding bags get label -1 (ignored)."""
        sizes = [0 if b is None else int(b[1].numel()) for b in batches]
        n_bags = max(0 if b is None else int(b[0].numel()) for b in batches) + 1
        p_max = max(max(sizes), 1)
        rows, ids, offs, ys, bag_ids = [], [], [], [], []
        for b, size in zip(batches, sizes, strict=True):
            bags, r, o = b if b is not None else (torch.zeros(0, dtype=torch.long),
                                                   torch.zeros(0, dtype=torch.long),
                                                   torch.zeros(1, dtype=torch.long))
            nb = bags.numel()
            rows.append(torch.cat([r, torch.zeros(p_max - size, dtype=torch.long)]))
            counts = o[1:] - o[:-1]
            ids.append(torch.cat([torch.repeat_interleave(torch.arange(nb), counts),
                                  torch.full((p_max - size,), n_bags - 1)]))
            offs.append(torch.cat([o, torch.full((n_bags - nb - 1,), size), torch.tensor([p_max])]))
            y = self.cohort.labels.cpu()[self.cohort.bag_patient.cpu()[bags]]
            ys.append(torch.cat([y, torch.full((n_bags - nb,), -1)]))
            bag_ids.append(torch.cat([bags, torch.zeros(n_bags - nb, dtype=torch.long)]))
        dev = self.device
        x = self.cohort.features.index_select(0, torch.cat(rows).to(dev)).float()
        x = x.view(len(batches), p_max, -1)
        bag_ids_t = torch.stack(bag_ids).to(dev)
        clin = None if self.clin is None else self.clin[bag_ids_t]
        return _Padded(x, torch.stack(ids).to(dev), torch.stack(offs).to(dev),
                       torch.stack(ys).to(dev), clin, n_bags)

    def _loss_fn(self, n_bags: int) -> Callable[..., torch.Tensor]:
        base = self.base

        def loss(params, buffers, x, ids, offs, y, clin, cw):
            out = functional_call(base, (params, buffers), (x, Segments(ids, offs, n_bags),
                                                              clin, y))
            logp = F.log_softmax(out.logits.float(), dim=1)
            yc = y.clamp(min=0)
            nll = -logp.gather(1, yc.unsqueeze(1)).squeeze(1)
            w = cw.index_select(0, yc) * (y >= 0).to(nll.dtype)
            value = (nll * w).sum() / w.sum().clamp(min=1e-12)
            return value if out.aux_loss is None else value + out.aux_loss.float()

        return loss

    def _logits(self, x: torch.Tensor, ids: torch.Tensor, offs: torch.Tensor,
                clin: torch.Tensor | None, n_bags: int) -> torch.Tensor:
        base = self.base

        def f(params, buffers, x, ids, offs, clin):
            return functional_call(base, (params, buffers),
                                   (x, Segments(ids, offs, n_bags), clin)).logits.float()

        in_clin = None if clin is None else 0
        return vmap(f, in_dims=(0, 0, 0, 0, 0, in_clin), randomness="different")(
            self.params, self.buffers, x, ids, offs, clin)

    # -- loop -------------------------------------------------------------------------
    def run(self) -> list[FitResult]:
        cfg0, m_count = self.cfgs[0], len(self.models)
        gens = [torch.Generator().manual_seed(c.seed) for c in self.cfgs]
        histories: list[list[dict[str, Any]]] = [[] for _ in range(m_count)]
        stops = []
        for c, v in zip(self.cfgs, self.val, strict=True):
            monitor = choose_monitor(c.monitor, None if v is None else v.labels, stacklevel=3)
            stops.append(EarlyStopping(monitor, c.patience, cfg0.epochs - 1))
        active = [True] * m_count
        best_params = {k: v.clone() for k, v in self.params.items()}
        for epoch in range(cfg0.epochs):
            t0 = time.perf_counter()
            lrs = [lr_at(c, epoch) for c in self.cfgs]
            plans = [epoch_plan(p.offsets, c, g) if a else None
                     for p, c, g, a in zip(self.train, self.cfgs, gens, active, strict=True)]
            totals = self._train_epoch(plans, lrs, active)
            vals = self._validate(active)
            seconds = time.perf_counter() - t0
            for m in range(m_count):
                if not active[m]:
                    continue
                n = self.train[m].bags.numel()
                row: dict[str, Any] = {"epoch": epoch, "lr": lrs[m], "train_loss": totals[m] / n}
                val = vals[m]
                if val is not None:
                    row.update(val)
                    if stops[m].update(row, epoch):
                        for k, v in self.params.items():
                            best_params[k][m] = v[m]
                row["seconds"] = seconds
                histories[m].append(row)
                if val is not None and stops[m].exhausted:
                    active[m] = False
        return self._results(histories, stops, best_params)

    def _train_epoch(self, plans: list[EpochPlan | None], lrs: list[float], active: list[bool]
                     ) -> list[float]:
        self.base.train()
        totals = torch.zeros(len(plans), dtype=torch.float64, device=self.device)
        n_steps = max(len(p.batches) for p in plans if p is not None)
        lr_t = torch.tensor(lrs, dtype=torch.float64)
        for step in range(n_steps):
            batches: list[Batch | None] = []
            for m, plan in enumerate(plans):
                if plan is None or step >= len(plan.batches):
                    batches.append(None)
                    continue
                local = plan.batches[step]
                rows, offs = batch_rows(plan, local)
                part = self.train[m]
                batches.append((part.bags[local], part.rows[rows], offs))
            x, ids, offs, y, clin, n_bags = self._pad(batches)
            fn = vmap(grad_and_value(self._loss_fn(n_bags)),
                      in_dims=(0, 0, 0, 0, 0, 0, None if clin is None else 0, 0),
                      randomness="different")
            with autocast(self.device, self.cfgs[0].amp):
                grads, values = fn(self.params, self.buffers, x, ids, offs, y, clin, self.class_w)
            step_on = torch.tensor([b is not None for b in batches])
            self.params = self.opt.step(self.params, grads, lr_t, step_on)
            n = torch.tensor([0 if b is None else b[0].numel() for b in batches],
                             dtype=torch.float64, device=self.device)
            # summed on the device and read once per epoch (idle models' values are ignored)
            totals += torch.where(n > 0, values.detach().double() * n, 0.0)
        return totals.tolist()

    @torch.no_grad()
    def _validate(self, active: list[bool]) -> list[dict[str, float] | None]:
        self.base.eval()
        parts = [v if (v is not None and a) else None for v, a in zip(self.val, active,
                                                                        strict=True)]
        n_chunks = max([math.ceil(p.bags.numel() / EVAL_BAGS) for p in parts if p] + [0])
        logits: list[list[torch.Tensor]] = [[] for _ in parts]
        for j in range(n_chunks):
            batches = [None if p is None else _eval_batch(p, j) for p in parts]
            x, ids, offs, _, clin, n_bags = self._pad(batches)
            with autocast(self.device, self.cfgs[0].amp):
                out = self._logits(x, ids, offs, clin, n_bags)
            for m, b in enumerate(batches):
                if b is not None:
                    logits[m].append(out[m, : b[0].numel()])
        results: list[dict[str, float] | None] = []
        for m, p in enumerate(parts):
            if p is None:
                results.append(None)
                continue
            lg = torch.cat(logits[m])
            loss = float(F.cross_entropy(lg, p.bag_labels.to(lg.device)))
            probs = merge_bags(torch.softmax(lg, 1), p.bag_patient, p.labels.numel(),
                               self.cfgs[m].merge)
            results.append({"val_loss": loss, "val_auc": auc_score(p.labels.numpy(), probs)})
        return results

    def _results(self, histories: list[list[dict[str, Any]]], stops: list[EarlyStopping],
                 best_params: dict[str, torch.Tensor]) -> list[FitResult]:
        out = []
        for m, model in enumerate(self.models):
            has_val = self.val[m] is not None and stops[m].best_score > -math.inf
            src = best_params if has_val else self.params
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(src[name][m])
            model.eval()
            score = stops[m].final_score() if has_val else None
            epoch = stops[m].best_epoch if has_val else len(histories[m]) - 1
            n_bags = self.train[m].offsets.numel() - 1  # as fit records it: auto resolved
            cfg = replace(self.cfgs[m], bags_per_step=resolve_bags_per_step(
                self.cfgs[m].bags_per_step, n_bags))
            out.append(FitResult(model, histories[m], epoch, score, cfg))
        return out

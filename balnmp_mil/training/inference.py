"""Prediction on a packed cohort: bag logits in chunks, bags merged into patients, AUC.

`predict(model, cohort)` gives patient probabilities (n_patients, C); with
`return_attention=True` also the per-instance attention. Slide bags merge into their patient by
a registered merge (`--merge`: mean or max of the bag probabilities).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, overload

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from balnmp_cache._registry import Registry

if TYPE_CHECKING:
    from balnmp_mil.data.cohort import Cohort

__all__ = ["MERGES", "auc_score", "autocast", "bag_logits", "merge_bags", "merge_patients",
           "predict"]

Merge = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
MERGES: Registry[Merge] = Registry("merge", "--merge")


@MERGES.register("mean")
def mean_merge(bag_probs: torch.Tensor, idx: torch.Tensor, n_patients: int) -> torch.Tensor:
    """Mean of each patient's bag probabilities."""
    shape = (n_patients, bag_probs.shape[1])
    s = bag_probs.new_zeros(shape).index_add(0, idx, bag_probs)
    n = torch.bincount(idx, minlength=n_patients).clamp(min=1).unsqueeze(1)
    return s / n


@MERGES.register("max")
def max_merge(bag_probs: torch.Tensor, idx: torch.Tensor, n_patients: int) -> torch.Tensor:
    """Per-class maximum over each patient's bags, renormalised to sum to 1."""
    shape = (n_patients, bag_probs.shape[1])
    m = bag_probs.new_zeros(shape).scatter_reduce(
        0, idx.unsqueeze(1).expand_as(bag_probs), bag_probs, "amax", include_self=False
    )
    return m / m.sum(1, keepdim=True)


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 (else fp16) autocast on CUDA with `amp`; disabled elsewhere."""
    if device.type == "cuda" and amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


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
    logits: list[torch.Tensor] = []
    atts: list[torch.Tensor | None] = []
    b = 0
    while b < cohort.n_bags:
        e = int(torch.searchsorted(offs, offs[b] + max_instances, right=True)) - 1
        e = min(max(e, b + 1), cohort.n_bags)
        x = cohort.features[int(offs[b]) : int(offs[e])].float()
        o = (offs[b : e + 1] - offs[b]).to(device)
        c = None if clin is None else clin[b:e]
        with autocast(device, amp):
            out = model(x, o, c)
        logits.append(out.logits.float())
        atts.append(None if out.attention is None else out.attention.float())
        b = e
    model.train(was_training)
    present = [a for a in atts if a is not None]
    att = torch.cat(present) if len(present) == len(atts) else None
    return torch.cat(logits), att


def merge_patients(bag_probs: torch.Tensor, cohort: Cohort, merge: str = "mean") -> np.ndarray:
    """Bag probabilities (B, C) -> patient probabilities (n_patients, C) by `merge`."""
    return merge_bags(bag_probs, cohort.bag_patient, len(cohort), merge)


def merge_bags(
    bag_probs: torch.Tensor, bag_patient: torch.Tensor, n_patients: int, merge: str = "mean"
) -> np.ndarray:
    """Merge bag rows into `n_patients` rows by their `bag_patient` index (see `MERGES`)."""
    combine = MERGES.get(merge)
    idx = bag_patient.to(bag_probs.device)
    if bag_probs.shape[0] == n_patients and torch.equal(
        idx.cpu(), torch.arange(n_patients)
    ):
        return bag_probs.cpu().double().numpy()
    return combine(bag_probs, idx, n_patients).cpu().double().numpy()


@overload
def predict(model: nn.Module, cohort: Cohort, merge: str = ...,
            return_attention: Literal[False] = ...) -> np.ndarray: ...
@overload
def predict(model: nn.Module, cohort: Cohort, merge: str = ..., *,
            return_attention: Literal[True]) -> tuple[np.ndarray, np.ndarray | None]: ...
@overload
def predict(model: nn.Module, cohort: Cohort, merge: str, return_attention: Literal[True]
            ) -> tuple[np.ndarray, np.ndarray | None]: ...
def predict(
    model: nn.Module, cohort: Cohort, merge: str = "mean", return_attention: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Patient-level probabilities (n_patients, C); with `return_attention` also the
    per-instance attention (P,) in cohort row order (None for models without attention)."""
    model.to(cohort.device)
    logits, att = bag_logits(model, cohort)
    probs = merge_patients(torch.softmax(logits, 1), cohort, merge)
    if return_attention:
        return probs, None if att is None else att.cpu().numpy()
    return probs

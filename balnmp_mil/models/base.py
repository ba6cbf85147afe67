"""The common MIL model interface (`MILModel`) and the layers every model shares.

Every model has two forwards: `MILModel.forward` over many packed bags at once (segment
ops, no padding) and `MILModel.forward_bag`, a plain one-bag reference the tests compare
against. Models always return C logits; clinical vectors (`clinical_dim > 0`) are joined to
the pooled bag embedding before the classifier.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from balnmp_mil.errors import ModelError
from balnmp_mil.segment import Segments, as_segments

__all__ = ["ClassifierHead", "Dropout", "MILModel", "MILOutput"]

@dataclass
class MILOutput:
    """Bag logits (B, C), per-instance attention (P,) summing to 1 per bag (or None), and an
    auxiliary loss already weighted (CLAM instance clustering, DSMIL max-instance), or None."""

    logits: torch.Tensor
    attention: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class Dropout(nn.Module):
    """Inverted dropout (like `nn.Dropout`) with a cheaper mask on CPU.

    `nn.Dropout` on CPU draws one Bernoulli sample per element, which took ~15 % of a MIL
    training step. Here each 64-bit random draw yields four 16-bit uniforms, and an element is
    kept when its uniform is at or above `round(p * 65536)` (so `p` is used to the nearest
    1/65536; the kept values are scaled by the inverse of the exact keep rate). Masks come from
    the global torch stream, so seeded runs repeat exactly. On other devices it is
    `F.dropout` (a fused kernel there).
    """

    _LEVELS = 1 << 16

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ModelError(f"dropout probability must be in [0, 1) (--model-arg dropout=P); "
                             f"got {p}")
        self.p = p
        self._cut = round(p * self._LEVELS)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        n = x.numel()
        draws = torch.randint(-(1 << 63), (1 << 63) - 1, ((n + 3) // 4,), dtype=torch.int64)
        u = draws.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
        keep = (u >= self._cut - self._LEVELS // 2).to(x.dtype)
        return x * keep.mul_(self._LEVELS / (self._LEVELS - self._cut))


class ClassifierHead(nn.Module):
    """Pooled embedding (+ clinical vector) -> optional hidden MLP -> C logits.

    `clinical_repeat` tiles the clinical vector that many times before joining it
    (`[c1..cK, c1..cK, ...]`, as `clinical.repeat(1, n)`: the BALNMP paper's fusion)."""

    def __init__(
        self, embed_dim: int, n_classes: int, clinical_dim: int = 0, hidden: int | None = None,
        dropout: float = 0.0, clinical_repeat: int = 1,
    ) -> None:
        super().__init__()
        if clinical_repeat < 1:
            raise ModelError(f"clinical_repeat must be an integer >= 1 (--model-arg "
                             f"clinical_repeat=N); got {clinical_repeat}")
        self.clinical_dim, self.clinical_repeat = clinical_dim, clinical_repeat
        width = embed_dim + clinical_dim * clinical_repeat
        if hidden:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), Dropout(dropout),
                nn.Linear(hidden, n_classes),
            )
        else:
            self.net = nn.Linear(width, n_classes)

    def forward(self, z: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        if self.clinical_dim:
            if clinical is None:
                raise ModelError(
                    f"the model was built with clinical_dim={self.clinical_dim}; pass the "
                    "encoded clinical matrix (cohort.with_clinical)"
                )
            clinical = clinical.reshape(z.shape[0], -1).to(z.dtype)
            if clinical.shape[1] != self.clinical_dim:
                raise ModelError(
                    f"clinical has {clinical.shape[1]} columns; the model expects "
                    f"{self.clinical_dim}"
                )
            z = torch.cat([z, clinical.repeat(1, self.clinical_repeat)], dim=1)
        return self.net(z)


class MILModel(nn.Module, metaclass=abc.ABCMeta):
    """Base class: subclasses implement `forward_packed` (many bags) and `forward_one`
    (one bag, the reference); `forward`/`forward_bag` standardise inputs first."""

    name: ClassVar[str] = ""
    input_mean: torch.Tensor  # buffers (see __init__), declared for the type checker
    input_std: torch.Tensor
    # The vectorised sweep may batch fits of this model with torch.func.vmap (models whose
    # forward pads to data-dependent shapes, like TransMIL's square token grid, cannot).
    vmappable: ClassVar[bool] = True
    # Whether `fit` z-scores the inputs when its `standardize` option is left unset (None).
    standardize_default: ClassVar[bool] = True

    def __init__(self, in_dim: int, n_classes: int, clinical_dim: int = 0, **hparams: Any):
        super().__init__()
        if in_dim < 1 or n_classes < 2:
            raise ModelError(f"need in_dim >= 1 and n_classes >= 2; got {in_dim}, {n_classes}")
        self.in_dim, self.n_classes, self.clinical_dim = in_dim, n_classes, clinical_dim
        self._hparams = hparams
        # Per-feature standardisation of the inputs (identity until `set_input_stats`): saved
        # in the state dict, so a loaded model applies the training set's statistics.
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))

    @torch.no_grad()
    def set_input_stats(
        self, features: torch.Tensor, rows: torch.Tensor | None = None, chunk: int = 8192
    ) -> None:
        """Standardise inputs with the per-feature mean and std of `features` (P, D) (or of
        its `rows`), the training instances: random-init or un-normalised embeddings often
        differ by large per-feature offsets and tiny spreads, which makes attention MIL train
        very slowly. Computed `chunk` rows at a time (float32 chunks merged in float64), so a
        float16 cohort is never converted whole."""
        n = features.shape[0] if rows is None else rows.numel()
        if n == 0:
            raise ModelError("set_input_stats needs at least one instance")
        mean = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
        m2 = torch.zeros_like(mean)
        seen = 0
        for start in range(0, n, chunk):
            part = (features[start : start + chunk] if rows is None
                    else features.index_select(0, rows[start : start + chunk]))  # fmt: skip
            var_c, mean_c = torch.var_mean(part.float(), 0, correction=0)
            k = part.shape[0]
            delta = mean_c.double() - mean
            total = seen + k
            mean += delta * (k / total)  # Chan et al.'s pairwise merge of mean and M2
            m2 += var_c.double() * k + delta.square() * (seen * k / total)
            seen = total
        self.input_mean.copy_(mean)
        self.input_std.copy_((m2 / seen).sqrt().clamp_min(1e-6))

    def standardize_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able; `build_model(**model.config)` rebuilds the architecture."""
        return {
            "name": self.name,
            "in_dim": self.in_dim,
            "n_classes": self.n_classes,
            "clinical_dim": self.clinical_dim,
            **self._hparams,
        }

    def forward(
        self,
        features: torch.Tensor,
        offsets: torch.Tensor | Segments,
        clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        """Packed forward: `features` (P, D), bag `offsets` (B+1,), clinical (B, K)."""
        seg = as_segments(offsets, features.shape[0])
        return self.forward_packed(self.standardize_inputs(features), seg, clinical, labels)

    @abc.abstractmethod
    def forward_packed(
        self, x: torch.Tensor, seg: Segments, clinical: torch.Tensor | None,
        labels: torch.Tensor | None,
    ) -> MILOutput:
        """Forward of many bags packed end to end (`seg` describes them); logits (B, C)."""

    def forward_bag(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        """Reference forward of one bag `x` (N, D); logits (1, C). Same input
        standardisation as `forward`; the model itself is `forward_one`."""
        return self.forward_one(self.standardize_inputs(x), clinical, labels)

    @abc.abstractmethod
    def forward_one(
        self, x: torch.Tensor, clinical: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> MILOutput:
        """Plain per-bag implementation on already standardised `x` (N, D)."""

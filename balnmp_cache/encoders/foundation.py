"""Pathology foundation models as presets: each one the timm architecture and arguments its
authors' reference code creates, the model card's preprocessing and pooling, and where its
weights live (`zoo` holds the table; `ctranspath` adds the modified Swin).

A preset builds on the meta device and adopts the checkpoint's tensors (no random init of a
billion parameters); the checkpoint is checked strictly in its published layout first
(timm's names, or `transformers`' for Phikon, Phikon-v2, Hibou-L and Midnight: `hf_layouts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balnmp_cache.encoders.base import ENCODERS, Encoder, EncoderCard, EncoderEntry
from balnmp_cache.encoders.checkpoint import file_sha256, load_state, read_state_dict
from balnmp_cache.encoders.hub import HubWeights, find_hf_weights
from balnmp_cache.encoders.layouts import NATIVE, Layout
from balnmp_cache.encoders.pooling import POOLINGS, TokenPool
from balnmp_cache.encoders.preprocess import Preprocess
from balnmp_cache.errors import EncoderError

__all__ = ["Preset", "register_preset"]

# timm layers named in a preset's arguments (resolved when it is built, so the table imports
# nothing heavy).
_LAYERS = {"SwiGLUPacked": ("timm.layers", "SwiGLUPacked"), "SiLU": ("torch.nn", "SiLU")}


@dataclass(frozen=True)
class Preset:
    """One foundation model, as its authors define it.

    `arch` + `kwargs`: `timm.create_model(arch, **kwargs)` as the reference code calls it
    (`"SwiGLUPacked"` and `"SiLU"` stand for `timm.layers.SwiGLUPacked` and `torch.nn.SiLU`;
    an `embed_layer` may be a class); `pooling`: "cls", "cls+mean" or "mean" (`pooling.POOLINGS`); `feature_dim`: the
    published embedding width; `layout`: the published checkpoint's key layout; `mpp`: the
    µm/px it was trained at; `precision`: recommended autocast on CUDA; `fixed_input`: the
    model only runs at `preprocess.size`; `unknown`: what the public sources leave open.
    """

    name: str
    arch: str
    kwargs: Mapping[str, Any]
    preprocess: Preprocess
    pooling: str
    feature_dim: int
    hub: HubWeights
    licence: str
    reference: str
    mpp: float | None = 0.5
    precision: str = "fp16"
    layout: Layout = NATIVE
    fixed_input: bool = False
    unknown: str = ""
    aliases: tuple[str, ...] = field(default=())

    def card(self, alias_of: str | None = None) -> EncoderCard:
        ref = f"alias of {alias_of}" if alias_of else self.reference
        return EncoderCard(feature_dim=self.feature_dim, preprocess=self.preprocess,
                           pooling=POOLINGS[self.pooling], mpp=self.mpp,
                           precision=self.precision, licence=f"{self.licence} · {self.hub.access}",
                           weights="hf",
                           hub=self.hub.describe(), reference=ref,
                           unknown=self.unknown)  # fmt: skip

    def architecture(self) -> nn.Module:
        """The bare backbone, on the current default device (`torch.device("meta")`: not
        materialised), with timm's random init."""
        import importlib

        import timm

        kwargs = dict(self.kwargs)
        kwargs.setdefault("num_classes", 0)
        for key, value in kwargs.items():
            if isinstance(value, str) and value in _LAYERS:
                module, attr = _LAYERS[value]
                kwargs[key] = getattr(importlib.import_module(module), attr)
        return timm.create_model(self.arch, pretrained=False, **kwargs)

    def build(self, weights: str | Path, seed: int, flatten: bool) -> Encoder:
        kind = str(weights)
        if kind == "imagenet":
            raise EncoderError(f"encoder {self.name!r} has no ImageNet weights; use --weights hf "
                               "(the Hugging Face cache), PATH or none")
        if kind == "none":
            torch.manual_seed(seed)
            backbone, weights_id = self.architecture(), f"none:seed={seed}"
        else:
            if kind == "hf":
                path, weights_id = find_hf_weights(self.name, self.hub)
            else:
                path = Path(weights)
                weights_id = ""
            backbone = self._loaded(read_state_dict(path), path)
            weights_id = weights_id or f"sha256:{file_sha256(path)}"
        width = int(getattr(backbone, "num_features"))  # noqa: B009 - typed Tensor | Module
        module = TokenPool(backbone, self.pooling, int(getattr(backbone, "num_prefix_tokens", 0)),
                           width)  # fmt: skip
        if module.feature_dim != self.feature_dim:
            raise EncoderError(f"encoder {self.name!r} built with {module.feature_dim} features, "
                               f"not the published {self.feature_dim}: a bug in its preset")
        p = self.preprocess
        return Encoder(name=self.name, module=module, input_size=p.size, mean=p.mean, std=p.std,
                       feature_dim=self.feature_dim, weights_id=weights_id, resize=p.resize,
                       interpolation=p.interpolation, pil=p.pil, precision=self.precision,
                       fixed_input=self.fixed_input)  # fmt: skip

    def _loaded(self, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
        """The backbone holding `state`: built on meta and adopting the tensors, unless it
        has buffers a checkpoint does not carry (then built for real and copied into)."""
        with torch.device("meta"):
            backbone = self.architecture()
        load_state(backbone, state, path, layouts=(self.layout,), assign=True)
        tensors = itertools.chain(backbone.parameters(), backbone.buffers())
        if any(t.is_meta for t in tensors):
            backbone = self.architecture()
            load_state(backbone, state, path, layouts=(self.layout,))
        return backbone


def register_preset(preset: Preset) -> Preset:
    """Add `preset` (and its aliases) to `ENCODERS`."""
    ENCODERS.register(preset.name, EncoderEntry(preset.name, preset.build, card=preset.card(),
                                                spec=preset))  # fmt: skip
    for alias in preset.aliases:
        ENCODERS.register(alias, EncoderEntry(alias, preset.build,
                                              card=preset.card(alias_of=preset.name),
                                              spec=preset))  # fmt: skip
    return preset

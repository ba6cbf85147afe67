"""Any timm model as a patch encoder: `--encoder timm:<model name>` (timm's own defaults: its
pooled head output and pretrained config's size and statistics; the pathology foundation
models, which need their authors' arguments and pooling, are presets in `zoo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from balnmp_cache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, PREFIXES, Encoder
from balnmp_cache.encoders.checkpoint import load_checkpoint
from balnmp_cache.errors import EncoderError

__all__ = ["build_timm"]


def build_timm(model_name: str, weights: str | Path, seed: int) -> Encoder:
    """`timm.create_model(model_name, num_classes=0)` with imagenet / none / PATH weights."""
    import timm

    name = f"timm:{model_name}"
    kind = str(weights)
    if kind == "hf":
        raise EncoderError(f"--weights hf is for the foundation-model presets; {name!r} takes "
                           "imagenet (timm's pretrained weights), none or PATH")
    torch.manual_seed(seed)
    try:
        model: Any = timm.create_model(model_name, pretrained=kind == "imagenet", num_classes=0)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise EncoderError(f"timm cannot build {model_name!r}: {exc}") from exc
    except OSError as exc:
        raise EncoderError(
            f"pretrained weights for timm model {model_name!r} are not in the local "
            f"Hugging Face cache and cannot be downloaded here ({exc}); pass --weights PATH "
            "to a local checkpoint or --weights none"
        ) from exc
    cfg = model.pretrained_cfg
    if kind == "imagenet":
        weights_id = f"imagenet:timm/{model_name}.{cfg.get('tag') or 'default'}"
    elif kind == "none":
        weights_id = f"none:seed={seed}"
    else:
        weights_id = load_checkpoint(
            model, weights, ignore_prefixes=("head.", "fc.", "classifier.")
        )
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return Encoder(
        name=name,
        module=model,
        input_size=int(size),
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        feature_dim=int(model.num_features),
        weights_id=weights_id,
    )


PREFIXES.register("timm", build_timm)

"""Any timm model as a patch encoder: `--encoder timm:<model name>` (needs `balnmp[timm]`)."""

from __future__ import annotations

from pathlib import Path

import torch

from balnmp_cache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, PREFIXES, Encoder
from balnmp_cache.encoders.checkpoint import load_checkpoint
from balnmp_cache.errors import EncoderError

__all__ = ["build_timm"]


def build_timm(model_name: str, weights: str | Path, seed: int) -> Encoder:
    """`timm.create_model(model_name, num_classes=0)` with imagenet / none / PATH weights."""
    name = f"timm:{model_name}"
    try:
        import timm
    except ImportError as exc:
        raise EncoderError(
            f"encoder {name!r} needs timm, which is not installed: pip install 'balnmp[timm]'"
        ) from exc
    kind = str(weights)
    torch.manual_seed(seed)
    try:
        model = timm.create_model(model_name, pretrained=kind == "imagenet", num_classes=0)
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

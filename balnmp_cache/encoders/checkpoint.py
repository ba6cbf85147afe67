"""Local checkpoints and deterministic random init for encoders (never unpickles code)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balnmp_cache.errors import EncoderError

__all__ = ["file_sha256", "init_weights", "load_checkpoint"]


def init_weights(model: nn.Module) -> None:
    """Deterministic random init of every parameter and buffer (torchvision's CNN scheme).

    Convolutions: Kaiming normal (fan_out, ReLU); norms: weight 1, bias 0, fresh running
    stats; linear layers: N(0, 0.01). Other modules use their own `reset_parameters`.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif any(True for _ in m.parameters(recurse=False)) or any(
            True for _ in m.buffers(recurse=False)
        ):
            reset = getattr(m, "reset_parameters", None)
            if reset is None:
                raise EncoderError(f"cannot initialise {type(m).__name__} for random weights")
            reset()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(model: nn.Module, path: str | Path, ignore_prefixes: Iterable[str] = ()) -> str:
    """Load a local checkpoint into `model` strictly; return its weights id "sha256:<hex>".

    Accepts a plain state dict or a dict with "state_dict"/"model"; strips "module." (DDP)
    prefixes. Keys under `ignore_prefixes` (a classifier the encoder dropped) are ignored;
    any other missing or unexpected key, or a shape mismatch, is an error listing them.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"checkpoint {path}: no such file; pass --weights PATH to an existing "
                           "checkpoint, or --weights imagenet / none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean "refused"
        raise EncoderError(
            f"cannot load checkpoint {path} with weights_only=True ({exc}); save a plain "
            "state dict (torch.save(model.state_dict(), path))"
        ) from exc
    state = _unwrap_state(obj, path)
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                shown = ", ".join(keys[:10]) + (
                    f", ... ({len(keys)} in all)" if len(keys) > 10 else ""
                )
                parts.append(f"{label} keys: {shown}")
        raise EncoderError(
            f"checkpoint {path} does not match the encoder architecture; "
            + "; ".join(parts)
            + ". Check --encoder matches the network the checkpoint was trained with."
        )
    model.load_state_dict(state, strict=True)
    return f"sha256:{file_sha256(path)}"


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderError(
            f"checkpoint {path} holds no state dict (expected a dict of tensors, optionally "
            "under 'state_dict' or 'model')"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}

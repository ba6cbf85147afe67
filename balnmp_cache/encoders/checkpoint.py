"""Local checkpoints and deterministic random init for encoders (never unpickles code).

`read_state_dict` reads `.safetensors` (safetensors) or `.bin`/`.pth`/`.pt` (`torch.load` with
`weights_only=True`); `load_state` checks the keys and shapes strictly against the module in
the checkpoint's own layout (see `layouts`) and loads it; `load_checkpoint` does both for a
file and returns its weights id.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balnmp_cache.encoders.layouts import ANY, NATIVE, Expected, Layout, Shape
from balnmp_cache.errors import EncoderError

__all__ = ["file_sha256", "init_weights", "load_checkpoint", "load_state", "read_state_dict"]


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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local checkpoint file.

    `.safetensors`: read with safetensors; anything else (`.bin`, `.pth`, `.pt`) with
    `torch.load(weights_only=True)`, so a file that needs code to unpickle is refused. A dict
    holding the state under "state_dict" or "model" is unwrapped; "module." (DDP) prefixes
    are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(f"checkpoint {path}: no such file; pass --weights PATH to an existing "
                           "checkpoint, or --weights imagenet / none / hf")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        try:  # memory-map zip checkpoints: a multi-GB file is not copied into RAM first
            obj = torch.load(path, map_location="cpu", weights_only=True,
                             mmap=zipfile.is_zipfile(path))  # fmt: skip
        except Exception as exc:  # pickle errors come in many types; all mean "refused"
            raise EncoderError(
                f"cannot load checkpoint {path} with weights_only=True ({exc}); save a plain "
                "state dict (torch.save(model.state_dict(), path)) or a .safetensors file"
            ) from exc
    return _unwrap_state(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise EncoderError(f"cannot read safetensors checkpoint {path} ({exc}); is the file "
                           "complete?") from exc


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path, *,
               ignore_prefixes: Iterable[str] = (), layouts: Sequence[Layout] = (),
               assign: bool = False) -> None:  # fmt: skip
    """Load `state` into `model` strictly, reading it in the first of `layouts` it matches
    (else the module's own names).

    `ignore_prefixes`: module-side prefixes of the head the encoder dropped (a full-network
    checkpoint works). Any other missing or unexpected key, or a shape mismatch, is an error
    listing them in the checkpoint's names. `assign`: adopt the checkpoint's tensors (as
    float32) instead of copying, for a module built on the meta device.
    """
    layout = next((lay for lay in layouts if lay.matches(state.keys())), NATIVE)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = layout.expected(own, tuple(ignore_prefixes))
    kept = {k: v for k, v in state.items() if not k.startswith(expected.ignored)}
    _check(kept, expected, source, layout)
    converted = layout.convert(dict(kept), own)
    if assign:
        converted = {k: v.float() if v.is_floating_point() else v for k, v in converted.items()}
    model.load_state_dict(converted, strict=True, assign=assign)


def load_checkpoint(model: nn.Module, path: str | Path, ignore_prefixes: Iterable[str] = (),
                    layouts: Sequence[Layout] = (), assign: bool = False) -> str:  # fmt: skip
    """Load a local checkpoint file into `model` strictly (see `load_state`); return its
    weights id "sha256:<hex of the file>"."""
    load_state(model, read_state_dict(path), path, ignore_prefixes=ignore_prefixes,
               layouts=layouts, assign=assign)  # fmt: skip
    return f"sha256:{file_sha256(path)}"


def _fits(shape: Shape, want: Shape) -> bool:
    return len(shape) == len(want) and all(w in (ANY, s) for s, w in zip(shape, want))


def _check(state: Mapping[str, torch.Tensor], want: Expected, source: str | Path,
           layout: Layout) -> None:  # fmt: skip
    missing = sorted(k for k in want.shapes if k not in state and k not in want.optional)
    unexpected = sorted(k for k in state if k not in want.shapes)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {_shown(want.shapes[k])}"
        for k in want.shapes if k in state and not _fits(tuple(state[k].shape), want.shapes[k])
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            shown = ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")
            parts.append(f"{label} keys: {shown}")
    how = "" if layout is NATIVE else f" (read as the {layout.name} layout)"
    raise EncoderError(
        f"checkpoint {source}{how} does not match the encoder architecture; "
        + "; ".join(parts)
        + ". Check --encoder matches the network the checkpoint was trained with."
    )


def _shown(shape: Shape) -> str:
    return "(" + ", ".join("*" if s == ANY else str(s) for s in shape) + (",)" if len(shape) == 1
                                                                            else ")")


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

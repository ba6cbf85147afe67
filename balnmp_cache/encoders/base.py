"""The encoder registry: names -> builders of frozen patch feature extractors.

Every entry is an `EncoderEntry` whose `build(weights, seed, flatten)` returns an `Encoder`;
families (torchvision CNNs in `torchvision`, any timm model as `timm:<name>` in `timm`)
register theirs when the package is imported. A new encoder is one `ENCODERS.register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from balnmp_cache._registry import Registry
from balnmp_cache.errors import EncoderError

__all__ = ["ENCODERS", "IMAGENET_MEAN", "IMAGENET_STD", "Encoder", "EncoderEntry",
           "build_encoder", "check_encoder_name", "check_weights", "list_encoders"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoder:
    """A ready-to-run feature extractor: `module(x (B,3,S,S) normalised) -> (B, feature_dim)`."""

    name: str
    module: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    weights_id: str


@dataclass(frozen=True)
class EncoderEntry:
    """How to build one registered encoder: `build(weights, seed, flatten) -> Encoder`.

    `flattenable`: `flatten=True` (the paper's flattened VGG map) applies to it.
    """

    name: str
    build: Callable[[str | Path, int, bool], Encoder]
    flattenable: bool = False


ENCODERS: Registry[EncoderEntry] = Registry("encoder", "--encoder")
# Prefix families: `<prefix>:<model>` names any model of a library (e.g. "timm:vit_small...");
# an entry builds `(model, weights, seed) -> Encoder`.
PREFIXES: Registry[Callable[[str, str | Path, int], Encoder]] = Registry("encoder family",
                                                                         "--encoder")


def list_encoders() -> list[str]:
    """Registered encoder names; `timm:<model>` works as well when timm is installed."""
    return sorted(ENCODERS.names())


def build_encoder(
    name: str,
    weights: str | Path | None = "none",
    seed: int = 0,
    flatten: bool = False,
    input_size: int | None = None,
) -> Encoder:
    """Build encoder `name` in eval mode with frozen parameters.

    weights: "imagenet" (torchvision weights API; needs the file in the local torch cache when
    offline), "none" (random init after `torch.manual_seed(seed)`: deterministic) or a local
    checkpoint path (state dict, or a dict holding one under "state_dict"/"model").
    input_size overrides the side patches are resized to (CNNs pool globally, so any size
    works; CLAM, for one, feeds 256 px patches to ResNet50 unresized).
    """
    weights = "none" if weights is None else weights
    check_weights(weights)
    prefix, sep, model = name.partition(":")
    if sep and prefix in PREFIXES:
        enc = PREFIXES.get(prefix)(model, weights, seed)
    else:
        entry = _entry(name)
        if flatten and not entry.flattenable:
            flat = [e.name for _, e in ENCODERS.items() if e.flattenable]
            raise EncoderError(f"flatten=True only applies to {', '.join(flat)}, not {name!r}")
        enc = entry.build(weights, seed, flatten)
    if input_size is not None:
        if input_size < 16:
            raise EncoderError(f"input_size must be >= 16 px, got {input_size}")
        enc.input_size = int(input_size)
    module: nn.Module = enc.module
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return enc


def check_encoder_name(name: str) -> None:
    """A registered encoder or `<prefix>:<model>` of a registered family (else `EncoderError`);
    whether the family knows the model is found out when it is built."""
    prefix, sep, _ = name.partition(":")
    if name not in ENCODERS and not (sep and prefix in PREFIXES):
        hint = "".join(f" or '{p}:<model name>'" for p in PREFIXES)
        raise EncoderError(ENCODERS.unknown(name) + hint)


def check_weights(weights: str | Path) -> None:
    """`imagenet`, `none` or an existing checkpoint file (else `EncoderError`)."""
    if str(weights) not in ("imagenet", "none") and not Path(weights).is_file():
        raise EncoderError(f"--weights {str(weights)!r} is neither 'imagenet', 'none' nor an "
                           "existing checkpoint file")


def _entry(name: str) -> EncoderEntry:
    check_encoder_name(name)
    return ENCODERS.get(name)

"""The encoder registry: names -> builders of frozen patch feature extractors.

Every entry is an `EncoderEntry`: `build(weights, seed, flatten)` returns an `Encoder`, and its
`card` states what `--list-encoders` shows without building anything (dimension,
preprocessing, pooling, µm/px, precision, licence). Families register theirs when the package
is imported: the torchvision CNNs (`torchvision`), the pathology foundation models
(`foundation` + `zoo`), CTransPath (`ctranspath`) and any timm model as `timm:<name>`
(`timm`). A new encoder is one `ENCODERS.register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from balnmp_cache._registry import Registry
from balnmp_cache.encoders.pooling import TokenPool
from balnmp_cache.encoders.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from balnmp_cache.errors import EncoderError

__all__ = ["ENCODERS", "IMAGENET_MEAN", "IMAGENET_STD", "UNAVAILABLE", "WEIGHT_KINDS", "Encoder",
           "EncoderCard",
           "EncoderEntry", "build_encoder", "check_encoder_name", "check_weights",
           "default_weights", "list_encoders"]

# `--weights` values besides a checkpoint PATH.
WEIGHT_KINDS = ("imagenet", "none", "hf")


@dataclass
class Encoder:
    """A ready-to-run feature extractor: `module(x (B,3,S,S) normalised) -> (B, feature_dim)`.

    `resize`/`interpolation`/`pil`: patches are resized to `resize` (None: to `input_size`),
    PIL's way or not, and centre-cropped to `input_size` (see `preprocess.Preprocess`);
    `precision`: the autocast
    precision its authors recommend on CUDA (None: the runner's default); `fixed_input`: the
    module accepts only `input_size` (no `--input-size`).
    """

    name: str
    module: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    weights_id: str
    resize: int | None = None
    interpolation: str = "bilinear"
    pil: bool = False
    precision: str | None = None
    fixed_input: bool = False

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.input_size, self.resize, self.interpolation, self.mean, self.std,
                          self.pil)  # fmt: skip


@dataclass(frozen=True)
class EncoderCard:
    """What an encoder is, known without building it (the `--list-encoders` row).

    `feature_dim` (`flat_dim` with `--flatten`); `preprocess`: the model card's transform;
    `pooling`: how the output becomes one vector; `mpp`: the µm/px it was trained at (the
    `--mpp` to use; None: any); `precision`: recommended autocast on CUDA (None: the runner's
    default); `licence`: licence and access; `weights`: the `--weights` used when none is
    given; `hub`: its Hugging Face repository and files; `reference`: where the definition
    comes from; `unknown`: what the published sources leave open (said in the docs' table).
    """

    feature_dim: int
    preprocess: Preprocess = field(default_factory=Preprocess)
    pooling: str = "global average pool"
    mpp: float | None = None
    precision: str | None = None
    licence: str = "torchvision weights · public"
    weights: str = "imagenet"
    hub: str = ""
    reference: str = ""
    flat_dim: int | None = None
    unknown: str = ""


@dataclass(frozen=True)
class EncoderEntry:
    """How to build one registered encoder: `build(weights, seed, flatten) -> Encoder`.

    `flattenable`: `flatten=True` (the paper's flattened VGG map) applies to it; `card`: its
    description; `spec`: the object that defines it (a foundation-model preset), for tests
    and tools that build its bare architecture.
    """

    name: str
    build: Callable[[str | Path, int, bool], Encoder]
    flattenable: bool = False
    card: EncoderCard | None = None
    spec: Any = None


ENCODERS: Registry[EncoderEntry] = Registry("encoder", "--encoder")
# Encoders peers offer that cannot be built here: name -> why (listed, and named when asked for).
UNAVAILABLE: dict[str, str] = {}
# Prefix families: `<prefix>:<model>` names any model of a library (e.g. "timm:vit_small...");
# an entry builds `(model, weights, seed) -> Encoder`.
PREFIXES: Registry[Callable[[str, str | Path, int], Encoder]] = Registry("encoder family",
                                                                         "--encoder")


def list_encoders() -> list[str]:
    """Registered encoder names; `timm:<model>` works as well."""
    return sorted(ENCODERS.names())


def build_encoder(
    name: str,
    weights: str | Path | None = "none",
    seed: int = 0,
    flatten: bool = False,
    input_size: int | None = None,
    pooling: str | None = None,
) -> Encoder:
    """Build encoder `name` in eval mode with frozen parameters.

    weights: "imagenet" (torchvision weights API; needs the file in the local torch cache when
    offline), "hf" (a foundation model's checkpoint from the local Hugging Face cache, see
    `hub`), "none" (random init after `torch.manual_seed(seed)`: deterministic) or a local
    checkpoint path (`.safetensors`, or a `torch.save` state dict, optionally under
    "state_dict"/"model"). input_size overrides the side patches are resized to, with no crop
    (CNNs pool globally, so any size works; CLAM, for one, feeds 256 px patches to ResNet50
    unresized). pooling: another token pooling of a transformer ("cls", "cls+mean").
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
        _resize(enc, int(input_size))
    if pooling is not None:
        if not isinstance(enc.module, TokenPool):
            raise EncoderError(f"--pooling applies to transformer encoders, not {name!r}")
        enc.feature_dim = enc.module.set_rule(pooling)
    module: nn.Module = enc.module
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return enc


def check_encoder_name(name: str) -> None:
    """A registered encoder or `<prefix>:<model>` of a registered family (else `EncoderError`);
    whether the family knows the model is found out when it is built."""
    prefix, sep, _ = name.partition(":")
    if name in UNAVAILABLE:
        raise EncoderError(f"encoder {name!r} is not available here: {UNAVAILABLE[name]}")
    if name not in ENCODERS and not (sep and prefix in PREFIXES):
        hint = "".join(f" or '{p}:<model name>'" for p in PREFIXES)
        raise EncoderError(ENCODERS.unknown(name) + hint)


def check_weights(weights: str | Path) -> None:
    """`imagenet`, `none`, `hf` or an existing checkpoint file (else `EncoderError`)."""
    if str(weights) not in WEIGHT_KINDS and not Path(weights).is_file():
        raise EncoderError(f"--weights {str(weights)!r} is neither 'imagenet', 'none', 'hf' nor "
                           "an existing checkpoint file")


def default_weights(name: str) -> str:
    """The `--weights` an encoder uses when none is given: its card's (ImageNet for the CNNs
    and `timm:<model>`, the Hugging Face cache for the foundation models)."""
    card = ENCODERS.get(name).card if name in ENCODERS else None
    return card.weights if card is not None else "imagenet"


def _resize(enc: Encoder, side: int) -> None:
    """`--input-size`: resize patches straight to `side` (no crop)."""
    if side < 16:
        raise EncoderError(f"input_size must be >= 16 px, got {side}")
    if enc.fixed_input and side != enc.input_size:
        raise EncoderError(f"encoder {enc.name!r} only accepts {enc.input_size} px inputs; drop "
                           f"--input-size {side}")
    enc.input_size, enc.resize = side, None


def _entry(name: str) -> EncoderEntry:
    check_encoder_name(name)
    return ENCODERS.get(name)

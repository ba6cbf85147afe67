"""Patch encoders: a registry of torchvision backbones (plus any timm model) as feature extractors.

Each registered name maps to a torchvision architecture and a *head adapter* that strips the
classifier so that the module returns one global-pooled vector per patch. Keeping the
torchvision parameter names means ImageNet weights and local checkpoints of the full network
load directly (the dropped classifier's keys are ignored, nothing else is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderError(ValueError):
    """An encoder cannot be built: unknown name, unavailable weights or a bad checkpoint."""


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
    """How to build one registered encoder.

    `adapt(model, flatten) -> feature_dim` edits a torchvision model in place so that its
    forward returns features; `head_prefixes` are the state-dict prefixes it removed (ignored
    when a full-network checkpoint is loaded).
    """

    name: str
    arch: str
    adapt: Callable[[nn.Module, bool], int]
    head_prefixes: tuple[str, ...]
    input_size: int = 224
    imagenet_weights: str = "DEFAULT"
    flattenable: bool = False


_REGISTRY: dict[str, EncoderEntry] = {}


def register_encoder(
    name: str,
    *,
    arch: str | None = None,
    head_prefixes: Iterable[str] = (),
    input_size: int = 224,
    imagenet_weights: str = "DEFAULT",
    flattenable: bool = False,
) -> Callable[[Callable[[nn.Module, bool], int]], Callable[[nn.Module, bool], int]]:
    """Register a head adapter for torchvision architecture `arch` (default: `name`)."""

    def deco(adapt: Callable[[nn.Module, bool], int]) -> Callable[[nn.Module, bool], int]:
        if name in _REGISTRY:
            raise ValueError(f"encoder {name!r} is already registered")
        _REGISTRY[name] = EncoderEntry(
            name=name,
            arch=arch or name,
            adapt=adapt,
            head_prefixes=tuple(head_prefixes),
            input_size=input_size,
            imagenet_weights=imagenet_weights,
            flattenable=flattenable,
        )
        return adapt

    return deco


def list_encoders() -> list[str]:
    """Registered encoder names; any `timm:<model>` works as well when timm is installed."""
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------- head adapters


def _vgg_like(model: nn.Module, flatten: bool) -> int:
    """VGG/AlexNet: keep `features`; global average pool (or the paper's flattened map)."""
    model.classifier = nn.Identity()
    if flatten:
        pool = model.avgpool.output_size  # torchvision's fixed map size (7x7 VGG, 6x6 AlexNet)
        side = pool if isinstance(pool, int) else pool[0]
        return _last_channels(model.features) * side * side
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    return _last_channels(model.features)


def _last_channels(features: nn.Module) -> int:
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


for _name in ("vgg16_bn", "vgg16", "alexnet"):
    register_encoder(_name, head_prefixes=("classifier.",), flattenable=True)(_vgg_like)


def _resnet(model: nn.Module, flatten: bool) -> int:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return dim


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_encoder(_name, head_prefixes=("fc.",))(_resnet)


@register_encoder(
    "resnet50_trunc",
    arch="resnet50",
    head_prefixes=("layer4.", "fc."),
    imagenet_weights="IMAGENET1K_V1",  # the weights CLAM's truncated ResNet50 uses
)
def _resnet_trunc(model: nn.Module, flatten: bool) -> int:
    """CLAM's ResNet50 truncated after layer3, average pooled: 1,024-d."""
    model.layer4 = nn.Identity()
    model.fc = nn.Identity()
    return 1024


@register_encoder("densenet121", head_prefixes=("classifier.",))
def _densenet(model: nn.Module, flatten: bool) -> int:
    dim = model.classifier.in_features
    model.classifier = nn.Identity()
    return dim


@register_encoder("inception_v3", head_prefixes=("fc.", "AuxLogits."), input_size=299)
def _inception(model: nn.Module, flatten: bool) -> int:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    model.AuxLogits = None  # eval-mode forward skips it; its weights are not features
    model.aux_logits = False
    return dim


# ----------------------------------------------------------------------------- building


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
    if name.startswith("timm:"):
        enc = _build_timm(name, weights, seed)
    else:
        enc = _build_torchvision(name, weights, seed, flatten)
    if input_size is not None:
        if input_size < 16:
            raise EncoderError(f"input_size must be >= 16 px, got {input_size}")
        enc.input_size = int(input_size)
    enc.module.eval()
    for p in enc.module.parameters():
        p.requires_grad_(False)
    return enc


def _entry(name: str) -> EncoderEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EncoderError(
            f"unknown encoder {name!r}; choose one of {', '.join(list_encoders())} "
            "or 'timm:<model name>' (needs timm installed)"
        ) from None


def _build_torchvision(name: str, weights: str | Path, seed: int, flatten: bool) -> Encoder:
    from torchvision.models import get_model, get_model_weights

    entry = _entry(name)
    if flatten and not entry.flattenable:
        flat = [e.name for e in _REGISTRY.values() if e.flattenable]
        raise EncoderError(f"flatten=True only applies to {', '.join(flat)}, not {name!r}")
    kind = str(weights)
    if kind == "imagenet":
        tv_weights = get_model_weights(entry.arch)[entry.imagenet_weights]
        try:
            model = get_model(entry.arch, weights=tv_weights)
        except OSError as exc:  # URLError is an OSError: the download failed
            raise EncoderError(_imagenet_hint(name, tv_weights, exc)) from exc
        weights_id = f"imagenet:{type(tv_weights).__name__}.{tv_weights.name}"
        dim = entry.adapt(model, flatten)
    else:
        # Build on the meta device (no memory, no init), drop the head, then initialise only
        # what is kept: VGG's 120M-parameter classifier is never materialised.
        extra = {"init_weights": False} if entry.arch == "inception_v3" else {}
        with torch.device("meta"):
            model = get_model(entry.arch, weights=None, **extra)
            dim = entry.adapt(model, flatten)
        model = model.to_empty(device="cpu")
        torch.manual_seed(seed)
        init_weights(model)
        weights_id = f"none:seed={seed}"
    if kind not in ("imagenet", "none"):
        weights_id = load_checkpoint(model, weights, ignore_prefixes=entry.head_prefixes)
    return Encoder(
        name=name,
        module=model,
        input_size=entry.input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        feature_dim=dim,
        weights_id=weights_id,
    )


def _imagenet_hint(name: str, tv_weights: Any, exc: BaseException | None = None) -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(tv_weights.url).name
    why = f" ({exc})" if exc else ""
    return (
        f"ImageNet weights for encoder {name!r} ({type(tv_weights).__name__}.{tv_weights.name}) "
        f"are not in the local torch cache ({hub}) and cannot be downloaded here{why}. "
        f"Copy {tv_weights.url} to {hub} (or set TORCH_HOME), pass --weights PATH to a local "
        "checkpoint, or use --weights none for an offline demo."
    )


def _build_timm(name: str, weights: str | Path, seed: int) -> Encoder:
    model_name = name.split(":", 1)[1]
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


# ----------------------------------------------------------------------------- checkpoints


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
        raise EncoderError(
            f"weights {str(path)!r} is neither 'imagenet', 'none' nor an existing checkpoint file"
        )
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

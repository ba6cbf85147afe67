"""torchvision CNNs as patch encoders: each name maps to an architecture and a *head adapter*.

The adapter strips the classifier so the module returns one global-pooled vector per patch
(or, with `flatten`, the map the BALNMP paper's `backbone_builder.py` cuts: VGG/AlexNet's
adaptive-pooled map, DenseNet's `features` map without its final ReLU, both flattened).
Keeping torchvision's parameter names means ImageNet weights and local checkpoints of the full
network load directly (the dropped classifier's keys are ignored, nothing else is); a
released BALNMP model (`image_feature_extractor.extractor.*`) loads through `official`'s layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from balnmp_cache.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderCard,
    EncoderEntry,
)
from balnmp_cache.encoders.checkpoint import init_weights, load_checkpoint
from balnmp_cache.encoders.layouts import Layout
from balnmp_cache.encoders.official import official_layout
from balnmp_cache.encoders.preprocess import Preprocess
from balnmp_cache.errors import EncoderError

__all__ = ["register_torchvision"]

# adapt(model, flatten) -> feature_dim, or (the module to use instead, feature_dim)
Adapter = Callable[[nn.Module, bool], "int | tuple[nn.Module, int]"]
M = TypeVar("M", bound=nn.Module)


def register_torchvision(
    name: str,
    *,
    arch: str | None = None,
    head_prefixes: Iterable[str] = (),
    input_size: int = 224,
    imagenet_weights: str = "DEFAULT",
    flattenable: bool = False,
    dims: tuple[int, int | None] | None = None,
    reference: str = "torchvision",
) -> Callable[[Adapter], Adapter]:
    """Register torchvision architecture `arch` (default: `name`) with a head adapter
    `adapt(model, flatten) -> feature_dim` (or `(module, feature_dim)` when it wraps the
    model); `head_prefixes` are the state-dict prefixes the adapter removed (ignored when a
    full-network checkpoint is loaded); `dims`: (pooled, flattened) dimensions for the card."""

    prefixes = tuple(head_prefixes)
    family = official_layout(arch or name)
    layouts: tuple[Layout, ...] = (family,) if family is not None else ()

    def deco(adapt: Adapter) -> Adapter:
        def build(weights: str | Path, seed: int, flatten: bool) -> Encoder:
            return _build(name, arch or name, adapt, prefixes, input_size, imagenet_weights,
                          weights, seed, flatten, layouts)

        card = None if dims is None else EncoderCard(
            feature_dim=dims[0], flat_dim=dims[1], preprocess=Preprocess(input_size),
            reference=reference + ("; loads released BALNMP checkpoints" if layouts else ""))
        ENCODERS.register(name, EncoderEntry(name, build, flattenable, card))
        return adapt

    return deco


def _vgg_like(model: nn.Module, flatten: bool) -> int:
    """VGG/AlexNet: keep `features`; global average pool (or the paper's flattened map)."""
    model.classifier = nn.Identity()
    features = _module(model, "features", nn.Module)
    if flatten:
        # torchvision's fixed map size (7x7 VGG, 6x6 AlexNet)
        pool = _module(model, "avgpool", nn.AdaptiveAvgPool2d).output_size
        side = pool[0] if isinstance(pool, tuple) else pool
        if not isinstance(side, int):
            raise EncoderError(f"{type(model).__name__}: --flatten needs a fixed pooled map, "
                               f"got output size {pool}")
        return _last_channels(features) * side * side
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    return _last_channels(features)


def _module(model: nn.Module, name: str, kind: type[M]) -> M:
    """The submodule `name` of a torchvision model, checked to be a `kind`."""
    sub = getattr(model, name)
    if not isinstance(sub, kind):
        raise EncoderError(f"{type(model).__name__}.{name} is a {type(sub).__name__}, not a "
                           f"{kind.__name__}: this torchvision version is not supported")
    return sub


def _in_features(model: nn.Module, name: str) -> int:
    return int(_module(model, name, nn.Linear).in_features)


def _last_channels(features: nn.Module) -> int:
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


for _name in ("vgg16_bn", "vgg16", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn"):
    register_torchvision(_name, head_prefixes=("classifier.",), flattenable=True,
                         dims=(512, 512 * 7 * 7))(_vgg_like)  # fmt: skip
register_torchvision("alexnet", head_prefixes=("classifier.",), flattenable=True,
                     dims=(256, 256 * 6 * 6))(_vgg_like)  # fmt: skip


def _resnet(model: nn.Module, flatten: bool) -> int:
    dim = _in_features(model, "fc")
    model.fc = nn.Identity()
    return dim


for _name, _dim in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
                   ("resnet101", 2048), ("resnet152", 2048)):  # fmt: skip
    register_torchvision(_name, head_prefixes=("fc.",), dims=(_dim, None))(_resnet)


@register_torchvision(
    "resnet50_trunc",
    arch="resnet50",
    head_prefixes=("layer4.", "fc."),
    imagenet_weights="IMAGENET1K_V1",  # the weights CLAM's truncated ResNet50 uses
    dims=(1024, None),
    reference="CLAM's resnet50_trunc",
)
def _resnet_trunc(model: nn.Module, flatten: bool) -> int:
    """CLAM's ResNet50 truncated after layer3, average pooled: 1,024-d."""
    model.layer4 = nn.Identity()
    model.fc = nn.Identity()
    return 1024


class _DenseNetMap(nn.Module):
    """DenseNet's `features` map, flattened: the official BALNMP cut (`children()[:-1]`),
    which drops the final ReLU and the pooling. Keys stay `features.*`."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


def _densenet(model: nn.Module, flatten: bool) -> int | tuple[nn.Module, int]:
    dim = _in_features(model, "classifier")
    if flatten:  # the 7x7 map of a 224 px input
        return _DenseNetMap(_module(model, "features", nn.Module)), dim * 7 * 7
    model.classifier = nn.Identity()
    return dim


for _name, _dim in (("densenet121", 1024), ("densenet161", 2208), ("densenet169", 1664),
                    ("densenet201", 1920)):  # fmt: skip
    register_torchvision(_name, head_prefixes=("classifier.",), flattenable=True,
                         dims=(_dim, _dim * 49))(_densenet)  # fmt: skip


@register_torchvision("inception_v3", head_prefixes=("fc.", "AuxLogits."), input_size=299,
                      dims=(2048, None))
def _inception(model: nn.Module, flatten: bool) -> int:
    dim = _in_features(model, "fc")
    model.fc = nn.Identity()
    # eval-mode forward skips the auxiliary head; its weights are not features
    model.AuxLogits = None  # type: ignore[assignment]  # torchvision checks `is None`
    model.aux_logits = False  # type: ignore[assignment]  # a plain bool attribute

    return dim



def _build(name: str, arch: str, adapt: Adapter, head_prefixes: tuple[str, ...], input_size: int,
           imagenet_weights: str, weights: str | Path, seed: int, flatten: bool,
           layouts: tuple[Layout, ...]) -> Encoder:  # fmt: skip
    from torchvision.models import get_model, get_model_weights

    kind = str(weights)
    if kind == "hf":
        raise EncoderError(f"encoder {name!r} has no Hugging Face weights; use --weights "
                           "imagenet, none or PATH")
    if kind == "imagenet":
        tv_weights = get_model_weights(arch)[imagenet_weights]
        try:
            model = get_model(arch, weights=tv_weights)
        except OSError as exc:  # URLError is an OSError: the download failed
            raise EncoderError(_imagenet_hint(name, tv_weights, exc)) from exc
        weights_id = f"imagenet:{type(tv_weights).__name__}.{tv_weights.name}"
        model, dim = _adapted(model, adapt(model, flatten))
    else:
        # Build on the meta device (no memory, no init), drop the head, then initialise only
        # what is kept: VGG's 120M-parameter classifier is never materialised.
        extra = {"init_weights": False} if arch == "inception_v3" else {}
        with torch.device("meta"):
            model = get_model(arch, weights=None, **extra)
            model, dim = _adapted(model, adapt(model, flatten))
        model = model.to_empty(device="cpu")
        torch.manual_seed(seed)
        init_weights(model)
        weights_id = f"none:seed={seed}"
    if kind not in ("imagenet", "none"):
        weights_id = load_checkpoint(model, weights, ignore_prefixes=head_prefixes,
                                     layouts=layouts)  # fmt: skip
    return Encoder(name=name, module=model, input_size=input_size, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, feature_dim=dim, weights_id=weights_id,
                   fixed_input=isinstance(model, _DenseNetMap))  # fmt: skip


def _adapted(model: nn.Module, adapted: int | tuple[nn.Module, int]) -> tuple[nn.Module, int]:
    return (model, adapted) if isinstance(adapted, int) else adapted

def _imagenet_hint(name: str, tv_weights: Any, exc: BaseException | None = None) -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(tv_weights.url).name
    why = f" ({exc})" if exc else ""
    return (
        f"ImageNet weights for encoder {name!r} ({type(tv_weights).__name__}.{tv_weights.name}) "
        f"are not in the local torch cache ({hub}) and cannot be downloaded here{why}. "
        f"Copy {tv_weights.url} to {hub} (or set TORCH_HOME), pass --weights PATH to a local "
        "checkpoint, or use --weights none for an offline demo."
    )



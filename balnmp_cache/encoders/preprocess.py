"""How patches become an encoder's input: resize (bilinear or bicubic, antialiased), an optional
centre crop, then per-channel normalisation, all on the device and per batch.

`Preprocess` states a model card's transform (`Resize(resize)` + `CenterCrop(size)` +
`Normalize(mean, std)`); `resize_and_crop` applies its geometric part to the patches as read
(uint8) and returns float pixels in 0..255, so the runner can fold the normalisation into one
affine operation afterwards. `Preprocess.resample` names the resize kernel (recorded with the
features: `extract_settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "RESAMPLE_LEGACY", "Preprocess",
           "resize_and_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
# `resample` of a kind -> the kernel balnmp used for it before `resample` was recorded.
RESAMPLE_LEGACY = {"torchvision-8bit": "float"}


@dataclass(frozen=True)
class Preprocess:
    """A model card's evaluation transform for square patches.

    `size`: the side the encoder sees; `resize`: the side patches are resized to before a
    centre crop to `size` (None: resized straight to `size`, no crop), as torchvision's
    `Resize(resize)` + `CenterCrop(size)`; `interpolation`: "bilinear" or "bicubic" (both
    antialiased, like PIL); `mean`/`std`: the normalisation of pixels scaled to 0..1;
    `pil`: resample as PIL does an 8-bit image (the width, then the height, each pass rounded
    and clipped to 0..255), so a card's `transforms.Resize` on a PIL image is reproduced to
    one grey level; otherwise as torchvision's `Resize(antialias=True)` does the uint8 patch
    (the CNN family: torchvision weights' own transform on a tensor): on the CPU its 8-bit
    kernel (PIL's fixed-point arithmetic, exact per patch on any batch), elsewhere (and for
    bilinear on an x86 CPU without AVX2) the float kernel rounded to 8 bits, as torchvision
    computes it there.
    """

    size: int = 224
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pil: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: one of {INTERPOLATIONS}")
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize {self.resize} is smaller than the crop {self.size}")

    def describe(self) -> str:
        """Short form for tables, e.g. "resize 256 bicubic, crop 224"."""
        if self.resize is None or self.resize == self.size:
            return f"resize {self.size} {self.interpolation}"
        return f"resize {self.resize} {self.interpolation}, crop {self.size}"

    @property
    def resample(self) -> str:
        """The resize kernel: "pil-8bit" (`pil`) or "torchvision-8bit" (see the class)."""
        return "pil-8bit" if self.pil else "torchvision-8bit"


def resize_and_crop(x: torch.Tensor, p: Preprocess) -> torch.Tensor:
    """Patches (B, 3, H, W) as read, uint8 -> float (B, 3, size, size) in 0..255.

    A batch already at the target side is not resampled at all. PIL-card encoders resample
    in float, rounded per pass; the others go through torchvision's own resize of the uint8
    batch (float input is resized in float there, as torchvision does a float tensor).
    Bicubic overshoot is clamped to 0..255, as 8-bit output is.
    """
    side = p.size if p.resize is None else p.resize
    if x.shape[-2:] != (side, side):
        if p.pil:
            x = _pass(x.float(), (x.shape[-2], side), p.interpolation)
            x = _pass(x, (side, side), p.interpolation)
        else:
            mode = TF.InterpolationMode(p.interpolation)
            x = TF.resize(x, [side, side], interpolation=mode, antialias=True)
            if p.interpolation == "bicubic" and x.is_floating_point():
                x = x.clamp(0.0, 255.0)
    if side != p.size:
        top = int(round((side - p.size) / 2.0))  # torchvision CenterCrop's offset
        x = x[..., top : top + p.size, top : top + p.size]
    return x.float()


def _pass(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """One PIL resampling pass: antialiased, then rounded and clipped to 8-bit levels."""
    x = F.interpolate(x, size=size, mode=mode, antialias=True)
    return x.round_().clamp_(0.0, 255.0)

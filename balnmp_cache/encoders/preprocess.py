"""How patches become an encoder's input: resize (bilinear or bicubic, antialiased), an optional
centre crop, then per-channel normalisation, all on the device and per batch.

`Preprocess` states a model card's transform (`Resize(resize)` + `CenterCrop(size)` +
`Normalize(mean, std)`); `resize_and_crop` applies its geometric part to float pixels in
0..255, so the runner can fold the normalisation into one affine operation afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "Preprocess", "resize_and_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """A model card's evaluation transform for square patches.

    `size`: the side the encoder sees; `resize`: the side patches are resized to before a
    centre crop to `size` (None: resized straight to `size`, no crop), as torchvision's
    `Resize(resize)` + `CenterCrop(size)`; `interpolation`: "bilinear" or "bicubic" (both
    antialiased, like PIL); `mean`/`std`: the normalisation of pixels scaled to 0..1;
    `pil`: resample as PIL does an 8-bit image (the width, then the height, each pass rounded
    and clipped to 0..255), so a card's `transforms.Resize` on a PIL image is reproduced to
    one grey level; otherwise one float pass (the CNN family's resize, kept as it was).
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


def resize_and_crop(x: torch.Tensor, p: Preprocess) -> torch.Tensor:
    """Float pixels (B, 3, H, W) in 0..255 -> (B, 3, size, size), still in 0..255.

    A batch already at the target side is returned unchanged (no resampling at all).
    Bicubic overshoot is clamped to 0..255, as PIL's 8-bit output is.
    """
    side = p.size if p.resize is None else p.resize
    if x.shape[-2:] != (side, side):
        if p.pil:
            x = _pass(x, (x.shape[-2], side), p.interpolation)
            x = _pass(x, (side, side), p.interpolation)
        else:
            x = F.interpolate(x, size=(side, side), mode=p.interpolation, antialias=True)
            if p.interpolation == "bicubic":
                x = x.clamp(0.0, 255.0)
    if side != p.size:
        top = int(round((side - p.size) / 2.0))  # torchvision CenterCrop's offset
        x = x[..., top : top + p.size, top : top + p.size]
    return x


def _pass(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """One PIL resampling pass: antialiased, then rounded and clipped to 8-bit levels."""
    x = F.interpolate(x, size=size, mode=mode, antialias=True)
    return x.round_().clamp_(0.0, 255.0)

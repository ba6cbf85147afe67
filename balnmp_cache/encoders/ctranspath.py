"""CTransPath (Wang et al., 2022): a Swin-T whose patch embedding is a small convolutional stem.

Built from timm's `swin_tiny_patch4_window7_224` with `ConvStem` as its `embed_layer`; the
stem is written here from the published architecture (two 3x3 stride-2 conv-BN-ReLU stages,
12 then 24 channels, a 1x1 projection to 96, then the LayerNorm), not from the authors'
GPL-3.0 code. Everything else is stock Swin-T (embed 96, depths 2-2-6-2, window 7), so the
embedding is the mean of the final LayerNorm-ed 7x7 tokens: 768-d, at exactly 224 px.

The released weights (the authors' `ctranspath.pth` and CHIEF's re-trained
`CHIEF_CTransPath.pth`, which TRIDENT's `ctranspath` loads) are timm-0.5.4 Swin state dicts
under `"model"`: patch merging sits at the *end* of stages 0-2 (`layers.{0,1,2}.downsample`),
and the fixed `relative_position_index` / `attn_mask` buffers are saved. `OldSwin` reads them
into today's timm, where merging starts stages 1-3 and those buffers are recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from balnmp_cache.encoders.foundation import Preset, register_preset
from balnmp_cache.encoders.hub import HubWeights
from balnmp_cache.encoders.layouts import Expected, Renames, Shape
from balnmp_cache.encoders.preprocess import Preprocess

__all__ = ["CTRANSPATH", "ConvStem", "OldSwin"]

_WINDOW_AREA = 49  # 7 x 7 windows
_GRIDS = (56, 28, 14, 7)  # token grid of each stage at 224 px


class ConvStem(nn.Module):
    """CTransPath's patch embedding: (B, 3, H, W) -> (B, H/4, W/4, embed_dim), normed.

    Takes timm's `embed_layer` arguments; `proj` is conv-BN-ReLU twice (3x3, stride 2, no
    bias; `embed_dim/8` then `embed_dim/4` channels) and a 1x1 conv with bias to `embed_dim`.
    """

    def __init__(self, img_size: Any = 224, patch_size: Any = 4, in_chans: int = 3,
                 embed_dim: int = 96, norm_layer: Any = None, **_: Any) -> None:  # fmt: skip
        super().__init__()
        side = img_size if isinstance(img_size, int) else img_size[0]
        if patch_size not in (4, (4, 4)) or embed_dim % 8:
            raise ValueError("ConvStem needs patch_size 4 and embed_dim divisible by 8")
        self.img_size = (side, side)
        self.patch_size = (4, 4)
        self.grid_size = (side // 4, side // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # NHWC, as timm's Swin expects


class OldSwin(Renames):
    """A timm-0.5.4 Swin-T state dict: merging renamed one stage on; the saved
    `relative_position_index` (every block) and `attn_mask` (shifted blocks of stages 0-2)
    buffers are optional and dropped; a `head.*` classifier is ignored."""

    def __init__(self) -> None:
        super().__init__(name="timm-0.5.4 Swin (CTransPath)", head=("head.",), renames=tuple(
            (f"layers.{s}.downsample.", f"layers.{s + 1}.downsample.") for s in range(3)))

    def expected(self, own: Mapping[str, Shape], ignored: tuple[str, ...] = ()) -> Expected:
        want = super().expected(own, ignored)
        blocks = sorted({k.split(".attn.")[0] for k in own if ".attn.qkv.weight" in k})
        for block in blocks:  # "layers.S.blocks.B"
            stage, index = int(block.split(".")[1]), int(block.split(".")[3])
            buffers: dict[str, Shape] = {
                f"{block}.attn.relative_position_index": (_WINDOW_AREA, _WINDOW_AREA)}
            if index % 2 and _GRIDS[stage] > 7:  # shifted windows need a mask
                windows = (_GRIDS[stage] // 7) ** 2
                buffers[f"{block}.attn_mask"] = (windows, _WINDOW_AREA, _WINDOW_AREA)
            want.shapes.update(buffers)
            want.optional.update(buffers)
        return want

    def convert(self, state: dict[str, torch.Tensor],
                own: Mapping[str, Shape]) -> dict[str, torch.Tensor]:  # fmt: skip
        kept = {k: v for k, v in state.items()
                if not k.endswith(("relative_position_index", "attn_mask"))}
        return super().convert(kept, own)


CTRANSPATH = register_preset(Preset(
    "ctranspath", "swin_tiny_patch4_window7_224", {"embed_layer": ConvStem, "num_classes": 0},
    Preprocess(224, pil=True), "mean", 768,
    HubWeights(("MahmoodLab/hest-bench",), ("fm_v1/ctranspath/CHIEF_CTransPath.pth",),
               repo_type="dataset", gated=None),
    "weights UNKNOWN (the authors' code is GPL-3.0, not used here)",
    "Xiyue-Wang/TransPath ctran.py, get_features_CTransPath.py (resize 224, ImageNet); "
    "TRIDENT load.py:421-447 (CHIEF weights)",
    mpp=1.0, precision="fp32", layout=OldSwin(), fixed_input=True,
    unknown="licence of the weights; whether hest-bench is gated"))

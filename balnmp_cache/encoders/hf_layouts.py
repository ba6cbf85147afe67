"""Hugging Face `transformers` checkpoints (ViT, DINOv2, DINOv2 with registers) read into
timm's `VisionTransformer`, so these presets need no `transformers` install.

The key mapping (published -> timm), per layer `{n}`:

| `transformers` | timm |
| --- | --- |
| `embeddings.cls_token`, `embeddings.register_tokens` | `cls_token`, `reg_token` |
| `embeddings.position_embeddings` | `pos_embed` (see below) |
| `embeddings.patch_embeddings.projection.*` | `patch_embed.proj.*` |
| `encoder.layer.{n}.layernorm_before.*` / `.norm1.*` | `blocks.{n}.norm1.*` |
| `encoder.layer.{n}.attention.attention.{query,key,value}.*` | `blocks.{n}.attn.qkv.*` (concatenated q, k, v) |
| `encoder.layer.{n}.attention.output.dense.*` | `blocks.{n}.attn.proj.*` |
| `encoder.layer.{n}.layer_scale1.lambda1`, `layer_scale2.lambda1` | `blocks.{n}.ls1.gamma`, `ls2.gamma` |
| `encoder.layer.{n}.layernorm_after.*` / `.norm2.*` | `blocks.{n}.norm2.*` |
| `encoder.layer.{n}.intermediate.dense.*`, `output.dense.*` (ViT) | `blocks.{n}.mlp.fc1.*`, `mlp.fc2.*` |
| `encoder.layer.{n}.mlp.fc1.*`/`fc2.*`, or `mlp.weights_in.*`/`weights_out.*` (SwiGLU) | `blocks.{n}.mlp.fc1.*`, `mlp.fc2.*` |
| `layernorm.*` | `norm.*` |

`embeddings.mask_token` (masked-image training only) and ViT's `pooler.*` are accepted and
dropped. DINOv2's SwiGLU computes `silu(x1) * x2` of the halves of `weights_in`, which is
timm's `SwiGLUPacked`. Position embeddings: `transformers` adds the checkpoint's grid to the
class and patch tokens, resampling the patch part (bicubic; antialiased for the registers
model, not for plain DINOv2) when the input grid differs. The resampling is done once here, to
the grid of the encoder's input; for the registers model, whose register tokens take no
position embedding, the class token's embedding is added to the class token, so timm's
`no_embed_class` form gives the same sums.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F

from balnmp_cache.encoders.layouts import ANY, Expected, Layout, Renames, Shape
from balnmp_cache.errors import EncoderError

__all__ = ["HFLayout"]

_POS, _CLS = "embeddings.position_embeddings", "embeddings.cls_token"
_MASK = "embeddings.mask_token"
_COMMON = (
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{n}.attention.output.dense.", "blocks.{n}.attn.proj."),
    ("layernorm.", "norm."),
)
_QKV = (("blocks.{n}.attn.qkv.", tuple(f"encoder.layer.{{n}}.attention.attention.{p}."
                                       for p in ("query", "key", "value"))),)
_VIT = (
    ("encoder.layer.{n}.layernorm_before.", "blocks.{n}.norm1."),
    ("encoder.layer.{n}.layernorm_after.", "blocks.{n}.norm2."),
    ("encoder.layer.{n}.intermediate.dense.", "blocks.{n}.mlp.fc1."),
    ("encoder.layer.{n}.output.dense.", "blocks.{n}.mlp.fc2."),
)
_DINOV2 = (
    ("encoder.layer.{n}.norm1.", "blocks.{n}.norm1."),
    ("encoder.layer.{n}.norm2.", "blocks.{n}.norm2."),
    ("encoder.layer.{n}.layer_scale1.lambda1", "blocks.{n}.ls1.gamma"),
    ("encoder.layer.{n}.layer_scale2.lambda1", "blocks.{n}.ls2.gamma"),
)
_MLP = (("encoder.layer.{n}.mlp.fc1.", "blocks.{n}.mlp.fc1."),
        ("encoder.layer.{n}.mlp.fc2.", "blocks.{n}.mlp.fc2."))
_SWIGLU = (("encoder.layer.{n}.mlp.weights_in.", "blocks.{n}.mlp.fc1."),
           ("encoder.layer.{n}.mlp.weights_out.", "blocks.{n}.mlp.fc2."))


class HFLayout(Layout):
    """A `transformers` checkpoint of a ViT (`family="vit"`) or DINOv2 (`"dinov2"`, with
    `swiglu` MLPs and/or `registers`) read into the timm `VisionTransformer` built for it.

    ViT's grid must equal the encoder's (`ViTModel` does not resample by default); DINOv2's
    is resampled as `transformers` does (bicubic; antialiased only with registers).
    """

    def __init__(self, family: str, swiglu: bool = False, registers: bool = False) -> None:
        if family not in ("vit", "dinov2") or (family == "vit" and (swiglu or registers)):
            raise ValueError(f"no transformers layout {family!r} (swiglu={swiglu}, "
                             f"registers={registers})")
        self.family, self.registers = family, registers
        self.name = "transformers " + ("ViT" if family == "vit" else "DINOv2" + (
            "-with-registers" if registers else ""))
        body = _VIT if family == "vit" else _DINOV2 + (_SWIGLU if swiglu else _MLP)
        self.rules = Renames(name=self.name, renames=_COMMON + body, splits=_QKV)

    def matches(self, keys: Collection[str]) -> bool:
        return _POS in keys

    def expected(self, own: Mapping[str, Shape], ignored: tuple[str, ...] = ()) -> Expected:
        body = {k: s for k, s in own.items() if k not in ("pos_embed", "cls_token")}
        want = self.rules.expected(body, ignored)
        pos = own["pos_embed"]
        want.shapes[_CLS] = own["cls_token"]
        if self.family == "vit":
            want.shapes[_POS] = pos
        else:
            want.shapes[_POS] = (1, ANY, pos[2])
            want.shapes[_MASK] = (1, pos[2])
            want.optional.add(_MASK)
        return Expected(want.shapes, want.optional, ("pooler.", *want.ignored))

    def convert(self, state: dict[str, torch.Tensor],
                own: Mapping[str, Shape]) -> dict[str, torch.Tensor]:  # fmt: skip
        state = dict(state)
        state.pop(_MASK, None)
        pos, cls = state.pop(_POS), state.pop(_CLS)
        body = {k: s for k, s in own.items() if k not in ("pos_embed", "cls_token")}
        out = self.rules.convert(state, body)
        n_patches = own["pos_embed"][1] - (0 if self.registers else 1)
        patches = self._patch_grid(pos[:, 1:], math.isqrt(n_patches))
        if self.registers:  # timm's no_embed_class: the class token carries its embedding
            out["cls_token"], out["pos_embed"] = cls + pos[:, :1], patches
        else:
            out["cls_token"], out["pos_embed"] = cls, torch.cat([pos[:, :1], patches], dim=1)
        return out

    def _patch_grid(self, patch_pos: torch.Tensor, target: int) -> torch.Tensor:
        """The checkpoint's patch position embeddings on a `target` x `target` grid."""
        side = math.isqrt(patch_pos.shape[1])
        if side * side != patch_pos.shape[1]:
            raise EncoderError(f"{_POS} holds {patch_pos.shape[1]} patch positions, not a "
                               "square grid: not a checkpoint of this model")
        if side == target:
            return patch_pos
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False,
                             antialias=self.registers)  # fmt: skip
        return grid.permute(0, 2, 3, 1).reshape(1, target * target, -1).to(patch_pos.dtype)

"""Encoder test helpers: small presets registered for one test, checkpoints written in the
published layouts (transformers' names, the official BALNMP model's), a Hugging Face cache laid
out as `huggingface_hub` writes it, and independent re-statements of the reference forwards
(transformers' ViT/DINOv2, the official `image_feature_extractor`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from balnmp_cache.encoders import ENCODERS, Preset, register_preset


@contextlib.contextmanager
def temp_preset(base: str, name: str, **changes: Any) -> Iterator[Preset]:
    """`base`'s preset under `name`, with `changes` (`kwargs` entries are merged), registered
    for the duration of the block."""
    spec = ENCODERS.get(base).spec
    kwargs = {**spec.kwargs, **changes.pop("kwargs", {})}
    preset = register_preset(dataclasses.replace(spec, name=name, kwargs=kwargs, aliases=(),
                                                 **changes))  # fmt: skip
    try:
        yield preset
    finally:
        ENCODERS.unregister(name)


def hf_state(width: int, depth: int, patch: int, grid: int, *, vit: bool = False,
             swiglu_hidden: int | None = None, registers: int = 0, seed: int = 0
             ) -> dict[str, torch.Tensor]:  # fmt: skip
    """A random checkpoint with transformers' key names: `ViTModel` (`vit`) or `Dinov2Model`
    / `Dinov2WithRegistersModel` (layer scale; SwiGLU when `swiglu_hidden`)."""
    g = torch.Generator().manual_seed(seed)
    d, shapes = width, {}
    shapes["embeddings.cls_token"] = (1, 1, d)
    shapes["embeddings.position_embeddings"] = (1, 1 + grid * grid, d)
    shapes["embeddings.patch_embeddings.projection.weight"] = (d, 3, patch, patch)
    shapes["embeddings.patch_embeddings.projection.bias"] = (d,)
    if not vit:
        shapes["embeddings.mask_token"] = (1, d)
    if registers:
        shapes["embeddings.register_tokens"] = (1, registers, d)
    for i in range(depth):
        pre = f"encoder.layer.{i}."
        for t in ("query", "key", "value"):
            shapes |= {f"{pre}attention.attention.{t}.weight": (d, d),
                       f"{pre}attention.attention.{t}.bias": (d,)}  # fmt: skip
        shapes |= {f"{pre}attention.output.dense.weight": (d, d),
                   f"{pre}attention.output.dense.bias": (d,)}  # fmt: skip
        norms = ("layernorm_before", "layernorm_after") if vit else ("norm1", "norm2")
        for n in norms:
            shapes |= {f"{pre}{n}.weight": (d,), f"{pre}{n}.bias": (d,)}
        if vit:
            mlp = {"intermediate.dense": (4 * d, d), "output.dense": (d, 4 * d)}
        elif swiglu_hidden:
            mlp = {"mlp.weights_in": (2 * swiglu_hidden, d), "mlp.weights_out": (d, swiglu_hidden)}
        else:
            mlp = {"mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d)}
        for n, s in mlp.items():
            shapes |= {f"{pre}{n}.weight": s, f"{pre}{n}.bias": (s[0],)}
        if not vit:
            shapes |= {f"{pre}layer_scale1.lambda1": (d,), f"{pre}layer_scale2.lambda1": (d,)}
    shapes |= {"layernorm.weight": (d,), "layernorm.bias": (d,)}
    return {k: torch.randn(s, generator=g) * (0.5 if k.endswith("_token") else 0.05) + (
        1.0 if ("norm" in k and k.endswith("weight")) or "lambda" in k else 0.0)
        for k, s in shapes.items()}  # fmt: skip


def hf_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, *, heads: int, patch: int,
               vit: bool = False, eps: float = 1e-6) -> torch.Tensor:  # fmt: skip
    """`last_hidden_state` of transformers' ViT / DINOv2 (with registers) for `sd`, re-stated:
    patch embedding, class token, position embeddings (the patch grid resampled bicubically
    when the input's differs; antialiased in the registers model), registers after the class
    token, pre-norm blocks (layer scale and SwiGLU for DINOv2), final layernorm."""
    d = sd["embeddings.cls_token"].shape[-1]
    pe = "embeddings.patch_embeddings.projection."
    h = F.conv2d(x, sd[pe + "weight"], sd[pe + "bias"], stride=patch).flatten(2).transpose(1, 2)
    b, n = h.shape[:2]
    pos = sd["embeddings.position_embeddings"]
    registers = sd.get("embeddings.register_tokens")
    if pos.shape[1] != n + 1:
        side, target = math.isqrt(pos.shape[1] - 1), math.isqrt(n)
        grid = pos[:, 1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(target, target), mode="bicubic", align_corners=False,
                             antialias=registers is not None)  # fmt: skip
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n, d)], dim=1)
    h = torch.cat([sd["embeddings.cls_token"].expand(b, -1, -1), h], dim=1) + pos
    if registers is not None:
        h = torch.cat([h[:, :1], registers.expand(b, -1, -1), h[:, 1:]], dim=1)
    i = 0
    while f"encoder.layer.{i}.attention.output.dense.weight" in sd:
        h = _hf_layer(sd, f"encoder.layer.{i}.", h, heads, vit, eps)
        i += 1
    return F.layer_norm(h, (d,), sd["layernorm.weight"], sd["layernorm.bias"], eps)


def _hf_layer(sd: dict[str, torch.Tensor], pre: str, h: torch.Tensor, heads: int, vit: bool,
              eps: float) -> torch.Tensor:  # fmt: skip
    d = h.shape[-1]
    n1, n2 = ("layernorm_before", "layernorm_after") if vit else ("norm1", "norm2")

    def lin(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(t, sd[pre + name + ".weight"], sd[pre + name + ".bias"])

    y = F.layer_norm(h, (d,), sd[pre + n1 + ".weight"], sd[pre + n1 + ".bias"], eps)
    q, k, v = (lin(y, f"attention.attention.{t}").unflatten(-1, (heads, -1)).transpose(1, 2)
               for t in ("query", "key", "value"))  # fmt: skip
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
    a = lin(att.transpose(1, 2).flatten(2), "attention.output.dense")
    h = h + (a if vit else a * sd[pre + "layer_scale1.lambda1"])
    y = F.layer_norm(h, (d,), sd[pre + n2 + ".weight"], sd[pre + n2 + ".bias"], eps)
    if vit:
        m = lin(F.gelu(lin(y, "intermediate.dense")), "output.dense")
    elif pre + "mlp.weights_in.weight" in sd:
        x1, x2 = lin(y, "mlp.weights_in").chunk(2, dim=-1)
        m = lin(F.silu(x1) * x2, "mlp.weights_out")
    else:
        m = lin(F.gelu(lin(y, "mlp.fc1")), "mlp.fc2")
    return h + (m if vit else m * sd[pre + "layer_scale2.lambda1"])


def write_hf_cache(cache: Path, repo: str, files: dict[str, bytes], commit: str = "c0ffee" * 6 +
                   "abcd", repo_type: str = "model") -> Path:  # fmt: skip
    """`files` in a hub cache laid out as huggingface_hub writes it: content in `blobs/`,
    `snapshots/<commit>/<name>` symlinks to it, `refs/main` holding the commit."""
    import hashlib

    root = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))
    return root / "snapshots" / commit


class OfficialBackbone(nn.Module):
    """`code/models/backbones/backbone_builder.py` re-stated: the torchvision model's children
    but the last, in a Sequential named `extractor`; forward = the Sequential."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        import torchvision

        with torch.device("meta"):
            full = torchvision.models.get_model(arch, weights=None)
        self.extractor = nn.Sequential(*list(full.children())[:-1]).to_empty(device="cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)


def official_checkpoint(arch: str, out_features: int, seed: int = 0) -> tuple[dict, nn.Module]:
    """A random `MILNetImageOnly`-shaped state dict (backbone under
    `image_feature_extractor.extractor.*`, head under `attention_aggregator.*`,
    `classifier.*`, as `code/models/mil_net.py` names them) and the backbone in eval mode."""
    torch.manual_seed(seed)
    backbone = OfficialBackbone(arch)
    with torch.no_grad():
        for name, t in backbone.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name or
                        name.endswith("weight") and t.dim() == 1 else torch.randn_like(t) * 0.05)
    state = {f"image_feature_extractor.{k}": v for k, v in backbone.state_dict().items()}
    head = {"attention_aggregator.fc1.0.weight": (256, out_features),
            "attention_aggregator.fc1.0.bias": (256,),
            "attention_aggregator.attention.0.weight": (1, 256),
            "attention_aggregator.attention.0.bias": (1,),
            "attention_aggregator.attention.3.weight": (1, 1),
            "attention_aggregator.attention.3.bias": (1,),
            "classifier.0.weight": (64, 256), "classifier.0.bias": (64,),
            "classifier.2.weight": (2, 64), "classifier.2.bias": (2,)}  # fmt: skip
    state |= {k: torch.randn(s) * 0.01 for k, s in head.items()}
    return state, backbone.eval()

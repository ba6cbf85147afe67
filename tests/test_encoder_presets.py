"""Foundation-model presets: each builds (on the meta device) into exactly the published
checkpoint's layout, gives the published embedding width, pools as its card says, and
preprocesses as its model card's transform does.

`PUBLISHED` is written from the published checkpoints' layouts (research notes of issue 15:
timm 1.0.31 / transformers 4.57.6 models built with the reference code's arguments, and the
CTransPath layout of STAMP's MIT copy): the tensor count and
`sha256("\\n".join(f"{key}:{list(shape)}" for key, shape in sorted(state.items())))` over the
checkpoint's own key names, plus a few keys spelled out.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from _slide_helpers import pattern
from PIL import Image
from torchvision import transforms as T

from balnmp_cache.encoders import ENCODERS
from balnmp_cache.encoders.checkpoint import load_state
from balnmp_cache.encoders.layouts import ANY
from balnmp_cache.encoders.pooling import TokenPool
from balnmp_cache.encoders.preprocess import resize_and_crop

# name -> (tensors, fingerprint, embedding width, a few published keys and shapes)
PUBLISHED: dict[str, tuple[int, str, int, dict[str, tuple[int, ...]]]] = {
    "uni_v1": (342, "7ceb7d702a356205677f9a9b7cb8c135d0ca7929cebb6b3e5c69fbda4b779945", 1024,
               {"pos_embed": (1, 197, 1024), "blocks.0.ls1.gamma": (1024,)}),
    "uni_v2": (343, "e844ae63cc133c3856f97e08dbcc6fe7e9f286182216fae438c3ef264770486c", 1536,
               {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536),
                "blocks.0.mlp.fc2.weight": (1536, 4096)}),
    "virchow": (454, "cf9ee1b7111a9cdc7dbef96e8e5beb24ec33475ce0710cd2fd2c8e48de9f4e29", 2560,
                {"pos_embed": (1, 257, 1280), "blocks.0.mlp.fc1.weight": (6832, 1280)}),
    "virchow2": (455, "b626b443ea70acc9a1aa65f0d36d50a169336f18bdc995bd1cd10166ae790918", 2560,
                 {"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280)}),
    "hoptimus0": (567, "70aea0de120c5180131d10a2d3bc696b465bbcbf2bb1244a15d7ed6e97dddfab", 1536,
                  {"reg_token": (1, 4, 1536), "blocks.39.mlp.fc1.weight": (8192, 1536)}),
    "hoptimus1": (567, "70aea0de120c5180131d10a2d3bc696b465bbcbf2bb1244a15d7ed6e97dddfab", 1536,
                  {"pos_embed": (1, 256, 1536)}),
    # architecture arguments not published (see the preset's `unknown`)
    "h0-mini": (175, "06b974fd5cd5ec902f9445b12501798477a10de526e3140a23f186923bd71e68", 1536,
                {"reg_token": (1, 4, 768), "blocks.0.mlp.fc2.weight": (768, 2048)}),
    "gigapath": (566, "5cdd46a81a1b9db082b25803ea399ed19a763cff58405c7201748bc2f5311a97", 1536,
                 {"patch_embed.proj.weight": (1536, 3, 16, 16), "pos_embed": (1, 197, 1536)}),
    "phikon": (198, "d231defcb402aab636e1227c39b66e940de20f88a6fc01a85ce2b0a09cb97574", 768,
               {"embeddings.position_embeddings": (1, 197, 768),
                "encoder.layer.0.attention.attention.query.weight": (768, 768),
                "encoder.layer.11.intermediate.dense.weight": (3072, 768)}),
    # config.json not published: ViT-L/16 at 224 assumed
    "phikon_v2": (439, "4e1f80102fe10b90659f6307c6ceeb806884ad0430a8e21a8b39f152fd552b56", 1024,
                  {"embeddings.mask_token": (1, 1024), "embeddings.position_embeddings":
                   (1, 197, 1024), "encoder.layer.0.layer_scale1.lambda1": (1024,)}),
    "kaiko-vits8": (150, "39d42a9ed5acc4c449f871dc5d35714dc5341a2c119b4c04c1d52d98639e6c4a", 384,
                    {"pos_embed": (1, 785, 384)}),
    "kaiko-vits16": (150, "65e1dceeafe6687e010d00d84f64a0ea6b9be2af93973baf5d6d93dc26503068",
                     384, {"pos_embed": (1, 197, 384)}),
    "kaiko-vitb8": (150, "0772b27bfe635a5ebb08fed6191376c77f7aebb232c9bc7ea7f23f1805b3b3aa", 768,
                    {"pos_embed": (1, 785, 768)}),
    "kaiko-vitb16": (150, "33ff7ed2d178bfe2f39bc9b85da971907d336b05f26d5407855b10aaec271704",
                     768, {"pos_embed": (1, 197, 768)}),
    "kaiko-vitl14": (343, "88c87555ec3e1e0438d8c17747fcbfc2cd14af5e16600d1a4e5b97632168839c",
                     1024, {"pos_embed": (1, 1369, 1024), "reg_token": (1, 4, 1024)}),
    "lunit-vits8": (150, "39d42a9ed5acc4c449f871dc5d35714dc5341a2c119b4c04c1d52d98639e6c4a", 384,
                    {"patch_embed.proj.weight": (384, 3, 8, 8)}),
    # Hibou-B's config at ViT-L size assumed; native transformers key names
    "hibou_l": (440, "fa41bcf18ddacccb1937c7974f8621f908085cf599d2705fd2972d375b2281b7", 1024,
                {"embeddings.register_tokens": (1, 4, 1024),
                 "embeddings.position_embeddings": (1, 257, 1024),
                 "encoder.layer.0.mlp.weights_in.weight": (5472, 1024)}),
    # facebook/dinov2-giant's config assumed (518 px position grid)
    "midnight12k": (727, "b7ef74b23f8d4f3052453849c8f9f6fa0640a9ace9c3c7c5561df03fb7854d87", 3072,
                    {"embeddings.position_embeddings": (1, 1370, 1536),
                     "encoder.layer.0.mlp.weights_out.weight": (1536, 4096)}),
    "gpfm": (342, "89d7aa147b9ecf6d467f8ca0b32e863f00ff38d4a17fa3aa8cc6390d412b82b3", 1024,
             {"pos_embed": (1, 257, 1024), "patch_embed.proj.weight": (1024, 3, 14, 14)}),
    "ctranspath": (200, "075c46b86360557fddc26bb97528bf15d0bfab7f5fd89e83425edf3905590b41", 768,
                   {"patch_embed.proj.0.weight": (12, 3, 3, 3), "patch_embed.proj.6.bias": (96,),
                    "layers.0.downsample.reduction.weight": (192, 384),
                    "layers.0.blocks.1.attn_mask": (64, 49, 49)}),
}
PRESETS = sorted(n for n in ENCODERS.names() if ENCODERS.get(n).spec is not None)
ISSUE_NAMES = {"uni_v1", "uni_v2", "virchow", "virchow2", "hoptimus0", "hoptimus1", "h0_mini",
               "gigapath", "phikon", "phikon_v2", "kaiko-vits8", "kaiko-vits16", "kaiko-vitb8",
               "kaiko-vitb16", "kaiko-vitl14", "lunit-vits8", "hibou_l", "midnight12k", "gpfm",
               "ctranspath"}  # fmt: skip


def _fingerprint(shapes: dict[str, tuple[int, ...]]) -> str:
    text = "\n".join(f"{k}:{list(s)}" for k, s in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _meta(name: str) -> tuple[object, torch.nn.Module]:
    spec = ENCODERS.get(name).spec
    with torch.device("meta"):
        return spec, spec.architecture()


def _published_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The preset's expected checkpoint, free sizes set to those of `PUBLISHED`."""
    spec, model = _meta(name)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = spec.layout.expected(own).shapes
    listed = PUBLISHED[spec.name][3]
    fixed = {}
    for key, shape in want.items():
        if ANY in shape:
            assert key in listed, f"{key} has a free size: PUBLISHED must give it"
            assert all(w in (ANY, s) for w, s in zip(shape, listed[key])), key
            shape = listed[key]
        fixed[key] = shape
    return fixed


def test_every_preset_the_issue_lists_is_registered() -> None:
    assert ISSUE_NAMES <= set(PRESETS)
    assert {ENCODERS.get(n).spec.name for n in PRESETS} == set(PUBLISHED)


@pytest.mark.parametrize("name", PRESETS)
def test_architecture_is_the_published_checkpoints_layout(name: str) -> None:
    """Names and shapes the preset asks a checkpoint for equal the published checkpoint's,
    so the real file loads strictly; and the card states the published width."""
    tensors, fingerprint, dim, keys = PUBLISHED[ENCODERS.get(name).spec.name]
    shapes = _published_shapes(name)
    assert {k: shapes.get(k) for k in keys} == keys
    assert len(shapes) == tensors
    assert _fingerprint(shapes) == fingerprint
    assert ENCODERS.get(name).card.feature_dim == dim


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_layout_loads_strictly_and_gives_the_published_width(name: str) -> None:
    """A state dict of the published layout (meta tensors) is accepted strictly, and the
    pooled output of a 224 px input has the published width."""
    spec, model = _meta(name)
    state = {k: torch.empty(s, device="meta") for k, s in _published_shapes(name).items()}
    load_state(model, state, "published", layouts=(spec.layout,), assign=True)
    pooled = TokenPool(model, spec.pooling, getattr(model, "num_prefix_tokens", 0),
                       model.num_features)  # fmt: skip
    out = pooled(torch.empty(2, 3, spec.preprocess.size, spec.preprocess.size, device="meta"))
    assert tuple(out.shape) == (2, PUBLISHED[name][2])


def _small(name: str, **kwargs: object) -> tuple[object, torch.nn.Module]:
    """The preset at depth 1 (full widths), materialised with random weights."""
    spec = ENCODERS.get(name).spec
    spec = dataclasses.replace(spec, kwargs={**spec.kwargs, "depth": 1, **kwargs})
    torch.manual_seed(0)
    model = spec.architecture().eval()
    with torch.no_grad():  # LayerScale starts at 1e-5: make every path count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return spec, model


@pytest.mark.parametrize(("name", "registers"), [("virchow", 0), ("virchow2", 4), ("h0-mini", 4),
                                                 ("midnight12k", 0)])  # fmt: skip
def test_class_plus_mean_skips_the_register_tokens(name: str, registers: int) -> None:
    """Virchow's rule (model card): `cat(out[:, 0], out[:, 1 + registers:].mean(1))` of all
    the tokens timm returns with `global_pool=''`, ordered class, registers, patches."""
    spec, model = _small(name, global_pool="")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = model(x)  # global_pool='' and no head: every token
        got = TokenPool(model, spec.pooling, model.num_prefix_tokens, model.num_features)(x)
    assert model.num_prefix_tokens == 1 + registers
    want = torch.cat([tokens[:, 0], tokens[:, 1 + registers:].mean(1)], dim=-1)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["uni_v1", "uni_v2", "hoptimus0", "gigapath", "kaiko-vitl14"])
def test_class_token_pooling_is_timms_token_pool(name: str) -> None:
    spec, model = _small(name, global_pool="token")
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want = model(x)  # timm's own head: the class token after the final norm
        got = TokenPool(model, "cls", model.num_prefix_tokens, model.num_features)(x)
    assert torch.equal(got, want)


def test_ctranspath_pools_the_mean_of_its_last_tokens() -> None:
    spec = ENCODERS.get("ctranspath").spec
    torch.manual_seed(0)
    model = spec.architecture().eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        tokens = model.forward_features(x)  # (B, 7, 7, 768) after the final LayerNorm
        got = TokenPool(model, "mean", 0, model.num_features)(x)
    assert tuple(tokens.shape) == (2, 7, 7, 768)
    assert torch.allclose(got, tokens.mean(dim=(1, 2)), atol=1e-6)
    assert torch.allclose(got, model(x), atol=1e-6)  # timm's own average-pool head


BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPT = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
HALF = ((0.5,) * 3, (0.5,) * 3)
# The model cards' / reference code's transforms (resize side, interpolation, crop, stats).
CARDS = {
    "uni_v1": (224, BILINEAR, 224, IMAGENET), "uni_v2": (224, BILINEAR, 224, IMAGENET),
    "virchow": (224, BICUBIC, 224, IMAGENET), "virchow2": (224, BICUBIC, 224, IMAGENET),
    "hoptimus0": (224, BILINEAR, 224, HOPT), "hoptimus1": (224, BILINEAR, 224, HOPT),
    "h0-mini": (224, BICUBIC, 224, HOPT), "gigapath": (256, BICUBIC, 224, IMAGENET),
    "phikon": (224, BILINEAR, 224, IMAGENET), "phikon_v2": (224, BILINEAR, 224, IMAGENET),
    "kaiko-vits8": (224, BILINEAR, 224, HALF), "kaiko-vits16": (224, BILINEAR, 224, HALF),
    "kaiko-vitb8": (224, BILINEAR, 224, HALF), "kaiko-vitb16": (224, BILINEAR, 224, HALF),
    "kaiko-vitl14": (224, BILINEAR, 224, HALF),
    "lunit-vits8": (248, BICUBIC, 224, IMAGENET),
    "hibou_l": (224, BICUBIC, 224, ((0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816))),
    "midnight12k": (224, BILINEAR, 224, HALF), "gpfm": (224, BICUBIC, 224, IMAGENET),
    "ctranspath": (224, BILINEAR, 224, IMAGENET),
}  # fmt: skip


@pytest.mark.parametrize("side", [224, 256, 300])
@pytest.mark.parametrize("name", sorted(CARDS))
def test_preprocessing_is_the_model_cards_transform(name: str, side: int) -> None:
    """Our device-side resize/crop/normalise of a uint8 patch equals the card's PIL transform
    (`Resize` + `CenterCrop` + `ToTensor` + `Normalize`): on average within a tenth of a grey
    level, nowhere more than two (PIL rounds its filter weights to fixed point)."""
    resize, mode, crop, (mean, std) = CARDS[name]
    card = T.Compose([T.Resize(resize, interpolation=mode), T.CenterCrop(crop), T.ToTensor(),
                      T.Normalize(mean, std)])  # fmt: skip
    patch = pattern(side, side, seed=side)  # gradients, a sharp-edged block, fine noise
    want = card(Image.fromarray(patch))
    p = ENCODERS.get(name).card.preprocess
    x = resize_and_crop(torch.from_numpy(patch).permute(2, 0, 1)[None].float(), p)[0]
    got = (x / 255.0 - torch.tensor(p.mean).view(3, 1, 1)) / torch.tensor(p.std).view(3, 1, 1)
    assert got.shape == want.shape == (3, crop, crop)
    err = (got - want).abs() * torch.tensor(std).view(3, 1, 1) * 255  # in 8-bit levels
    assert err.mean() < 0.15 and err.max() <= 2.0 + 1e-3, (float(err.mean()), float(err.max()))

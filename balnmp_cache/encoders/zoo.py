"""The foundation-model presets, named as TRIDENT names them (`trident/patch_encoder_models/
load.py`), each defined from its model card or reference code (cited in `reference`).

Architecture arguments are those the reference passes to `timm.create_model`; for the
`transformers` models (Phikon, Phikon-v2, Hibou-L, Midnight) the equivalent timm ViT, read
through `hf_layouts`. Preprocessing: `PIL(size, resize, interpolation, mean, std)`, i.e.
`Resize(resize or size)` + `CenterCrop(size)` + `Normalize` on a PIL image, as the cards do. What the public sources
leave open is said in `unknown` (and in docs/extraction.md), never guessed silently.
"""

from __future__ import annotations

from functools import partial

from balnmp_cache.encoders.base import UNAVAILABLE
from balnmp_cache.encoders.foundation import Preset, register_preset
from balnmp_cache.encoders.hf_layouts import HFLayout
from balnmp_cache.encoders.hub import HubWeights
from balnmp_cache.encoders.preprocess import Preprocess

__all__ = ["PRESET_NAMES"]

HALF = (0.5, 0.5, 0.5)
PIL = partial(Preprocess, pil=True)  # the cards resize PIL images
HOPTIMUS = PIL(224, mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517))
SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
BIN, SAFE = "pytorch_model.bin", "model.safetensors"
HF_GATE = "Request access on the model's Hugging Face page and accept its licence first."
T = "TRIDENT load.py"


def _hub(repo: str, *files: str, gated: bool = False, others: tuple[str, ...] = ()) -> HubWeights:
    return HubWeights((repo, *others), files or (SAFE, BIN), gated=gated,
                      licence_step=HF_GATE if gated else "")


def _kaiko(name: str, arch: str, dim: int, img: int = 224, unknown: str = "",
           repos: tuple[str, ...] = ()) -> Preset:  # fmt: skip
    repos = repos or (f"1aurent/{arch}.kaiko_ai_towards_large_pathology_fms",)
    return Preset(
        name, arch, {"num_classes": 0, "img_size": img, "dynamic_img_size": True},
        PIL(224, mean=HALF, std=HALF), "cls", dim,
        _hub(repos[0], SAFE, others=repos[1:]),
        "Kaiko non-commercial", f"{T}:553-666; kaiko-ai/towards_large_pathology_fms "
        "hubconf.py, README.md:51-72", precision="fp32",
        unknown="authors' µm/px (0.5 as TRIDENT's --mag 20)" + unknown)


PRESETS = (
    Preset("uni_v1", "vit_large_patch16_224",
           {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
            "dynamic_img_size": True}, PIL(224), "cls", 1024,
           _hub("MahmoodLab/UNI", BIN, gated=True), "CC-BY-NC-ND-4.0",
           f"{T}:803-836; mahmoodlab/UNI get_encoder.py:108-118"),
    Preset("uni_v2", "vit_giant_patch14_224",
           {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
            "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0,
            "no_embed_class": True, **SWIGLU, "reg_tokens": 8, "dynamic_img_size": True},
           PIL(224), "cls", 1536, _hub("MahmoodLab/UNI2-h", BIN, gated=True),
           "CC-BY-NC-ND-4.0", f"{T}:856-897; mahmoodlab/UNI README.md:395-420",
           precision="bf16"),
    Preset("virchow", "vit_huge_patch14_224",
           {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
            "global_pool": "", "dynamic_img_size": True, **SWIGLU},
           PIL(224, interpolation="bicubic"), "cls+mean", 2560,
           _hub("paige-ai/Virchow", gated=True), "Apache-2.0 + Paige terms",
           f"{T}:996-1046 (class token + mean of the 256 patch tokens)",
           unknown="hub config.json is gated: mlp_ratio, global_pool as TRIDENT passes them"),
    Preset("virchow2", "vit_huge_patch14_224",
           {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
            "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True, **SWIGLU},
           PIL(224, interpolation="bicubic"), "cls+mean", 2560,
           _hub("paige-ai/Virchow2", gated=True), "CC-BY-NC-ND-4.0",
           f"{T}:1071-1122; model card: output[:, 5:] skips the 4 registers",
           unknown="trained on 5x-40x; 0.5 µm/px is TRIDENT's --mag 20"),
    Preset("hoptimus0", "vit_giant_patch14_reg4_dinov2",
           {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5,
            "dynamic_img_size": True}, HOPTIMUS, "cls", 1536,
           _hub("bioptimus/H-optimus-0", gated=True), "Apache-2.0",
           f"{T}:1145-1180; bioptimus/releases h-optimus/v0 README.md:25-71",
           unknown="gating terms; the card expects 224 px tiles at 0.5 µm/px"),
    Preset("hoptimus1", "vit_giant_patch14_reg4_dinov2",
           {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5,
            "dynamic_img_size": True}, HOPTIMUS, "cls", 1536,
           _hub("bioptimus/H-optimus-1", gated=True), "UNKNOWN (access for academic research)",
           f"{T}:1192-1241", unknown="licence text"),
    Preset("h0-mini", "vit_base_patch14_reg4_dinov2",
           {"num_classes": 0, "mlp_ratio": 5.33334, "reg_tokens": 4, "init_values": 1e-5,
            "img_size": 224, "global_pool": "", "dynamic_img_size": True, **SWIGLU},
           PIL(224, interpolation="bicubic", mean=HOPTIMUS.mean, std=HOPTIMUS.std),
           "cls+mean", 1536, _hub("bioptimus/H0-mini", gated=True), "UNKNOWN",
           f"{T}:1403-1454; Bioptimus SDK ModelSpec (cls+patch_mean, 1536)",
           unknown="hub config.json not public: architecture arguments from a third-party "
                   "explicit form (mlp_ratio 5.33334); preprocessing as the SDK's 224 px at "
                   "0.5 µm/px (TRIDENT uses the hub's pretrained_cfg); licence",
           aliases=("h0_mini",)),
    Preset("gigapath", "vit_giant_patch14_dinov2",
           {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
            "num_heads": 24, "mlp_ratio": 5.33334, "num_classes": 0, "dynamic_img_size": True},
           PIL(224, resize=256, interpolation="bicubic"), "cls", 1536,
           _hub("prov-gigapath/prov-gigapath", BIN, gated=True),
           "Apache-2.0, research use only",
           f"{T}:924-970; prov-gigapath README.md:83-92"),
    Preset("phikon", "vit_base_patch16_224",
           {"img_size": 224, "num_classes": 0, "dynamic_img_size": True}, PIL(224),
           "cls", 768, _hub("owkin/phikon", BIN, SAFE), "UNKNOWN",
           f"{T}:470-493 (ViTModel, add_pooling_layer=False; config layer_norm_eps 1e-6)",
           precision="fp32", layout=HFLayout("vit"),
           unknown="licence; pooler.* keys (dropped if present)"),
    Preset("phikon_v2", "vit_large_patch16_224",
           {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
           PIL(224), "cls", 1024, _hub("owkin/phikon-v2", SAFE), "UNKNOWN",
           f"{T}:1263-1291 (Dinov2Model)", precision="fp32", layout=HFLayout("dinov2"),
           unknown="config.json not seen: ViT-L/16 assumed (the position grid is read from "
                   "the checkpoint); licence"),
    _kaiko("kaiko-vits8", "vit_small_patch8_224", 384),
    _kaiko("kaiko-vits16", "vit_small_patch16_224", 384),
    _kaiko("kaiko-vitb8", "vit_base_patch8_224", 768),
    _kaiko("kaiko-vitb16", "vit_base_patch16_224", 768),
    _kaiko("kaiko-vitl14", "vit_large_patch14_reg4_dinov2", 1024, img=518,
           unknown="; the 518 px (37x37) position grid is inferred from the file size",
           repos=("1aurent/vit_large_patch14_reg4_224.kaiko_ai_towards_large_pathology_fms",
                  "1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms")),
    Preset("lunit-vits8", "vit_small_patch8_224",
           {"num_classes": 0, "img_size": 224, "dynamic_img_size": True},
           PIL(224, resize=248, interpolation="bicubic"), "cls", 384,
           _hub("1aurent/vit_small_patch8_224.lunit_dino", SAFE),
           "Lunit non-commercial", f"{T}:758-779 (the hub port's data config)",
           precision="fp32",
           unknown="the port's config.json (resize 248 bicubic + ImageNet statistics inferred); "
                   "Lunit's own statistics are mean (0.703, 0.536, 0.661), std (0.217, "
                   "0.261, 0.207)"),
    Preset("hibou_l", "vit_large_patch14_reg4_dinov2",
           {"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5472 / 1024,
            "dynamic_img_size": True, **SWIGLU},
           PIL(224, interpolation="bicubic", mean=(0.7068, 0.5755, 0.722),
                      std=(0.195, 0.2316, 0.1816)), "cls", 1024,
           _hub("histai/hibou-L", SAFE, gated=True), "UNKNOWN",
           f"{T}:515-534 (pooler_output: the normed class token)", precision="fp32",
           layout=HFLayout("dinov2", swiglu=True, registers=True),
           unknown="config.json (Hibou-B's, at ViT-L size, assumed) and whether its remote "
                   "code names keys as transformers' Dinov2WithRegistersModel; licence"),
    Preset("midnight12k", "vit_giant_patch14_dinov2",
           {"img_size": 224, "num_classes": 0, "dynamic_img_size": True},
           PIL(224, mean=HALF, std=HALF), "cls+mean", 3072,
           _hub("kaiko-ai/midnight", SAFE), "MIT",
           "kaiko-ai/Midnight README.md:86-119 (class token + mean of the patch tokens; "
           f"TRIDENT's default is the class token alone: --pooling cls); {T}:1353-1387",
           layout=HFLayout("dinov2", swiglu=True),
           unknown="config.json (facebook/dinov2-giant's assumed; the position grid is read "
                   "from the checkpoint); authors' µm/px"),
    Preset("gpfm", "vit_large_patch14_dinov2",
           {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
           PIL(224, interpolation="bicubic"), "cls", 1024, _hub("majiabo/GPFM", "GPFM.pth"),
           "MIT", f"{T}:1544-1577 (the Hugging Face GPFM.pth, a bare timm state dict)",
           unknown="authors' own transform; the GitHub release's GPFM.pth (a DINOv2 training "
                   "checkpoint) is not read: use the Hugging Face file"),
)
PRESET_NAMES = tuple(register_preset(p).name for p in PRESETS)

_NOT_ON_PYPI = ("needs its authors' package, which is not on the package index (installed from "
                "GitHub{}), so no balnmp extra can provide it")
UNAVAILABLE.update({
    "conch_v1": _NOT_ON_PYPI.format(": Mahmoodlab/CONCH; TRIDENT load.py:355-390"),
    "musk": _NOT_ON_PYPI.format(" with fairscale: lilab-stanford/MUSK; the PyPI package named "
                                "musk is an unrelated project; TRIDENT load.py:311-344"),
})

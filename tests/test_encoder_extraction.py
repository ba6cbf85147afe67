"""Encoders end to end: a released BALNMP checkpoint's backbone and a small preset-shaped ViT
through `extract_features` on generated slides, against independent re-statements of the
reference forwards; the encoder table on the command line and in the docs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from _encoder_helpers import official_checkpoint, temp_preset, write_hf_cache
from _extract_helpers import tiny_cohort
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T

from balnmp_cache import FeatureStore, extract_features, open_slide
from balnmp_cache.cli import main
from balnmp_cache.encoders import (
    ENCODERS,
    EncoderEntry,
    EncoderError,
    Preprocess,
    build_encoder,
)
from balnmp_cache.encoders.hub import HubWeights
from balnmp_cache.encoders.listing import format_encoder_table

IMAGENET = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    cohort = tiny_cohort(tmp_path_factory.mktemp("enc"), n=1)
    return sorted(cohort.slides_dir.iterdir())[0]


def _patches(path, bag, size: int) -> np.ndarray:
    """The stored patches re-read at the store's level (read size = patch size here)."""
    attrs = bag.attrs
    assert attrs["read_size"] == attrs["patch_size"] == size
    with open_slide(path) as s:
        return np.stack([s.read_region(tuple(int(v) for v in xy), int(attrs["level"]),
                                       (size, size)) for xy in bag.coords])  # fmt: skip


def test_released_balnmp_checkpoint_round_trips_through_extraction(slide, tmp_path) -> None:
    """`--encoder vgg16_bn --flatten --weights <official MILNet state dict>` stores, per
    patch, the official `image_feature_extractor(x).flatten()` in eval mode (BatchNorm with
    its running statistics) of the ImageNet-normalised 224 px patch."""
    state, official = official_checkpoint("vgg16_bn", 512 * 7 * 7)
    torch.save(state, tmp_path / "best.pth")
    extract_features([slide], tmp_path / "feats", encoder="vgg16_bn",
                     weights=tmp_path / "best.pth", flatten=True, mpp=0.5, patch_size=224,
                     min_tissue=0.0, device="cpu", dtype="float32", progress=False)  # fmt: skip
    bag = FeatureStore(tmp_path / "feats")[slide.stem]
    assert bag.attrs["weights"].startswith("sha256:") and bag.features.shape[1] == 25088
    x = torch.stack([IMAGENET(T.functional.to_tensor(p)) for p in _patches(slide, bag, 224)])
    with torch.inference_mode():
        want = official(x).flatten(1).numpy()
    got = np.asarray(bag.features)
    assert len(got) >= 2
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(("arch", "flatten", "dim"), [
    ("resnet18", False, 512), ("densenet121", True, 1024 * 49), ("alexnet", True, 256 * 36),
    ("vgg11", True, 25088),
])  # fmt: skip
def test_every_official_backbone_family_loads_as_backbone_builder_cuts_it(
        arch: str, flatten: bool, dim: int, tmp_path) -> None:  # fmt: skip
    state, official = official_checkpoint(arch, dim)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ckpt.pth")  # DDP
    enc = build_encoder(arch, tmp_path / "ckpt.pth", flatten=flatten)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want, got = official(x).flatten(1), enc.module(x)
    assert enc.feature_dim == dim == want.shape[1]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_official_checkpoint_of_another_backbone_is_refused(tmp_path) -> None:
    state, _ = official_checkpoint("resnet18", 512)
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(EncoderError, match="released BALNMP model layout.*missing keys"):
        build_encoder("resnet34", tmp_path / "r18.pth")


@pytest.fixture
def tiny_preset():
    """Virchow2-shaped (4 registers, SwiGLU, class + mean) at 64 px: resize 80, crop 64."""
    with temp_preset("virchow2", "test-e2e-virchow2", feature_dim=128,
                     kwargs={"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16,
                             "img_size": 64, "mlp_ratio": 4.0},
                     preprocess=Preprocess(64, resize=80, interpolation="bicubic", pil=True),
                     hub=HubWeights(("test-org/e2e",), ("model.safetensors",))) as preset:
        yield preset


def test_preset_shaped_vit_extracts_the_card_embedding(tiny_preset, slide, tmp_path,
                                                       monkeypatch) -> None:  # fmt: skip
    """The same weights as .safetensors, as .bin and from the HF cache give identical stores;
    each row is the card's transform (PIL resize 80 bicubic, crop 64) -> class token + mean of
    the patch tokens (registers skipped); the weights id is stored."""
    torch.manual_seed(0)
    model = tiny_preset.architecture().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.bin")
    commit = "feedfacefeedfacefeedfacefeedfacefeedface"
    write_hf_cache(tmp_path / "hub", "test-org/e2e",
                   {"model.safetensors": (tmp_path / "w.safetensors").read_bytes()}, commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bags = {}
    for tag, weights in (("safe", tmp_path / "w.safetensors"), ("bin", tmp_path / "w.bin"),
                         ("hf", "hf")):  # fmt: skip
        extract_features([slide], tmp_path / tag, encoder=tiny_preset.name, weights=weights,
                         mpp=1.0, patch_size=96, min_tissue=0.0, device="cpu",
                         dtype="float32", progress=False)  # fmt: skip
        bags[tag] = FeatureStore(tmp_path / tag)[slide.stem]
    assert bags["hf"].attrs["weights"] == f"hf:test-org/e2e@{commit}/model.safetensors"
    assert bags["safe"].attrs["encoder_input_size"] == 64
    a = np.asarray(bags["safe"].features)
    assert a.shape[1] == 128 and len(a) >= 2
    for tag in ("bin", "hf"):
        np.testing.assert_array_equal(np.asarray(bags[tag].features), a)
    card = T.Compose([T.Resize(80, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64),
                      T.ToTensor(), IMAGENET])  # fmt: skip
    x = torch.stack([card(Image.fromarray(p)) for p in _patches(slide, bags["safe"], 96)])
    with torch.inference_mode():
        tokens = model.forward_features(x)
    want = torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1).numpy()
    np.testing.assert_allclose(a, want, atol=0.02 * np.abs(want).max())


def test_list_encoders_prints_every_encoder() -> None:
    result = CliRunner().invoke(main, ["--list-encoders"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["name", "dim", "input"]
    names = {line.split()[0] for line in lines[1:-1] if "not available" not in line}
    assert names == set(ENCODERS.names())
    assert any(line.startswith("musk: not available") for line in lines)
    virchow2 = next(line for line in lines if line.startswith("virchow2 "))
    for needle in ("2,560", "resize 224 bicubic", "0.5", "class token + mean", "fp16", "gated"):
        assert needle in virchow2, needle
    ENCODERS.register("test-no-card", EncoderEntry("test-no-card", build_encoder))  # a plugin
    try:
        assert re.search(r"^test-no-card +\? +\(no card\)", format_encoder_table(), re.M)
    finally:
        ENCODERS.unregister("test-no-card")


def test_authors_packages_not_on_the_index_are_named_when_asked_for() -> None:
    with pytest.raises(EncoderError, match="conch_v1.*not available here.*not on the package"):
        build_encoder("conch_v1", "hf")


def test_docs_encoder_table_is_the_registry() -> None:
    """docs/extraction.md carries `format_encoder_table(markdown=True)` verbatim."""
    from _docs_helpers import ROOT

    text = (ROOT / "docs" / "extraction.md").read_text(encoding="utf-8")
    assert format_encoder_table(markdown=True) in text, (
        "regenerate the table in docs/extraction.md: python -c 'from balnmp_cache.encoders "
        "import format_encoder_table as f; print(f(markdown=True))'")

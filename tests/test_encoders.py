"""Encoder registry: output dims of every CNN, seeded init, checkpoints, weight errors.

The foundation-model presets (built on the meta device) are in test_encoder_presets.py."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch

from balnmp_cache.encoders import ENCODERS, EncoderError, build_encoder, list_encoders

EXPECTED_DIMS = {
    "vgg16_bn": 512,
    "vgg16": 512,
    "alexnet": 256,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet50_trunc": 1024,
    "densenet121": 1024,
    "inception_v3": 2048,
}
# The CNN family (materialised here); presets carry their definition in `spec`.
CNNS = [n for n in list_encoders() if ENCODERS.get(n).spec is None]


# Smallest valid input side of the built-ins (their features are pooled, so any side gives the
# same dimension); any other encoder runs at its own `input_size`.
SMALL_SIDE = {"inception_v3": 75, "alexnet": 64}


def test_registry_lists_the_paper_backbones() -> None:
    assert set(EXPECTED_DIMS) <= set(list_encoders())


@pytest.mark.parametrize("name", CNNS)
def test_output_dim_of_every_encoder(name: str) -> None:
    """Every registered CNN builds offline, frozen, and outputs the dimension its card
    declares (the published one for the paper's backbones)."""
    enc = build_encoder(name, "none")
    card = ENCODERS.get(name).card
    assert card is not None and enc.feature_dim == card.feature_dim
    assert enc.feature_dim == EXPECTED_DIMS.get(name, enc.feature_dim)
    assert enc.weights_id == "none:seed=0"
    assert len(enc.mean) == len(enc.std) == 3
    assert not enc.module.training
    assert not any(p.requires_grad for p in enc.module.parameters())
    side = SMALL_SIDE.get(name, 32)
    with torch.inference_mode():
        out = enc.module(torch.rand(1, 3, side, side))
    assert tuple(out.shape) == (1, enc.feature_dim)


def test_vgg_flatten_gives_the_papers_25088_map() -> None:
    enc = build_encoder("vgg16_bn", "none", flatten=True)
    assert enc.feature_dim == 25088
    with torch.inference_mode():
        out = enc.module(torch.rand(1, 3, 224, 224))
    assert out.reshape(1, -1).shape == (1, 25088)


@pytest.mark.parametrize("name", CNNS)
def test_flatten_applies_where_the_entry_says(name: str) -> None:
    entry = ENCODERS.get(name)
    if entry.flattenable:  # the whole map: more than the pooled channels, as the card says
        pooled = build_encoder(name, "none").feature_dim
        flat = build_encoder(name, "none", flatten=True).feature_dim
        assert entry.card is not None and flat == entry.card.flat_dim > pooled
    else:
        with pytest.raises(EncoderError, match="flatten"):
            build_encoder(name, "none", flatten=True)


def test_random_init_is_seeded_and_deterministic() -> None:
    a, b = build_encoder("resnet18", "none", seed=3), build_encoder("resnet18", "none", seed=3)
    c = build_encoder("resnet18", "none", seed=4)
    wa, wb, wc = (e.module.conv1.weight for e in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert c.weights_id == "none:seed=4"


def test_unknown_encoder_lists_choices() -> None:
    with pytest.raises(EncoderError, match="resnet50_trunc"):
        build_encoder("resnet5000", "none")


def test_imagenet_unavailable_offline_says_so(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    with pytest.raises(EncoderError, match="cannot be downloaded") as err:
        build_encoder("resnet18", "imagenet")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "--weights none" in msg


def test_imagenet_weights_id_names_the_enum(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(
        "torchvision.models._api.load_state_dict_from_url", lambda *a, **k: state
    )
    enc = build_encoder("resnet18", "imagenet")
    assert enc.weights_id == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(enc.module.conv1.weight, state["conv1.weight"])


def _full_resnet18_state(seed: int = 7) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18().state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp"])
def test_checkpoint_loads_in_any_common_wrapping(tmp_path: Path, wrap: str) -> None:
    state = _full_resnet18_state()  # includes fc.*, which the encoder drops
    obj: object = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": torch.tensor(3)},
        "model": {"model": state},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    enc = build_encoder("resnet18", path)
    assert enc.weights_id.startswith("sha256:") and len(enc.weights_id) == 7 + 64
    assert torch.equal(enc.module.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_checkpoint_with_wrong_keys_fails_listing_them(tmp_path: Path) -> None:
    state = _full_resnet18_state()
    state["extra.weight"] = torch.zeros(3)
    del state["layer4.1.bn2.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(EncoderError) as err:
        build_encoder("resnet18", path)
    msg = str(err.value)
    assert "missing keys: layer4.1.bn2.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert str(path) in msg


def test_checkpoint_of_another_architecture_fails_on_shapes(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(EncoderError, match="does not match"):
        build_encoder("resnet18", path)


def test_checkpoint_needing_arbitrary_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": _Opaque()}, path)
    with pytest.raises(EncoderError, match="weights_only"):
        build_encoder("resnet18", path)


class _Opaque:
    """Not a tensor: unpickling it would need to import test code."""


def test_missing_checkpoint_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="neither 'imagenet', 'none', 'hf'"):
        build_encoder("resnet18", tmp_path / "nope.pt")


def test_cnns_have_no_hugging_face_weights() -> None:
    with pytest.raises(EncoderError, match="no Hugging Face weights"):
        build_encoder("resnet18", "hf")


def test_timm_models() -> None:
    enc = build_encoder("timm:resnet18", "none")
    with torch.inference_mode():
        out = enc.module(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, enc.feature_dim)

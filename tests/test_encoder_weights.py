"""Foundation-model weights: checkpoint formats, strict checks in the file's own names,
transformers checkpoints read into timm (against a re-statement of transformers' forward),
the Hugging Face cache offline, and the options around them (--pooling, precision, default
weights). Small preset-shaped models only: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _encoder_helpers import hf_forward, hf_state, temp_preset, write_hf_cache
from safetensors.torch import save_file

from balnmp_cache.encoders import EncoderError, build_encoder
from balnmp_cache.encoders.hub import HubWeights
from balnmp_cache.extract.options import ExtractOptions
from balnmp_cache.extract.pipeline import default_precision

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16, "img_size": 64,
        "mlp_ratio": 4.0}


@pytest.fixture
def tiny_vit():
    """A Virchow2-shaped ViT (4 registers, SwiGLU, LayerScale, class + mean pooling) at 64 px."""
    from balnmp_cache.encoders import Preprocess

    with temp_preset("virchow2", "test-tiny-virchow2", kwargs=TINY, feature_dim=128,
                     preprocess=Preprocess(64, resize=80, interpolation="bicubic", pil=True),
                     hub=HubWeights(("test-org/tiny-virchow2",), ("model.safetensors",),
                                    gated=True, licence_step="Accept the licence first.")
                     ) as preset:  # fmt: skip
        yield preset


def _state(preset, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = preset.architecture()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _features(name: str, weights: object, x: torch.Tensor, **kw: object) -> torch.Tensor:
    enc = build_encoder(name, weights, **kw)  # type: ignore[arg-type]
    with torch.inference_mode():
        return enc.module(x)


def test_safetensors_and_bin_checkpoints_give_identical_features(tiny_vit, tmp_path) -> None:
    state = _state(tiny_vit)
    save_file(state, tmp_path / "model.safetensors")
    torch.save(state, tmp_path / "pytorch_model.bin")
    x = torch.randn(3, 3, 64, 64)
    a = _features(tiny_vit.name, tmp_path / "model.safetensors", x)
    b = _features(tiny_vit.name, tmp_path / "pytorch_model.bin", x)
    assert a.shape == (3, 128) and torch.equal(a, b)
    enc = build_encoder(tiny_vit.name, tmp_path / "model.safetensors")
    assert enc.weights_id.startswith("sha256:") and enc.module.backbone.reg_token.dtype == \
        torch.float32  # fmt: skip
    half = {k: v.half() for k, v in state.items()}  # fp16 files load as float32 modules
    save_file(half, tmp_path / "half.safetensors")
    assert _features(tiny_vit.name, tmp_path / "half.safetensors", x).dtype == torch.float32


def test_wrong_checkpoint_is_refused_naming_the_keys(tiny_vit, tmp_path) -> None:
    state = _state(tiny_vit)
    del state["blocks.1.ls2.gamma"]
    state["blocks.1.extra.weight"] = torch.zeros(2)
    state["pos_embed"] = torch.zeros(1, 17, 64)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(EncoderError) as err:
        build_encoder(tiny_vit.name, tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "missing keys: blocks.1.ls2.gamma" in msg
    assert "unexpected keys: blocks.1.extra.weight" in msg
    assert "pos_embed: checkpoint (1, 17, 64) vs model (1, 21, 64)" in msg  # cls, 4 reg, 16
    assert str(tmp_path / "bad.safetensors") in msg


def test_a_damaged_safetensors_file_is_a_clear_error(tiny_vit, tmp_path) -> None:
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(EncoderError, match="cannot read safetensors checkpoint"):
        build_encoder(tiny_vit.name, tmp_path / "cut.safetensors")


@pytest.mark.parametrize("case", ["phikon", "phikon_v2", "hibou_l", "midnight12k"])
def test_transformers_checkpoints_read_into_timm_match_transformers(case: str, tmp_path) -> None:
    """A checkpoint in transformers' names (written here), read by the preset at depth 1,
    gives transformers' `last_hidden_state` (re-stated in `hf_forward`); Hibou's and
    Midnight's are saved with a 518 px (37x37) position grid and resampled as transformers
    does for a 224 px input."""
    width, patch, heads, kw = {
        "phikon": (768, 16, 12, {"vit": True}),
        "phikon_v2": (1024, 16, 16, {}),
        "hibou_l": (1024, 14, 16, {"swiglu_hidden": 2736, "registers": 4}),
        "midnight12k": (1536, 14, 24, {"swiglu_hidden": 4096}),
    }[case]
    grid = 224 // patch if case.startswith("phikon") else 37
    state = hf_state(width, 1, patch, grid, **kw)  # type: ignore[arg-type]
    if case == "phikon":  # ViTModel files may carry the unused pooler
        state |= {"pooler.dense.weight": torch.zeros(768, 768), "pooler.dense.bias": torch.zeros(768)}
    save_file(state, tmp_path / "model.safetensors")
    x = torch.randn(2, 3, 224, 224)
    with temp_preset(case, f"test-{case}-d1", kwargs={"depth": 1}):
        enc = build_encoder(f"test-{case}-d1", tmp_path / "model.safetensors")
        with torch.inference_mode():
            got = enc.module.backbone.forward_features(x)
            pooled = enc.module(x)
    want = hf_forward(state, x, heads=heads, patch=patch, vit=case == "phikon")
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-4, rtol=1e-4), float((got - want).abs().max())
    if case == "midnight12k":  # the authors' embedding: class token + mean of patch tokens
        assert torch.allclose(pooled, torch.cat([want[:, 0], want[:, 1:].mean(1)], -1), atol=2e-4)
    else:  # CLS (pooler_output / last_hidden_state[:, 0])
        assert torch.allclose(pooled, want[:, 0], atol=2e-4)


def test_transformers_checkpoint_with_a_missing_layer_names_it(tmp_path) -> None:
    state = hf_state(768, 1, 16, 14, vit=True)
    del state["encoder.layer.0.attention.attention.key.bias"]
    save_file(state, tmp_path / "model.safetensors")
    with temp_preset("phikon", "test-phikon-bad", kwargs={"depth": 1}), \
            pytest.raises(EncoderError) as err:  # fmt: skip
        build_encoder("test-phikon-bad", tmp_path / "model.safetensors")
    assert "(read as the transformers ViT layout)" in str(err.value)
    assert "missing keys: encoder.layer.0.attention.attention.key.bias" in str(err.value)


def test_hf_weights_come_from_the_local_cache_offline(tiny_vit, tmp_path, monkeypatch) -> None:
    state = _state(tiny_vit)
    save_file(state, tmp_path / "w.safetensors")
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_hf_cache(tmp_path / "hub", "test-org/tiny-virchow2",
                   {"model.safetensors": (tmp_path / "w.safetensors").read_bytes()}, commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_encoder(tiny_vit.name, "hf")
    assert enc.weights_id == f"hf:test-org/tiny-virchow2@{commit}/model.safetensors"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(enc.module(x), _features(tiny_vit.name, tmp_path / "w.safetensors", x))


def test_missing_hf_weights_say_how_to_fetch_them(tiny_vit, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderError) as err:
        build_encoder(tiny_vit.name, "hf")
    msg = str(err.value)
    for needle in ("test-org/tiny-virchow2", "HF_HUB_OFFLINE is set", "(gated)",
                   "Accept the licence first.", "hf auth login",
                   "hf download test-org/tiny-virchow2 model.safetensors", "login node",
                   "--weights PATH", str(tmp_path / "empty")):  # fmt: skip
        assert needle in msg, needle
    with pytest.raises(EncoderError, match="--repo-type dataset"):
        build_encoder("ctranspath", "hf")  # its weights sit in a dataset repository


def test_foundation_models_default_to_hf_and_cnns_to_imagenet() -> None:
    assert ExtractOptions(encoder="uni_v1").weights_name == "hf"
    assert ExtractOptions(encoder="resnet50").weights_name == "imagenet"
    assert ExtractOptions(encoder="timm:resnet18").weights_name == "imagenet"
    with pytest.raises(EncoderError, match="no ImageNet weights"):
        build_encoder("uni_v1", "imagenet")


def test_another_mpp_than_the_trained_one_is_warned_about() -> None:
    with pytest.warns(UserWarning, match=r"'ctranspath' was trained at 1 µm/px; extracting at "
                                         r"0.5 µm/px \(pass --mpp 1 to match\)"):
        ExtractOptions(encoder="ctranspath")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ExtractOptions(encoder="ctranspath", mpp=1.0)
        ExtractOptions(encoder="uni_v1")
        ExtractOptions(encoder="resnet50", mpp=2.0)  # CNNs: any µm/px


def test_pooling_option_switches_the_embedding(tiny_vit, tmp_path) -> None:
    save_file(_state(tiny_vit), tmp_path / "w.safetensors")
    x = torch.randn(2, 3, 64, 64)
    both = _features(tiny_vit.name, tmp_path / "w.safetensors", x)
    enc = build_encoder(tiny_vit.name, tmp_path / "w.safetensors", pooling="cls")
    assert enc.feature_dim == 64
    with torch.inference_mode():
        assert torch.equal(enc.module(x), both[:, :64])
    with pytest.raises(EncoderError, match="--pooling applies to transformer encoders"):
        build_encoder("resnet18", "none", pooling="cls")
    with pytest.raises(EncoderError, match="offers mean"):
        build_encoder("ctranspath", "none", pooling="cls")


def test_fixed_input_encoders_refuse_another_size() -> None:
    with pytest.raises(EncoderError, match="only accepts 224 px"):
        build_encoder("ctranspath", "none", input_size=256)
    with pytest.raises(EncoderError, match="only accepts 224 px"):
        build_encoder("densenet121", "none", flatten=True, input_size=256)
    enc = build_encoder("ctranspath", "none", input_size=224)
    assert enc.feature_dim == 768 and enc.weights_id == "none:seed=0"


def test_recommended_precision_is_the_cuda_default(tiny_vit) -> None:
    enc = build_encoder(tiny_vit.name, "none")
    assert enc.precision == "fp16"  # Virchow2's card
    assert default_precision(torch.device("cuda"), enc) == "fp16"
    assert default_precision(torch.device("cpu"), enc) == "fp32"
    assert default_precision(torch.device("cuda"), build_encoder("resnet18", "none")) == "bf16"


def test_input_size_override_resizes_without_a_crop(tiny_vit) -> None:
    enc = build_encoder(tiny_vit.name, "none", input_size=96)
    assert (enc.input_size, enc.resize, enc.preprocess.describe()) == (96, None,
                                                                        "resize 96 bicubic")
    with torch.inference_mode():  # dynamic_img_size: the position grid is resampled
        assert enc.module(torch.randn(1, 3, 96, 96)).shape == (1, 128)


def test_path_to_a_missing_file_is_refused_before_building(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="neither 'imagenet', 'none', 'hf'"):
        build_encoder("uni_v1", tmp_path / "nope.safetensors")


def _hub_error(kind: str, message: str) -> Exception:
    """A huggingface_hub error without an HTTP response (none is made offline)."""
    from huggingface_hub import errors

    cls = getattr(errors, kind)
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


def test_online_fetch_tries_each_file_and_explains_refusals(tiny_vit, tmp_path,
                                                            monkeypatch) -> None:  # fmt: skip
    """Nothing cached and HF_HUB_OFFLINE unset: the Hub is asked for each candidate file in
    turn (a missing file is not an error while another remains); an unreachable Hub or a
    gated repository is a message saying so (the Hub itself is replaced here)."""
    import huggingface_hub

    torch.save(_state(tiny_vit), tmp_path / "w.bin")
    snapshot = write_hf_cache(tmp_path / "hub", "test-org/tiny-virchow2", {
        "pytorch_model.bin": (tmp_path / "w.bin").read_bytes()})  # fmt: skip
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked: list[str] = []

    def hub(outcomes: dict[str, object]):
        def download(repo: str, name: str, **kw: object) -> str:
            asked.append(name)
            outcome = outcomes[name]
            if isinstance(outcome, Exception):
                raise outcome
            return str(outcome)
        return download

    with temp_preset(tiny_vit.name, "test-two-files", hub=HubWeights(
            ("test-org/tiny-virchow2",), ("model.safetensors", "pytorch_model.bin"),
            gated=True)):  # fmt: skip
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub({
            "model.safetensors": _hub_error("RemoteEntryNotFoundError", "404"),
            "pytorch_model.bin": snapshot / "pytorch_model.bin"}))
        enc = build_encoder("test-two-files", "hf")
        assert asked == ["model.safetensors", "pytorch_model.bin"]
        assert enc.weights_id.startswith("hf:test-org/tiny-virchow2@") and \
            enc.weights_id.endswith("/pytorch_model.bin")  # fmt: skip
        for kind, needle in (("LocalEntryNotFoundError", "the Hub cannot be reached"),
                             ("GatedRepoError", "the Hub refused access")):  # fmt: skip
            monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub(
                dict.fromkeys(("model.safetensors", "pytorch_model.bin"),
                              _hub_error(kind, "no"))))  # fmt: skip
            with pytest.raises(EncoderError, match=needle):
                build_encoder("test-two-files", "hf")

"""The overlapped read -> encode -> write loop, on in-memory batches (no slides needed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T

from balnmp_cache.encoders import build_encoder
from balnmp_cache.encoders.preprocess import Preprocess, resize_and_crop
from balnmp_cache.extract.pipeline import EncoderRunner, PipelineError, encode_patches


class ListSink:
    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.features: list[np.ndarray] = []
        self.coords: list[np.ndarray] = []
        self.delay, self.fail_at = delay, fail_at

    def append(self, features: np.ndarray, coords: np.ndarray) -> None:
        if self.fail_at is not None and len(self.features) == self.fail_at:
            raise OSError("disk full")
        time.sleep(self.delay)
        self.features.append(features.copy())
        self.coords.append(coords.copy())


@pytest.fixture(scope="module")
def runner() -> EncoderRunner:
    return EncoderRunner(
        build_encoder("resnet18", "none", input_size=32), "cpu", out_dtype=torch.float32
    )


def _batches(images: np.ndarray, bs: int) -> Iterator[np.ndarray]:
    for i in range(0, len(images), bs):
        yield images[i : i + bs]


def _reference(runner: EncoderRunner, images: np.ndarray) -> np.ndarray:
    """torchvision weights' own transform, one uint8 patch at a time (tensor input)."""
    enc = runner.encoder
    card = T.Compose([T.Resize((enc.input_size,) * 2, antialias=True),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(enc.mean, enc.std)])
    x = torch.stack([card(torch.from_numpy(im).permute(2, 0, 1)) for im in images])
    with torch.inference_mode():
        return enc.module(x).numpy()


@pytest.mark.parametrize("side", [32, 48])
def test_features_match_a_plain_forward_in_order(runner: EncoderRunner, side: int) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, side, side, 3), dtype=np.uint8)
    coords = np.arange(22, dtype=np.int64).reshape(11, 2) * 10
    sink = ListSink()
    stats = encode_patches(_batches(images, 4), coords, runner, sink)
    assert stats.n_patches == 11 and stats.n_batches == 3
    feats = np.concatenate(sink.features)
    assert feats.shape == (11, 512)
    np.testing.assert_allclose(feats, _reference(runner, images), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate(sink.coords), coords)


def test_reader_stays_a_bounded_number_of_batches_ahead(runner: EncoderRunner) -> None:
    produced, sink = [0], ListSink(delay=0.02)
    image = np.zeros((1, 32, 32, 3), np.uint8)

    def reader() -> Iterator[np.ndarray]:
        for _ in range(15):
            produced[0] += 1
            ahead = produced[0] - len(sink.features)
            assert ahead <= 2 + 2 + 3, f"reader is {ahead} batches ahead of the writer"
            yield image

    encode_patches(reader(), np.zeros((15, 2), np.int64), runner, sink, queue_depth=2)
    assert len(sink.features) == 15


def test_read_failure_names_the_read_stage(runner: EncoderRunner) -> None:
    def reader() -> Iterator[np.ndarray]:
        yield np.zeros((2, 32, 32, 3), np.uint8)
        raise ValueError("corrupt JPEG tile")

    with pytest.raises(PipelineError, match="corrupt JPEG") as err:
        encode_patches(reader(), np.zeros((4, 2), np.int64), runner, ListSink())
    assert err.value.stage == "read"


def test_write_failure_stops_the_job_promptly(runner: EncoderRunner) -> None:
    image = np.zeros((2, 32, 32, 3), np.uint8)
    before = threading.active_count()
    with pytest.raises(PipelineError, match="disk full") as err:
        encode_patches(iter([image] * 50), np.zeros((100, 2), np.int64), runner,
                       ListSink(fail_at=1))  # fmt: skip
    assert err.value.stage == "write"
    assert threading.active_count() <= before  # reader and writer threads are gone


def test_encode_failure_names_the_encode_stage(runner: EncoderRunner) -> None:
    bad = np.zeros((2, 32, 32, 4), np.uint8)  # 4 channels: the encoder rejects it
    with pytest.raises(PipelineError) as err:
        encode_patches(iter([bad]), np.zeros((2, 2), np.int64), runner, ListSink())
    assert err.value.stage == "encode"


def test_short_reader_is_an_error(runner: EncoderRunner) -> None:
    with pytest.raises(PipelineError, match="expected 5"):
        encode_patches(iter([np.zeros((2, 32, 32, 3), np.uint8)]), np.zeros((5, 2), np.int64),
                       runner, ListSink())  # fmt: skip


def test_half_precision_output_dtype() -> None:
    r = EncoderRunner(build_encoder("resnet18", "none", input_size=32), "cpu")
    sink = ListSink()
    encode_patches(iter([np.zeros((3, 32, 32, 3), np.uint8)]), np.zeros((3, 2), np.int64), r, sink)
    assert sink.features[0].dtype == np.float16 and r.precision == "fp32"


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-3), ("bf16", 0.08), ("fp16", 0.02)])
def test_cpu_gpu_feature_parity(precision: str, tol: float) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (16, 224, 224, 3), dtype=np.uint8)
    coords = np.zeros((16, 2), np.int64)
    out = {}
    for dev, prec in (("cpu", "fp32"), ("cuda", precision)):
        r = EncoderRunner(build_encoder("resnet50", "none"), dev, prec, out_dtype=torch.float32)
        sink = ListSink()
        encode_patches(_batches(images, 8), coords, r, sink)
        out[dev] = np.concatenate(sink.features)
    scale = np.abs(out["cpu"]).max()
    assert np.abs(out["cpu"] - out["cuda"]).max() <= tol * scale
    cos = (out["cpu"] * out["cuda"]).sum(1) / (
        np.linalg.norm(out["cpu"], axis=1) * np.linalg.norm(out["cuda"], axis=1)
    )
    assert cos.min() > 0.99


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("side", [16, 100, 300])
def test_the_cnn_resize_is_torchvisions_own_on_the_uint8_patch(mode: str, side: int) -> None:
    """To the bit, patch by patch, whatever the batch: torchvision's `Resize` of each uint8
    patch (its 8-bit kernel on the CPU), not the float kernel balnmp used before."""
    images = torch.from_numpy(np.random.default_rng(side).integers(
        0, 256, (5, 224, 224, 3), dtype=np.uint8)).permute(0, 3, 1, 2)  # as the reader's batches
    p = Preprocess(side, interpolation=mode)
    assert p.resample == "torchvision-8bit"
    card = T.Resize((side, side), interpolation=T.InterpolationMode(mode), antialias=True)
    want = torch.stack([card(im.contiguous()) for im in images]).float()
    got = resize_and_crop(images, p)
    assert got.dtype == torch.float32 and got.shape == (5, 3, side, side)
    assert torch.equal(got, want)
    assert torch.equal(resize_and_crop(images[2:4], p), want[2:4])
    old = F.interpolate(images.float(), size=(side, side), mode=mode, antialias=True)
    assert not torch.equal(old, want)  # the float kernel rounds otherwise


def test_pil_card_encoders_keep_their_per_pass_rounding() -> None:
    images = torch.from_numpy(np.random.default_rng(1).integers(
        0, 256, (3, 64, 64, 3), dtype=np.uint8)).permute(0, 3, 1, 2)
    p = Preprocess(32, pil=True)
    assert p.resample == "pil-8bit"
    x = F.interpolate(images.float(), size=(64, 32), mode="bilinear", antialias=True)
    x = F.interpolate(x.round().clamp(0, 255), size=(32, 32), mode="bilinear", antialias=True)
    assert torch.equal(resize_and_crop(images, p), x.round().clamp(0, 255))


@pytest.mark.parametrize("pil", [True, False])
def test_the_runner_preprocesses_each_patch_as_alone_in_any_batch(pil: bool) -> None:
    """A batch larger than `CPU_PREPROCESS_CHUNK` (chunked for PIL cards, whole for the
    CNNs), a batch of 1 and a list of batches all give each patch its own result: PIL cards
    the per-pass rounded float resize of before, the CNNs torchvision's own transform."""
    from torch import nn

    from balnmp_cache.encoders.base import Encoder
    from balnmp_cache.extract.pipeline import CPU_PREPROCESS_CHUNK

    enc = Encoder("probe", nn.Identity(), 24, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), 3, "none:seed=0",
                  resize=None if not pil else 28, interpolation="bicubic", pil=pil)  # fmt: skip
    runner = EncoderRunner(enc, "cpu", "fp32", channels_last=False)
    n = CPU_PREPROCESS_CHUNK * 2 + 3
    nhwc = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (n, 40, 40, 3),
                                                              dtype=np.uint8))  # fmt: skip
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (enc.mean, enc.std))
    if pil:  # the rounded two-pass float resize to 28, then the centre crop to 24
        x = F.interpolate(nhwc.permute(0, 3, 1, 2).float(), size=(40, 28), mode="bicubic",
                          antialias=True).round().clamp(0, 255)  # fmt: skip
        x = F.interpolate(x, size=(28, 28), mode="bicubic", antialias=True).round().clamp(0, 255)
        want = (x[..., 2:26, 2:26] / 255.0 - mean) / std
    else:
        card = T.Resize((24, 24), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        want = (torch.stack([card(im.permute(2, 0, 1).contiguous()) for im in nhwc]).float()
                / 255.0 - mean) / std  # fmt: skip
    got = runner.preprocess(nhwc)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert torch.equal(runner.preprocess(nhwc[5:6]), got[5:6])
    assert torch.equal(runner.preprocess(nhwc[3:]), got[3:])
    with torch.inference_mode():
        assert torch.equal(runner([nhwc[:4], nhwc[4:]]), runner(nhwc))

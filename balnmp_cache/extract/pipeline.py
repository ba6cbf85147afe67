"""The hot loop: read uint8 batches -> device -> resize/normalise -> encoder -> background writer.

Three stages overlap: a reader thread fills a bounded queue with decoded batches (the slide
backend decodes with its own threads), the calling thread moves each batch to the device and
runs the encoder, and a writer thread appends finished features to the store. Queues are
bounded, so host memory stays flat however many patches a slide has. All work is per batch:
there is no per-patch Python in the loop.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from balnmp_cache.encoders.base import Encoder
from balnmp_cache.encoders.preprocess import resize_and_crop
from balnmp_cache.errors import OptionError
from balnmp_cache.extract.options import PRECISIONS

_DONE = object()


class PipelineError(RuntimeError):
    """A failure inside the pipeline; `stage` is "read", "encode" or "write"."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


class FeatureSink(Protocol):
    def append(self, features: np.ndarray, coords: np.ndarray) -> None: ...


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_precision(device: torch.device, encoder: Encoder | None = None) -> str:
    """fp32 on CPU; on CUDA the encoder's recommended precision, else bf16."""
    if device.type != "cuda":
        return "fp32"
    return (encoder.precision if encoder is not None else None) or "bf16"


class EncoderRunner:
    """An encoder placed on a device, with its preprocessing folded into one affine op."""

    def __init__(
        self,
        encoder: Encoder,
        device: str | torch.device | None = None,
        precision: str | None = None,
        out_dtype: torch.dtype = torch.float16,
        channels_last: bool = True,
    ) -> None:
        self.encoder = encoder
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = precision or default_precision(self.device, encoder)
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision {self.precision!r}: must be one of "
                              f"{', '.join(PRECISIONS)}")
        amp = PRECISIONS[self.precision]
        self.amp_dtype: torch.dtype | None = None if amp is None else getattr(torch, amp)
        self.out_dtype = out_dtype
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.module = encoder.module.to(self.device).to(memory_format=fmt).eval()
        std = torch.tensor(encoder.std, dtype=torch.float32, device=self.device)
        mean = torch.tensor(encoder.mean, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._bias = (-mean / std).view(1, 3, 1, 1)

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) on the device -> normalised float (B,3,S,S) at the encoder's size
        (resized and cropped as its model card says: `encoders.preprocess`)."""
        x = resize_and_crop(batch.permute(0, 3, 1, 2).float(), self.encoder.preprocess)
        x = x * self._scale + self._bias
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Features (B, D) in `out_dtype`, still on the device."""
        x = self.preprocess(batch.to(self.device, non_blocking=True))
        if self.amp_dtype is None:
            feats = self.module(x)
        else:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                feats = self.module(x)
        return feats.reshape(feats.shape[0], -1).to(self.out_dtype)


class _Worker(threading.Thread):
    """A daemon thread that records its exception for the caller to re-raise."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the main thread with its stage
            self.error = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up when `stop` is set (the consumer failed)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@dataclass
class PipelineStats:
    n_patches: int = 0
    n_batches: int = 0


def encode_patches(
    batches: Iterator[np.ndarray],
    coords: np.ndarray,
    runner: EncoderRunner,
    sink: FeatureSink,
    queue_depth: int = 3,
    on_batch: Callable[[int], None] | None = None,
) -> PipelineStats:
    """Encode every batch of `batches` (uint8 (b,h,w,3), in `coords` order) into `sink`.

    Raises PipelineError naming the failed stage; on failure the other threads stop promptly.
    """
    return _Pipeline(batches, coords, runner, sink, queue_depth).run(on_batch)


class _Pipeline:
    """The three stages of `encode_patches`: a reader thread, the calling thread on the
    device, a writer thread; bounded queues between them and one `stop` event for all."""

    def __init__(self, batches: Iterator[np.ndarray], coords: np.ndarray, runner: EncoderRunner,
                 sink: FeatureSink, queue_depth: int) -> None:  # fmt: skip
        self.batches = batches
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.runner = runner
        self.sink = sink
        self.stop = threading.Event()
        self.read_q: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self.write_q: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self.cuda = runner.device.type == "cuda"

    def read(self) -> None:
        """Reader thread: decoded batches into the read queue, then `_DONE`."""
        try:
            for batch in self.batches:
                if not (isinstance(batch, np.ndarray) and batch.flags.owndata):
                    # cuCIM's batch iterator recycles its buffers once it advances: a view
                    # kept in the queue would be overwritten by a later batch.
                    batch = np.array(batch, dtype=np.uint8, order="C", copy=True)
                if not _put(self.read_q, batch, self.stop):
                    return
        finally:
            close = getattr(self.batches, "close", None)
            if close is not None:
                close()
            _put(self.read_q, _DONE, self.stop)

    def write(self) -> None:
        """Writer thread: features (once their device copy is done) into the sink, in order."""
        offset = 0
        while True:
            try:
                item = self.write_q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return  # the job failed elsewhere; the sink is discarded anyway
                continue
            if item is _DONE:
                return
            feats, event = item
            if event is not None:
                event.synchronize()
            n = feats.shape[0]
            self.sink.append(feats.numpy(), self.coords[offset : offset + n])
            offset += n

    def encode(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """One batch through the encoder; on CUDA the features come back to pinned host
        memory asynchronously, with the event the writer waits on."""
        try:
            x = torch.from_numpy(batch)
            if self.cuda:
                x = x.pin_memory()
            feats = self.runner(x)
            if not self.cuda:
                return feats, None
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event
        except Exception as exc:
            raise PipelineError("encode", exc) from exc

    def run(self, on_batch: Callable[[int], None] | None) -> PipelineStats:
        reader, writer = _Worker("balnmp-reader", self.read), _Worker("balnmp-writer", self.write)
        reader.start()
        writer.start()
        stats = PipelineStats()
        try:
            self._encode_all(reader, writer, stats, on_batch)
        finally:
            self.stop.set()
            _drain(self.read_q)
            reader.join()
            with contextlib.suppress(queue.Full):
                self.write_q.put_nowait(_DONE)
            writer.join()
        for stage, worker in (("read", reader), ("write", writer)):
            if worker.error is not None:
                raise PipelineError(stage, worker.error) from worker.error
        if stats.n_patches != len(self.coords):
            raise PipelineError("read", ValueError(
                f"reader returned {stats.n_patches} patches, expected {len(self.coords)}"))
        return stats

    def _encode_all(self, reader: _Worker, writer: _Worker, stats: PipelineStats,
                    on_batch: Callable[[int], None] | None) -> None:  # fmt: skip
        """The calling thread's loop: every read batch encoded and queued for the writer."""
        while True:
            item = _get(self.read_q, reader, writer)
            if item is _DONE:
                break
            n = int(item.shape[0])
            if stats.n_patches + n > len(self.coords):
                raise PipelineError(
                    "read", ValueError(f"reader returned more than {len(self.coords)} patches")
                )
            if not _put(self.write_q, self.encode(item), self.stop) or writer.error is not None:
                break
            stats.n_patches += n
            stats.n_batches += 1
            if on_batch is not None:
                on_batch(n)
        _put(self.write_q, _DONE, self.stop)
        writer.join()


def _get(q: queue.Queue, reader: _Worker, writer: _Worker) -> Any:
    """Next item from the read queue; surfaces a writer failure instead of waiting forever."""
    while True:
        if writer.error is not None:
            raise PipelineError("write", writer.error) from writer.error
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not reader.is_alive() and q.empty():
                if reader.error is not None:
                    raise PipelineError("read", reader.error) from reader.error
                return _DONE


def _drain(q: queue.Queue) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            q.get_nowait()

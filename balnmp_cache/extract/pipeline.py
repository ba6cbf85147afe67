"""The hot loop: read uint8 batches -> device -> resize/normalise -> encoder -> background writer.

Three stages overlap: a reader thread fills a bounded queue with decoded batches (the slide
backend decodes with its own threads), the calling thread moves each batch to the device and
runs the encoder, and a writer thread hands finished features to the sink. Queues are
bounded, so host memory stays flat however many patches a slide has. All work is per batch:
there is no per-patch Python in the loop. `encode_stream` runs a stream of `Batch`es whose
`route` tells the sink where each row goes (the feed's batches hold several slides:
`feed.py`); `encode_patches` is the one-slide case.
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
# Patches preprocessed at a time on the CPU (a 224 px patch is 600 kB as float).
CPU_PREPROCESS_CHUNK = 8


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
        (resized and cropped as its model card says: `encoders.preprocess`).

        On the CPU a large batch resampled in float (PIL-card encoders) goes
        `CPU_PREPROCESS_CHUNK` patches at a time: its float copy then stays in cache (2-3x
        faster than one pass; every patch is computed alone, so the result is the same to the
        bit). The 8-bit kernel of the others is fastest on the whole batch."""
        float_cpu = batch.device.type == "cpu" and self.encoder.preprocess.pil
        chunk = CPU_PREPROCESS_CHUNK if float_cpu else len(batch)
        if len(batch) > chunk:
            return torch.cat([self._preprocess(batch[i : i + chunk])
                              for i in range(0, len(batch), chunk)])  # fmt: skip
        return self._preprocess(batch)

    def _preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        x = resize_and_crop(batch.permute(0, 3, 1, 2), self.encoder.preprocess)
        x = x * self._scale + self._bias
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Features (B, D) in `out_dtype`, still on the device. A list of batches is encoded
        as their concatenation (each preprocessed on its own: the same to the bit)."""
        if isinstance(batch, list):
            x = torch.cat([self.preprocess(b.to(self.device, non_blocking=True)) for b in batch])
        else:
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


@dataclass
class Batch:
    """One encoder batch: uint8 `pixels` (b, h, w, 3), possibly of several slides, and the
    `route` the sink needs to send each row's features to its slide. `pixels` None: a batch
    of no patches that only carries its route through the pipeline, in order."""

    pixels: np.ndarray | torch.Tensor | list[np.ndarray] | None  # see `batch_rows`
    route: Any = None


class BatchSink(Protocol):
    def deliver(self, features: np.ndarray | None, batch: Batch,
                error: BaseException | None) -> None: ...  # fmt: skip


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
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    stats = encode_stream(_counted(batches, len(coords)), runner, _CoordsSink(sink, coords),
                          queue_depth, on_batch)  # fmt: skip
    if stats.n_patches != len(coords):
        raise PipelineError("read", ValueError(
            f"reader returned {stats.n_patches} patches, expected {len(coords)}"))
    return stats


def _counted(batches: Iterator[np.ndarray], expected: int) -> Iterator[Batch]:
    """`batches` as `Batch`es routed by their first row; more rows than `expected` is an error."""
    offset = 0
    for pixels in batches:
        if offset + len(pixels) > expected:
            raise ValueError(f"reader returned more than {expected} patches")
        yield Batch(pixels, offset)
        offset += len(pixels)


class _CoordsSink:
    """One slide's sink behind the `BatchSink` interface: rows appended with their coords."""

    def __init__(self, sink: FeatureSink, coords: np.ndarray) -> None:
        self.sink, self.coords = sink, coords

    def deliver(self, features: np.ndarray | None, batch: Batch,
                error: BaseException | None) -> None:  # fmt: skip
        if features is not None:
            self.sink.append(features, self.coords[batch.route : batch.route + len(features)])


def encode_stream(
    batches: Iterator[Batch],
    runner: EncoderRunner,
    sink: BatchSink,
    queue_depth: int = 3,
    on_batch: Callable[[int], None] | None = None,
    isolate_encode_errors: bool = False,
) -> PipelineStats:
    """Encode a stream of `Batch`es into `sink`, which gets each batch's features (or, with
    `isolate_encode_errors`, the encoder's exception for that batch) in stream order.

    `batches` is iterated in the reader thread, `sink.deliver` runs in the writer thread,
    `on_batch(n)` in the calling thread after each batch. Raises PipelineError naming the
    failed stage; on failure the other threads stop promptly.
    """
    return _Pipeline(batches, runner, sink, queue_depth, isolate_encode_errors).run(on_batch)


class _Pipeline:
    """The three stages of `encode_stream`: a reader thread, the calling thread on the
    device, a writer thread; bounded queues between them and one `stop` event for all."""

    def __init__(self, batches: Iterator[Batch], runner: EncoderRunner, sink: BatchSink,
                 queue_depth: int, isolate: bool) -> None:  # fmt: skip
        self.batches = batches
        self.runner = runner
        self.sink = sink
        self.isolate = isolate
        self.stop = threading.Event()
        self.read_q: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self.write_q: queue.Queue[Any] = queue.Queue(maxsize=queue_depth)
        self.cuda = runner.device.type == "cuda"

    def read(self) -> None:
        """Reader thread: decoded batches into the read queue, then `_DONE`."""
        try:
            for batch in self.batches:
                px = batch.pixels
                if isinstance(px, np.ndarray) and not px.flags.owndata:
                    # cuCIM's batch iterator recycles its buffers once it advances: a view
                    # kept in the queue would be overwritten by a later batch.
                    batch = Batch(np.array(px, dtype=np.uint8, order="C", copy=True), batch.route)
                if not _put(self.read_q, batch, self.stop):
                    return
        finally:
            close = getattr(self.batches, "close", None)
            if close is not None:
                close()
            _put(self.read_q, _DONE, self.stop)

    def write(self) -> None:
        """Writer thread: features (once their device copy is done) to the sink, in order."""
        while True:
            try:
                item = self.write_q.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return  # the job failed elsewhere; the sink is discarded anyway
                continue
            if item is _DONE:
                return
            feats, event, batch, error = item
            if event is not None:
                event.synchronize()
            self.sink.deliver(None if feats is None else feats.numpy(), batch, error)

    def encode(self, batch: Any) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """One batch through the encoder; on CUDA the features come back to pinned host
        memory asynchronously, with the event the writer waits on."""
        try:
            x = as_tensor(batch, pin=self.cuda)
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
        return stats

    def _encode_all(self, reader: _Worker, writer: _Worker, stats: PipelineStats,
                    on_batch: Callable[[int], None] | None) -> None:  # fmt: skip
        """The calling thread's loop: every read batch encoded and queued for the writer."""
        while True:
            item = _get(self.read_q, reader, writer)
            if item is _DONE:
                break
            n = batch_rows(item.pixels)
            out: tuple[Any, ...] = (None, None, item, None)
            if n:
                try:
                    out = (*self.encode(item.pixels), item, None)
                except PipelineError as exc:
                    if not self.isolate:
                        raise
                    out = (None, None, item, exc.error)
            if not _put(self.write_q, out, self.stop) or writer.error is not None:
                break
            stats.n_patches += n
            stats.n_batches += bool(n)
            if on_batch is not None:
                on_batch(n)
        _put(self.write_q, _DONE, self.stop)
        writer.join()


def batch_rows(pixels: Any) -> int:
    """Patches in a batch's pixels: an array or tensor (b, h, w, 3), a list of them (the
    rows of consecutive slides for a CPU encoder, not joined: `feed.py`), or None."""
    if pixels is None:
        return 0
    if isinstance(pixels, list):
        return sum(int(p.shape[0]) for p in pixels)
    return int(pixels.shape[0])


def as_tensor(pixels: Any, pin: bool = False) -> Any:
    """A batch of pixels as a torch tensor without copying where it can: CUDA memory (a
    cuCIM/CuPy batch decoded on the GPU) through DLPack or `__cuda_array_interface__`, stays
    on its device; host memory is wrapped, and copied into pinned memory when `pin`. A list
    of batches gives a list of tensors."""
    if isinstance(pixels, list):
        return [as_tensor(p, pin) for p in pixels]
    if isinstance(pixels, torch.Tensor):
        x = pixels
    elif hasattr(pixels, "__cuda_array_interface__"):
        x = torch.from_dlpack(pixels) if hasattr(pixels, "__dlpack__") else torch.as_tensor(
            pixels, device="cuda")
        return x
    else:
        x = torch.from_numpy(np.asarray(pixels))
    if pin and x.device.type == "cpu" and not x.is_pinned():
        x = x.pin_memory()
    return x


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

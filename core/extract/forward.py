"""The forward pass of extraction: batches on the device, in chunks that fit its memory.

:func:`start_pipeline` runs one forward pass (channels_last input, under the autocast
:mod:`manet.nn.device` decides) and hands back :class:`PendingVectors` whose copy to the host may
still be running; :class:`Forward` splits a batch into chunks and halves them when CUDA runs out
of memory; :func:`resolve_batch_size` picks the batch size (measured against free memory on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from manet.errors import ManetError
from manet.nn.device import autocast

#: Images per forward pass on the CPU (``batch_size=None``). Measured on 2 cores (ResNet-50,
#: 224 px, channels_last): 8 beat 32 by ~1.7x, whose activations no longer fit the caches.
CPU_BATCH_SIZE = 8


def auto_batch_size(free_bytes: int, per_image_bytes: int, *, fraction: float = 0.5, largest: int = 256) -> int:
    """The largest power of two n <= ``largest`` whose forward pass needs at most ``fraction``
    of the free device memory (n * ``per_image_bytes``); at least 1.

    The rest is headroom for decoding full-size JPEGs on the device and for the allocator.
    """
    if per_image_bytes <= 0:
        return largest
    fits = int(free_bytes * fraction // per_image_bytes)
    size = 1
    while size * 2 <= min(fits, largest):
        size *= 2
    return size


def oom_backoff(chunk: int) -> int:
    """Images per forward pass after running out of device memory with ``chunk``: half."""
    if chunk <= 1:
        raise ManetError("the model does not fit in the GPU's memory even for one image; free the GPU, "
                         "use a smaller --image-size, or run on --device cpu")
    return chunk // 2


def measure_image_bytes(pipeline: Any, image_size: int, device: str, probe: int = 4,
                        precision: str | None = None) -> int:
    """Peak device memory per image of one forward pass on CUDA (a probe batch of ``probe``)."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    images = torch.zeros((probe, 3, image_size, image_size), dtype=torch.uint8, device=device)
    start_pipeline(pipeline, images, device, precision=precision).result()
    peak = torch.cuda.max_memory_allocated(device) - before
    return max(1, peak // probe)


def resolve_batch_size(batch_size: int | None, pipeline: Any, image_size: int, device: str,
                       precision: str | None = None) -> int:
    """``batch_size``, or when None the automatic one: measured against free memory on CUDA
    (:func:`auto_batch_size`), :data:`CPU_BATCH_SIZE` elsewhere."""
    if batch_size is not None:
        if batch_size < 1:
            raise ManetError(f"batch size must be at least 1, got {batch_size}; or use auto")
        return batch_size
    if not device.startswith("cuda"):
        return CPU_BATCH_SIZE
    import torch

    per_image = measure_image_bytes(pipeline, image_size, device, precision=precision)
    free, _total = torch.cuda.mem_get_info(device)
    return auto_batch_size(free, per_image)


def prepare_pipeline(pipeline: Any, device: str, *, compile: bool = False) -> Any:
    """The pipeline in its fastest form: channels_last weights (faster convolutions on CUDA and,
    measured here, on the CPU too; converted in place), optionally ``torch.compile``-d."""
    import torch

    pipeline = pipeline.to(memory_format=torch.channels_last)
    return torch.compile(pipeline) if compile else pipeline


class PendingVectors:
    """Descriptors whose computation may still be running on the device; :meth:`result`
    waits for them (the writer thread does, so the main thread can start the next batch)."""

    def __init__(self, parts: list[tuple[Any, Any]], dim: int = 0) -> None:
        self.parts = parts  # (host tensor, CUDA event or None)
        self.dim = dim

    def result(self) -> np.ndarray:
        for _, event in self.parts:
            if event is not None:
                event.synchronize()
        if not self.parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([tensor.numpy() for tensor, _ in self.parts])


@contextmanager
def forward_pass(device: str, precision: str | None = None) -> Iterator[None]:
    """The context of every forward pass on ``device``: inference mode, and bf16 autocast
    where :func:`manet.nn.device.use_bf16` says for ``precision`` (None: auto)."""
    import torch

    with torch.inference_mode(), autocast(device, precision or "auto"):
        yield


def start_pipeline(pipeline: Any, images: Any, device: str, rows: int | None = None,
                   precision: str | None = None) -> PendingVectors:
    """Start one forward pass on ``device`` (channels_last input, bf16 autocast where
    :func:`manet.nn.device.use_bf16` says) and keep the first ``rows`` descriptors (all by
    default); on CUDA they come back by an asynchronous copy into page-locked memory."""
    import torch

    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with forward_pass(device, precision):
        out = pipeline(images)[:rows]
    if device.startswith("cuda"):
        host = out.float().to("cpu", non_blocking=True)  # page-locked, filled asynchronously
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(images.device))  # the stream the copy is queued on
        return PendingVectors([(host, event)])
    return PendingVectors([(out.float().cpu(), None)])


def run_pipeline(pipeline: Any, images: Any, device: str, precision: str | None = None) -> np.ndarray:
    """One forward pass on ``device`` (see :func:`start_pipeline`)."""
    return start_pipeline(pipeline, images, device, precision=precision).result()


def is_compiled(pipeline: Any) -> bool:
    """Whether ``pipeline`` is a ``torch.compile`` wrapper (it keeps the original as _orig_mod)."""
    return hasattr(pipeline, "_orig_mod")


class Forward:
    """The pipeline over batches of any size in chunks of at most ``chunk`` images; when CUDA
    runs out of memory the chunk halves (:func:`oom_backoff`) and the batch runs again.

    A compiled pipeline gets every chunk padded to the full size: a short last batch would
    otherwise cost a recompilation that takes longer than the whole run of a small catalogue.
    """

    def __init__(self, pipeline: Any, device: str, chunk: int, dim: int, precision: str | None = None) -> None:
        self.pipeline = pipeline
        self.device = device
        self.chunk = chunk
        self.dim = dim
        self.precision = precision
        self.pad = is_compiled(pipeline)

    def _start(self, part: Any) -> PendingVectors:
        rows = len(part)
        if self.pad and rows < self.chunk:
            padded = part.new_zeros((self.chunk, *part.shape[1:]))
            padded[:rows] = part
            part = padded
        return start_pipeline(self.pipeline, part, self.device, rows, self.precision)

    def __call__(self, images: Any) -> PendingVectors:
        import torch

        if images is None or len(images) == 0:
            return PendingVectors([], self.dim)
        while True:
            try:
                parts = [self._start(part) for part in images.split(self.chunk)]
                return PendingVectors([p for pending in parts for p in pending.parts], self.dim)
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                self.chunk = oom_backoff(self.chunk)

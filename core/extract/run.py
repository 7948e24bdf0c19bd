"""Batched descriptor extraction: files -> DataLoader decode -> pipeline -> binary COPY.

Only images without a descriptor (and not already failed) for the model are processed, and
every batch commits on its own, so an interrupted run resumes where it stopped.

The pending images stream from the database a page at a time (keyset pagination on the image
id) into DataLoader workers that decode the next batches while the model runs; a writer thread
commits finished batches (binary COPY) while the model works on the next one. Memory therefore
stays flat however many images there are, and neither the model nor the database waits for the
other.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from manet import config
from manet.catalog.batch_decode import ImageReader, Item, collate, on_device
from manet.catalog.images import read_image_tensor
from manet.errors import DatabaseError, ManetError
from manet.safe_files import ReadLimits
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch

RECORD_FAILURE = """
INSERT INTO extraction_work (model_id, image_id, status, attempts, last_error, updated_at)
VALUES (%s, %s, 'failed', 1, %s, now())
ON CONFLICT (model_id, image_id) DO UPDATE
   SET status = 'failed', attempts = extraction_work.attempts + 1,
       last_error = EXCLUDED.last_error, updated_at = now()
"""

#: Images per forward pass on the CPU (``batch_size=None``). Measured on 2 cores (ResNet-50,
#: 224 px, channels_last): 8 beat 32 by ~1.7x, whose activations no longer fit the caches.
CPU_BATCH_SIZE = 8
#: Pending images fetched from the database per query.
PAGE_SIZE = 1024
#: Finished batches waiting for the writer thread; beyond this the model waits (bounded memory).
WRITER_QUEUE = 2
DEVICE_DECODE_MODES = ("auto", "on", "off")
#: Forward-pass precisions: auto = bf16 autocast on CUDA and on CPUs with native bf16 (AMX or
#: AVX512-BF16: ResNet-50 ran 2.3x faster than fp32 on such a CPU), fp32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ExtractReport:
    model: str
    device: str
    extracted: int = 0
    failed: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    decode_workers: int = 0
    device_decode: bool = False
    precision: str = "fp32"

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "extracted": self.extracted,
                "failed": self.failed, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2), "batch_size": self.batch_size,
                "decode_workers": self.decode_workers, "device_decode": self.device_decode,
                "precision": self.precision}


class PendingImages:
    """The images of a model still to extract, in id order, as batches of :data:`Item`.

    Iterating queries the database one page at a time, so memory does not grow with the number
    of images; :func:`extract` hands it to DataLoader as its ``batch_sampler``.
    """

    def __init__(self, db: Database, model_id: int, split: str | None, batch_size: int,
                 page_size: int = PAGE_SIZE) -> None:
        if batch_size < 1 or page_size < 1:
            raise ManetError(f"batch size and page size must be at least 1, got {batch_size} and {page_size}")
        self.db = db
        self.model_id = model_id
        self.split = split
        self.batch_size = batch_size
        self.page_size = page_size

    def __iter__(self) -> Iterator[list[Item]]:
        after, batch = 0, []  # image ids come from a sequence that starts at 1
        while True:
            with self.db.begin() as conn:
                rows = descriptors.pending_page(conn, self.model_id, self.split, after, self.page_size)
            for row in rows:
                batch.append((row.id, row.gallery, row.uri))
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            if len(rows) < self.page_size:
                break
            after = rows[-1].id
        if batch:
            yield batch


def count_pending(db: Database, model_id: int, split: str | None = None) -> int:
    """How many images :class:`PendingImages` would yield."""
    with db.begin() as conn:
        return descriptors.count_pending(conn, model_id, split)


def default_workers(count: int, batch_size: int, device: str = "cpu", cpu_count: int | None = None) -> int:
    """DataLoader decoding processes for ``count`` images.

    None for a handful of images (start-up costs more than it saves). On the CPU decoding is a
    few per cent of a forward pass, so one worker per 8 cores keeps the model fed and leaves
    the cores to it; on a GPU the CPU only decodes, so use all but one core (at most 8).
    """
    if count <= 2 * batch_size:
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return max(1, cores // 8)


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


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first CPU in a ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.lru_cache(maxsize=1)
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16; Linux only, else False)."""
    try:
        flags = cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def use_bf16(device: str, precision: str | None = None, native_cpu: bool | None = None) -> bool:
    """Whether the forward pass runs under bf16 autocast: ``precision`` (auto|fp32|bf16, default
    ``MANET_PRECISION`` or auto); auto = on CUDA, and on CPUs with native bf16."""
    precision = precision or os.environ.get(config.PRECISION_ENV) or "auto"
    if precision not in PRECISIONS:
        raise ManetError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    kind = device.split(":")[0]
    if precision == "fp32":
        return False
    if precision == "bf16":
        if kind not in ("cuda", "cpu"):
            raise ManetError(f"bf16 autocast runs on cuda or cpu, not {device}; use --precision fp32")
        return True
    if kind == "cuda":
        return True
    return kind == "cpu" and (native_bf16_cpu() if native_cpu is None else native_cpu)


def device_decode_enabled(mode: str, device: str) -> bool:
    """Whether JPEGs are decoded in batches on the device: ``auto`` means on CUDA only."""
    if mode not in DEVICE_DECODE_MODES:
        raise ManetError(f"unknown device-decode mode {mode!r}; use one of {', '.join(DEVICE_DECODE_MODES)}")
    return device.startswith("cuda") if mode == "auto" else mode == "on"


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
    where :func:`use_bf16` says."""
    import torch

    bf16 = use_bf16(device, precision)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        yield


def start_pipeline(pipeline: Any, images: Any, device: str, rows: int | None = None,
                   precision: str | None = None) -> PendingVectors:
    """Start one forward pass on ``device`` (channels_last input, bf16 autocast where
    :func:`use_bf16` says) and keep the first ``rows`` descriptors (all by default); on CUDA
    they come back by an asynchronous copy into page-locked memory."""
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


def write_batch(conn: Any, model_id: int, ids: list[int], gallery: list[bool], vectors: np.ndarray,
                failures: list[tuple[int, str]]) -> None:
    """Binary COPY of one batch's descriptors plus its failures, in one transaction."""
    with conn.cursor() as cur:
        descriptors.copy_rows(cur, model_id, ids, gallery, vectors)
        for image_id, error in failures:
            cur.execute(RECORD_FAILURE, (model_id, image_id, error))
    conn.commit()


_DONE = object()


class BatchWriter:
    """Commits finished batches (:func:`write_batch`) in a background thread, in order.

    At most ``max_pending`` batches wait (bounded memory: past that, :meth:`submit` waits). The
    first error stops the writer and is raised in the submitting thread by the next
    :meth:`submit` or by :meth:`close` as a :class:`DatabaseError`; every batch committed before
    it stays, so the run resumes from there.
    """

    def __init__(self, db: Database, model_id: int, max_pending: int = WRITER_QUEUE) -> None:
        self.db = db
        self.model_id = model_id
        self.committed = 0
        self.failed = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="manet-descriptor-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.db.raw() as conn:
                while (job := self._queue.get()) is not _DONE:
                    ids, gallery, vectors, failures = job
                    write_batch(conn, self.model_id, ids, gallery, vectors.result(), failures)
                    self.committed += len(ids)
                    self.failed += len(failures)
        except BaseException as exc:  # reported to the submitting thread
            self._error = exc

    def _put(self, job: Any) -> None:
        while True:  # a writer that died must not leave the caller blocked on a full queue
            self.raise_error()
            try:
                self._queue.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        """Raise the writer's error, if it has stopped on one."""
        exc = self._error
        if exc is not None:
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatabaseError(
                f"writing descriptors to the database failed ({reason}); the {self.committed} descriptors "
                f"committed before it are kept: fix the cause and run the extraction again to resume"
            ) from exc

    def submit(self, ids: list[int], gallery: list[bool], vectors: PendingVectors,
               failures: list[tuple[int, str]]) -> None:
        """Queue one batch for commit; raises if the writer has failed."""
        self._put((ids, gallery, vectors, failures))

    def close(self, raise_error: bool = True) -> None:
        """Wait until every submitted batch is committed; then raise the writer's error, if any."""
        if self._thread.is_alive():
            try:
                self._put(_DONE)
            except DatabaseError:
                pass
            self._thread.join()
        if raise_error:
            self.raise_error()


def extract(
    db: Database,
    model: ModelRecord,
    pipeline: Any,
    *,
    device: str,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    split: str | None = None,
    device_decode: str = "auto",
    compile: bool = False,
    page_size: int = PAGE_SIZE,
    precision: str | None = None,
    limits: ReadLimits | None = None,
) -> ExtractReport:
    """Compute descriptors for every image that lacks one for ``model``.

    With ``split``, only the catalogue and the query images of that split (what an
    evaluation of that split needs). ``batch_size=None`` chooses it (:func:`resolve_batch_size`);
    ``device_decode`` (auto|on|off) decodes plain JPEGs in batches on the device, auto = on CUDA.
    ``limits`` caps each file's bytes and read-and-decode seconds; a file over them is a failure.
    """
    import torch
    from tqdm import tqdm

    report = ExtractReport(model=model.name, device=device,
                           device_decode=device_decode_enabled(device_decode, device),
                           precision="bf16" if use_bf16(device, precision) else "fp32")
    total = count_pending(db, model.id, split)
    if not total:
        return report
    size = model.config.image_size
    pipeline = prepare_pipeline(pipeline, device, compile=compile)
    report.batch_size = resolve_batch_size(batch_size, pipeline, size, device, precision)
    report.decode_workers = (default_workers(total, report.batch_size, device) if num_workers is None
                             else num_workers)
    loader = torch.utils.data.DataLoader(
        ImageReader(size, max_pixels, report.device_decode, limits),
        batch_sampler=PendingImages(db, model.id, split, report.batch_size, page_size),
        num_workers=report.decode_workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
    )
    forward = Forward(pipeline, device, report.batch_size, model.dim, precision)
    started = time.perf_counter()
    batches = iter(loader)  # starts the decode workers before the writer thread exists (fork + threads)
    writer = BatchWriter(db, model.id)
    try:
        with tqdm(total=total, desc=f"extract {model.name}", unit="img", disable=not progress) as bar:
            for batch in batches:
                batch = on_device(batch, size, device, max_pixels, limits)
                writer.submit(batch.ids, batch.gallery, forward(batch.pixels), batch.failures)
                bar.update(len(batch.ids) + len(batch.failures))
    finally:  # whatever stopped the loop, what was handed to the writer is committed
        writer.close(raise_error=False)
        report.extracted, report.failed = writer.committed, writer.failed
    writer.raise_error()
    report.seconds = time.perf_counter() - started
    return report


def read_query_images(paths: Sequence[Path], size: int, max_pixels: int | None = None,
                      limits: ReadLimits | None = None) -> list["torch.Tensor"]:
    """Query files decoded as extraction decodes them; an unreadable file raises ImageError."""
    return [read_image_tensor(Path(path), size, max_pixels, limits) for path in paths]


def embed_tensors(pipeline: Any, tensors: Sequence["torch.Tensor"], device: str,
                  precision: str | None = None) -> np.ndarray:
    """Descriptors (not stored) of images decoded by :func:`read_query_images`."""
    import torch

    return run_pipeline(pipeline, torch.stack(list(tensors)), device, precision)


def embed_files(pipeline: Any, paths: Sequence[Path], size: int, device: str,
                max_pixels: int | None = None, precision: str | None = None,
                limits: ReadLimits | None = None) -> np.ndarray:
    """Descriptors for query files (not stored); an undecodable file raises ImageError."""
    return embed_tensors(pipeline, read_query_images(paths, size, max_pixels, limits), device, precision)

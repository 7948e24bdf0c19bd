"""Batched descriptor extraction: files -> DataLoader decode -> pipeline -> binary COPY.

Only images without a descriptor (and not already failed) for the model are processed, and
every batch commits on its own, so an interrupted run resumes where it stopped.

The pending images stream from the database a page at a time (keyset pagination on the image
id) into DataLoader workers that decode the next batches while the model runs
(:mod:`manet.extract.forward`); a writer thread commits finished batches (binary COPY,
:mod:`manet.extract.writer`) while the model works on the next one. Memory therefore stays flat
however many images there are, and neither the model nor the database waits for the other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from manet.catalog.batch_decode import ImageReader, Item, collate, on_device
from manet.catalog.images import read_image_tensor
from manet.errors import ManetError
from manet.extract.forward import Forward, prepare_pipeline, resolve_batch_size, run_pipeline
from manet.extract.writer import BatchWriter
from manet.nn.device import use_bf16
from manet.safe_files import ReadLimits
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Pending images fetched from the database per query.
PAGE_SIZE = 1024
DEVICE_DECODE_MODES = ("auto", "on", "off")


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


#: CPU extraction starts decoding workers from this many cores (see :func:`default_workers`).
MIN_CPU_CORES_FOR_WORKERS = 4


def default_workers(count: int, batch_size: int, device: str = "cpu", cpu_count: int | None = None) -> int:
    """DataLoader decoding processes for ``count`` images.

    No worker for a handful of images (start-up costs more than it saves). On a GPU the CPU only
    decodes, so use all but one core (at most 8). On the CPU the forward pass takes every core:
    one worker per 8 cores keeps the model fed, and below :data:`MIN_CPU_CORES_FOR_WORKERS`
    none, the main process decoding between batches. A worker there competes with torch's
    threads for the same cores; measured on 2 cores (``manet bench extract --decode-workers 0``
    against ``1``, 500 images), end to end went from 73-77 to 90 img/s for MANet in bf16, 36 to
    62 in fp32, and 81 to 97 for the plain network.
    """
    if count <= 2 * batch_size:
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return 0 if cores < MIN_CPU_CORES_FOR_WORKERS else max(1, cores // 8)


def device_decode_enabled(mode: str, device: str) -> bool:
    """Whether JPEGs are decoded in batches on the device: ``auto`` means on CUDA only."""
    if mode not in DEVICE_DECODE_MODES:
        raise ManetError(f"unknown device-decode mode {mode!r}; use one of {', '.join(DEVICE_DECODE_MODES)}")
    return device.startswith("cuda") if mode == "auto" else mode == "on"


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
    ``limits`` caps each file's bytes, read-and-decode seconds and pixels (``max_pixels``, when
    given, replaces its pixel cap); a file over them is a failure. ``precision``: auto (None) |
    fp32 | bf16 (:func:`manet.nn.device.use_bf16`).
    """
    if num_workers is not None and num_workers < 0:
        raise ManetError(f"{num_workers} decode workers is out of range; use 0 (decode in this process) or more")
    report = ExtractReport(model=model.name, device=device,
                           device_decode=device_decode_enabled(device_decode, device),
                           precision="bf16" if use_bf16(device, precision or "auto") else "fp32")
    total = count_pending(db, model.id, split)
    if not total:
        return report
    size = model.config.image_size
    pipeline = prepare_pipeline(pipeline, device, compile=compile)
    report.batch_size = resolve_batch_size(batch_size, pipeline, size, device, precision)
    report.decode_workers = (default_workers(total, report.batch_size, device) if num_workers is None
                             else num_workers)
    loader = _loader(db, model, split, report, page_size, ImageReader(size, max_pixels, report.device_decode, limits))
    forward = Forward(pipeline, device, report.batch_size, model.dim, precision)
    started = time.perf_counter()
    batches = iter(loader)  # starts the decode workers
    _write_batches(db, model, (on_device(batch, size, device, max_pixels, limits) for batch in batches), forward,
                   total, progress, report)
    report.seconds = time.perf_counter() - started
    return report


def _loader(db: Database, model: ModelRecord, split: str | None, report: ExtractReport, page_size: int,
            reader: ImageReader) -> Any:
    """The DataLoader decoding the pending images of ``model`` with ``reader`` in
    ``report.decode_workers`` processes, ``report.batch_size`` at a time."""
    import torch

    from manet.loader_processes import worker_context

    return torch.utils.data.DataLoader(
        reader,
        batch_sampler=PendingImages(db, model.id, split, report.batch_size, page_size),
        num_workers=report.decode_workers,
        collate_fn=collate,
        pin_memory=report.device.startswith("cuda"),
        multiprocessing_context=worker_context(report.decode_workers),
    )


def _write_batches(db: Database, model: ModelRecord, batches: Iterator[Any], forward: Forward, total: int,
                   progress: bool, report: ExtractReport) -> None:
    """Run ``forward`` over the decoded ``batches`` while a :class:`BatchWriter` commits them;
    whatever stops the loop, what was handed to the writer is committed and counted in ``report``."""
    from tqdm import tqdm

    writer = BatchWriter(db, model.id)
    try:
        with tqdm(total=total, desc=f"extract {model.name}", unit="img", disable=not progress) as bar:
            for batch in batches:
                writer.submit(batch.ids, batch.gallery, forward(batch.pixels), batch.failures)
                bar.update(len(batch.ids) + len(batch.failures))
    finally:
        writer.close(raise_error=False)
        report.extracted, report.failed = writer.committed, writer.failed
    writer.raise_error()


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

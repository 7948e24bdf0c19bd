"""Batched descriptor extraction: files -> DataLoader decode -> pipeline -> binary COPY.

Only images without a descriptor (and not already failed) for the model are processed, and
every batch commits on its own, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.db import Database
from manet.errors import ImageError
from manet.images import read_image_tensor
from manet.models import ModelRecord

PENDING = sa.text(
    """
    SELECT i.id, i.uri, i.domain = 'catalog' AS gallery
      FROM images i
     WHERE i.status = 'ok'
       AND (i.domain = 'catalog' OR CAST(:split AS text) IS NULL OR i.split = :split)
       AND NOT EXISTS (SELECT 1 FROM descriptors d WHERE d.model_id = :m AND d.image_id = i.id)
       AND NOT EXISTS (SELECT 1 FROM extraction_work w
                        WHERE w.model_id = :m AND w.image_id = i.id AND w.status = 'failed')
     ORDER BY i.id
    """
)

RECORD_FAILURE = """
INSERT INTO extraction_work (model_id, image_id, status, attempts, last_error, updated_at)
VALUES (%s, %s, 'failed', 1, %s, now())
ON CONFLICT (model_id, image_id) DO UPDATE
   SET status = 'failed', attempts = extraction_work.attempts + 1,
       last_error = EXCLUDED.last_error, updated_at = now()
"""


@dataclass
class ExtractReport:
    model: str
    device: str
    extracted: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "extracted": self.extracted,
                "failed": self.failed, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 2)}


class ImageFiles:
    """A map-style dataset of (image_id, gallery, uri) decoded to uint8 (3, S, S) tensors.

    Decoding errors are returned, not raised, so one bad file never kills a DataLoader worker.
    """

    def __init__(self, items: Sequence[tuple[int, bool, str]], size: int, max_pixels: int | None) -> None:
        self.items = items
        self.size = size
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, bool, Any, str | None]:
        image_id, gallery, uri = self.items[index]
        try:
            return image_id, gallery, read_image_tensor(Path(uri), self.size, self.max_pixels), None
        except ImageError as exc:
            return image_id, gallery, None, str(exc)


def collate(batch: list[tuple[int, bool, Any, str | None]]) -> dict[str, Any]:
    import torch

    good = [item for item in batch if item[3] is None]
    return {
        "ids": [item[0] for item in good],
        "gallery": [item[1] for item in good],
        "images": torch.stack([item[2] for item in good]) if good else None,
        "failures": [(item[0], item[3]) for item in batch if item[3] is not None],
    }


def default_workers(count: int, batch_size: int) -> int:
    """DataLoader workers: none for a handful of images (start-up costs more than it saves)."""
    if count <= 2 * batch_size:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def run_pipeline(pipeline: Any, images: Any, device: str) -> np.ndarray:
    """One forward pass on ``device``; bf16 autocast on CUDA."""
    import torch

    images = images.to(device, non_blocking=True)
    with torch.inference_mode():
        if device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = pipeline(images.contiguous(memory_format=torch.channels_last))
        else:
            out = pipeline(images)
    return out.float().cpu().numpy()


def copy_descriptors(cur: Any, model_id: int, ids: Sequence[int], gallery: Sequence[bool],
                     vectors: np.ndarray) -> None:
    """Binary COPY of descriptor rows on a psycopg cursor (pgvector types registered)."""
    if not len(ids):
        return
    with cur.copy(
        "COPY descriptors (model_id, image_id, gallery, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "int8", "bool", "vector"])
        for image_id, is_gallery, vector in zip(ids, gallery, vectors, strict=True):
            copy.write_row((model_id, image_id, is_gallery, vector))


def write_batch(conn: Any, model_id: int, ids: list[int], gallery: list[bool], vectors: np.ndarray,
                failures: list[tuple[int, str]]) -> None:
    """Binary COPY of one batch's descriptors plus its failures, in one transaction."""
    with conn.cursor() as cur:
        copy_descriptors(cur, model_id, ids, gallery, vectors)
        for image_id, error in failures:
            cur.execute(RECORD_FAILURE, (model_id, image_id, error))
    conn.commit()


def extract(
    db: Database,
    model: ModelRecord,
    pipeline: Any,
    *,
    device: str,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    split: str | None = None,
) -> ExtractReport:
    """Compute descriptors for every image that lacks one for ``model``.

    With ``split``, only the catalogue and the query images of that split (what an
    evaluation of that split needs).
    """
    import torch
    from tqdm import tqdm

    with db.begin() as conn:
        items = [(row.id, row.gallery, row.uri) for row in conn.execute(PENDING, {"m": model.id, "split": split})]
    report = ExtractReport(model=model.name, device=device)
    if not items:
        return report
    workers = default_workers(len(items), batch_size) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        ImageFiles(items, model.config.image_size, max_pixels),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.startswith("cuda"),
    )
    started = time.perf_counter()
    with db.raw() as conn, tqdm(total=len(items), desc=f"extract {model.name}", unit="img",
                                disable=not progress) as bar:
        for batch in loader:
            vectors = (
                run_pipeline(pipeline, batch["images"], device)
                if batch["images"] is not None
                else np.zeros((0, model.dim), dtype=np.float32)
            )
            write_batch(conn, model.id, batch["ids"], batch["gallery"], vectors, batch["failures"])
            report.extracted += len(batch["ids"])
            report.failed += len(batch["failures"])
            bar.update(len(batch["ids"]) + len(batch["failures"]))
    report.seconds = time.perf_counter() - started
    return report


def embed_files(pipeline: Any, paths: Sequence[Path], size: int, device: str,
                max_pixels: int | None = None) -> np.ndarray:
    """Descriptors for query files (not stored); an undecodable file raises ImageError."""
    import torch

    tensors = [read_image_tensor(Path(path), size, max_pixels) for path in paths]
    return run_pipeline(pipeline, torch.stack(tensors), device)

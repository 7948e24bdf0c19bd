"""Extraction workers that share one database: claim, extract, commit, repeat.

Work rows (``extraction_work``) are claimed in batches with ``FOR UPDATE SKIP LOCKED`` under a
lease (owner + expiry). A batch's descriptors are written in the same transaction that marks
its rows done, and only for rows the worker still owns, so a worker that dies leaves no
partial rows: its lease expires and another worker takes the batch. An image that keeps
failing (or keeps killing workers) is marked failed after ``max_attempts``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import ManetError
from manet.safe_files import ReadLimits
from manet.store import descriptors
from manet.store.database import Database, with_reconnect
from manet.store.models import ModelRecord

# Expired leases whose image was tried max_attempts times: give up on them.
EXPIRE_POISON = sa.text(
    """
    UPDATE extraction_work SET status = 'failed', lease_owner = NULL, updated_at = now(),
           last_error = COALESCE(last_error, 'lease expired ' || attempts || ' times: a worker died on it')
     WHERE model_id = :m AND status = 'leased' AND lease_expires_at < now() AND attempts >= :max
    """
)

CLAIM = sa.text(
    """
    UPDATE extraction_work w
       SET status = 'leased', lease_owner = :owner, attempts = w.attempts + 1, updated_at = now(),
           lease_expires_at = now() + make_interval(secs => :lease)
     WHERE (w.model_id, w.image_id) IN (
            SELECT model_id, image_id FROM extraction_work
             WHERE model_id = :m
               AND (status = 'pending' OR (status = 'leased' AND lease_expires_at < now()))
             ORDER BY image_id
             LIMIT :n
               FOR UPDATE SKIP LOCKED)
    RETURNING w.image_id, w.attempts
    """
)

RENEW = sa.text(
    """
    UPDATE extraction_work SET lease_expires_at = now() + make_interval(secs => :lease), updated_at = now()
     WHERE model_id = :m AND status = 'leased' AND lease_owner = :owner
    """
)

REMAINING = sa.text(
    "SELECT count(*) FROM extraction_work WHERE model_id = :m AND status IN ('pending', 'leased')"
)


@dataclass
class WorkerReport:
    owner: str
    batches: int = 0
    extracted: int = 0
    failed: int = 0
    lost_leases: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "batches": self.batches, "extracted": self.extracted,
                "failed": self.failed, "lost_leases": self.lost_leases}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@contextmanager
def heartbeat(db: Database, model: ModelRecord, owner: str, lease_seconds: float) -> Iterator[None]:
    """Renew ``owner``'s leases every third of the lease while the body runs, so a slow batch
    is not taken over by another worker; a worker that dies stops renewing."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_seconds / 3):
            try:
                with db.begin() as conn:
                    conn.execute(RENEW, {"m": model.id, "owner": owner, "lease": float(lease_seconds)})
            except sa.exc.DBAPIError:  # an outage: the main loop deals with it
                pass

    thread = threading.Thread(target=beat, name=f"lease-heartbeat-{owner}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def enqueue(db: Database, model: ModelRecord) -> int:
    """Add a pending work row for every image of ``model`` still to extract (the definition
    ``manet extract`` pages through, without a split: :mod:`manet.store.descriptors`)."""
    with db.begin() as conn:
        return descriptors.enqueue_pending(conn, model.id)


def claim(db: Database, model: ModelRecord, owner: str, batch_size: int, lease_seconds: float,
          max_attempts: int) -> list[tuple[int, str, bool, int]]:
    """Lease up to ``batch_size`` images: (image_id, uri, gallery, attempts)."""
    with db.begin() as conn:
        conn.execute(EXPIRE_POISON, {"m": model.id, "max": max_attempts})
        claimed = conn.execute(CLAIM, {"m": model.id, "owner": owner, "lease": float(lease_seconds),
                                       "n": batch_size}).all()
        if not claimed:
            return []
        attempts = {row.image_id: row.attempts for row in claimed}
        rows = conn.execute(
            sa.text("SELECT id, uri, domain = 'catalog' AS gallery FROM images WHERE id = ANY(:ids) ORDER BY id"),
            {"ids": list(attempts)},
        ).all()
    return [(row.id, row.uri, row.gallery, attempts[row.id]) for row in rows]


def commit_batch(conn: Any, model: ModelRecord, owner: str, ids: list[int], gallery: list[bool],
                 vectors: np.ndarray, failures: list[tuple[int, str, int]], max_attempts: int) -> tuple[int, int]:
    """One transaction: keep only rows still leased by ``owner``, write their descriptors
    (binary COPY), mark them done, and record failures (retry until ``max_attempts``)."""
    all_ids = ids + [image_id for image_id, _, _ in failures]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT image_id FROM extraction_work WHERE model_id = %s AND image_id = ANY(%s) "
            "AND status = 'leased' AND lease_owner = %s FOR UPDATE",
            (model.id, all_ids, owner),
        )
        owned = {row[0] for row in cur.fetchall()}
        keep = [i for i, image_id in enumerate(ids) if image_id in owned]
        descriptors.copy_rows(cur, model.id, [ids[i] for i in keep], [gallery[i] for i in keep], vectors[keep])
        cur.execute(
            "UPDATE extraction_work SET status = 'done', lease_owner = NULL, updated_at = now() "
            "WHERE model_id = %s AND image_id = ANY(%s)",
            (model.id, [ids[i] for i in keep]),
        )
        for image_id, error, attempts in failures:
            if image_id not in owned:
                continue
            cur.execute(
                "UPDATE extraction_work SET status = %s, lease_owner = NULL, last_error = %s, updated_at = now() "
                "WHERE model_id = %s AND image_id = %s",
                ("failed" if attempts >= max_attempts else "pending", error, model.id, image_id),
            )
    conn.commit()
    return len(keep), len(all_ids) - len(owned)


@dataclass
class _BatchStep:
    """What one worker needs to decode, extract and commit a claimed batch: extraction's own
    decoding and forward pass, and the database calls retried through an outage."""

    db: Database
    model: ModelRecord
    forward: Any
    owner: str
    device: str
    batch_decode: bool
    max_attempts: int
    max_pixels: int | None
    max_outage: float
    limits: ReadLimits | None
    say: Callable[[str], None]

    def retry(self, action: Callable[[], Any]) -> Any:
        return with_reconnect(action, max_outage=self.max_outage, say=self.say)

    def remaining(self) -> int:
        with self.db.begin() as check:
            return int(check.execute(REMAINING, {"m": self.model.id}).scalar_one())

    def commit(self, *args: Any) -> tuple[int, int]:
        with self.db.raw() as conn:
            return commit_batch(conn, *args)

    def process(self, batch: list[tuple[int, str, bool, int]]) -> tuple[int, int, int]:
        """Decode, extract and commit one batch: (written, lost leases, failed)."""
        from manet.catalog.batch_decode import on_device, read_batch

        size, model = self.model.config.image_size, self.model
        attempts = {image_id: tries for image_id, _, _, tries in batch}
        images = on_device(read_batch([(image_id, gallery, uri) for image_id, uri, gallery, _ in batch],
                                      size, self.max_pixels, self.batch_decode, self.limits),
                           size, self.device, self.max_pixels, self.limits)
        ids, gallery = images.ids, images.gallery
        failures = [(image_id, error, attempts[image_id]) for image_id, error in images.failures]
        try:
            vectors = self.forward(images.pixels).result()
        except (RuntimeError, ValueError) as exc:  # the model failed on this batch
            failures += [(image_id, f"model error: {exc}", attempts[image_id]) for image_id in ids]
            ids, gallery = [], []
            vectors = np.zeros((0, model.dim), dtype=np.float32)
        written, lost = self.retry(partial(self.commit, model, self.owner, ids, gallery, vectors, failures,
                                           self.max_attempts))
        return written, lost, len(failures)


def run_worker(
    db: Database,
    model: ModelRecord,
    pipeline: Any,
    *,
    device: str,
    batch_size: int = config.DEFAULT_WORKER_BATCH,
    lease_seconds: float = config.DEFAULT_LEASE_SECONDS,
    max_attempts: int = config.DEFAULT_MAX_ATTEMPTS,
    until_empty: bool = False,
    poll_seconds: float = 2.0,
    max_pixels: int | None = None,
    max_outage: float = config.DEFAULT_MAX_OUTAGE,
    device_decode: str = "auto",
    precision: str | None = None,
    limits: ReadLimits | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> WorkerReport:
    """Claim and process batches until the queue is empty (``until_empty``) or forever.

    Decoding and the forward pass are extraction's own (:mod:`manet.catalog.batch_decode`,
    :class:`manet.extract.forward.Forward`): batched JPEG decoding on the device (``device_decode``,
    auto = on CUDA), bf16 and channels_last on CUDA, a smaller chunk after running out of memory.

    A lost database connection is retried with backoff for up to ``max_outage`` seconds; a
    batch whose commit failed is committed again (the server rolled the failed one back).
    """
    from manet.extract.forward import Forward, prepare_pipeline, resolve_batch_size
    from manet.extract.run import device_decode_enabled

    if batch_size < 1 or max_attempts < 1:  # a claim of 0 images would loop forever
        raise ManetError(f"batch size {batch_size} and max attempts {max_attempts} must be at least 1")
    report = WorkerReport(worker_name())
    size = model.config.image_size
    batch_decode = device_decode_enabled(device_decode, device)
    # The claim size sets database round trips; the forward pass runs in extraction's own chunks.
    fast = prepare_pipeline(pipeline, device)
    forward = Forward(fast, device, min(batch_size, resolve_batch_size(None, fast, size, device, precision)),
                      model.dim, precision)
    step = _BatchStep(db, model, forward, report.owner, device, batch_decode, max_attempts, max_pixels,
                      max_outage, limits, say)
    retry = step.retry

    retry(lambda: enqueue(db, model))
    last_enqueue = time.monotonic()
    while True:
        batch = retry(lambda: claim(db, model, report.owner, batch_size, lease_seconds, max_attempts))
        if not batch:
            if until_empty and retry(step.remaining) == 0:
                return report
            time.sleep(poll_seconds)
            if not until_empty and time.monotonic() - last_enqueue > 30:
                retry(lambda: enqueue(db, model))  # pick up newly ingested images
                last_enqueue = time.monotonic()
            continue
        with heartbeat(db, model, report.owner, lease_seconds):
            written, lost, failed = step.process(batch)
        report.batches += 1
        report.extracted += written
        report.failed += failed
        report.lost_leases += lost
        say(f"{report.owner}: batch of {len(batch)}: {written} written, {failed} failed")

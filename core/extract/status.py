"""Extraction progress and failures of a model, and requeueing failed work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from manet.catalog.images import inspect_image
from manet.errors import ImageError
from manet.safe_files import ReadLimits
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord

# One statement, so every count comes from the same snapshot.
COUNTS = sa.text(
    f"""
    SELECT (SELECT count(*) FROM images WHERE status = 'ok') AS images,
           {descriptors.count_subquery(":m")} AS done,
           (SELECT count(*) FROM extraction_work WHERE model_id = :m AND status = 'failed') AS failed,
           (SELECT count(*) FROM extraction_work
             WHERE model_id = :m AND status = 'leased' AND lease_expires_at > now()) AS leased,
           (SELECT count(*) FROM images WHERE status = 'failed') AS ingest_failed,
           (SELECT count(*) FROM extraction_work
             WHERE model_id = :m AND status = 'done'
               AND updated_at > now() - make_interval(secs => :window)) AS recent
    """
)

#: Seconds of worker history that the rate (and ETA) is measured over.
RATE_WINDOW = 60.0


def model_status(db: Database, model: ModelRecord) -> dict[str, Any]:
    """done / pending / leased / failed image counts of ``model`` (and failed ingests)."""
    with db.begin() as conn:
        row = conn.execute(COUNTS, {"m": model.id, "window": RATE_WINDOW}).one()
    pending = max(0, row.images - row.done - row.failed - row.leased)
    rate = row.recent / RATE_WINDOW  # images/s finished by workers over the last minute
    remaining = pending + row.leased
    return {"model": model.name, "images": row.images, "done": row.done, "pending": pending,
            "leased": row.leased, "failed": row.failed, "ingest_failed": row.ingest_failed,
            "rate_per_second": round(rate, 2),
            "eta_seconds": round(remaining / rate) if rate > 0 else (0 if remaining == 0 else None)}


def failures(db: Database, model: ModelRecord | None = None) -> list[dict[str, Any]]:
    """Images that failed at ingest, and (with ``model``) at extraction, with their errors."""
    with db.begin() as conn:
        rows = [
            {"stage": "ingest", "image_id": r.id, "uri": r.uri, "attempts": 1, "error": r.error}
            for r in conn.execute(sa.text("SELECT id, uri, error FROM images WHERE status = 'failed' ORDER BY id"))
        ]
        if model is not None:
            rows += [
                {"stage": "extract", "image_id": r.image_id, "uri": r.uri, "attempts": r.attempts,
                 "error": r.last_error}
                for r in conn.execute(
                    sa.text("SELECT w.image_id, i.uri, w.attempts, w.last_error FROM extraction_work w "
                            "JOIN images i ON i.id = w.image_id WHERE w.model_id = :m AND w.status = 'failed' "
                            "ORDER BY w.image_id"),
                    {"m": model.id},
                )
            ]
    return rows


def retry_failed(db: Database, model: ModelRecord | None = None,
                 max_pixels: int | None = None, limits: ReadLimits | None = None) -> dict[str, int]:
    """Requeue failed extractions (of ``model`` or every model) and re-check failed ingests:
    an image that decodes now becomes ``ok`` and is picked up by the next extraction."""
    recovered = still_bad = 0
    with db.begin() as conn:
        for row in conn.execute(sa.text("SELECT id, uri FROM images WHERE status = 'failed'")).all():
            try:
                info = inspect_image(Path(row.uri), max_pixels=max_pixels, limits=limits)
            except ImageError as exc:
                conn.execute(sa.text("UPDATE images SET error = :e WHERE id = :i"), {"e": str(exc), "i": row.id})
                still_bad += 1
                continue
            duplicate = conn.execute(sa.text("SELECT 1 FROM images WHERE sha256 = :s"), {"s": info.sha256}).first()
            if duplicate:  # fixed by replacing it with an image already stored: nothing to add
                conn.execute(sa.text("DELETE FROM images WHERE id = :i"), {"i": row.id})
            else:
                conn.execute(
                    sa.text("UPDATE images SET status = 'ok', error = NULL, sha256 = :s, width = :w, height = :h "
                            "WHERE id = :i"),
                    {"s": info.sha256, "w": info.width, "h": info.height, "i": row.id},
                )
            recovered += 1
        where = "status = 'failed'" + (" AND model_id = :m" if model is not None else "")
        requeued = conn.execute(sa.text(f"DELETE FROM extraction_work WHERE {where}"),
                                {"m": model.id if model is not None else None}).rowcount
    return {"requeued": int(requeued), "ingest_recovered": recovered, "ingest_still_failed": still_bad}

"""Ingest: dataset records -> products, categories and images rows.

Images are validated (fully decoded) and de-duplicated by content hash; every batch commits
on its own, so a re-run skips what is already stored and a bad file is recorded with its
error instead of aborting the batch. Files are read under :class:`~manet.safe_files.ReadLimits`
(regular files only, a byte cap, a per-file time budget), outside any transaction, so a slow
or refused file never holds the database, and a crash loses at most the batch in flight.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from manet import config
from manet.catalog.images import ImageInfo, inspect_image
from manet.errors import DatasetError, ImageError
from manet.plugin_base import Dataset, Record
from manet.safe_files import ReadLimits
from manet.store.database import Database, with_reconnect


@dataclass
class IngestReport:
    """What one ingest run did."""

    records: int = 0
    images_added: int = 0
    products_added: int = 0
    already_present: int = 0
    duplicates: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "images_added": self.images_added,
            "products_added": self.products_added,
            "already_present": self.already_present,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "failures": [{"image": uri, "error": error} for uri, error in self.failures],
        }


def _batches(items: Sequence[Record], size: int) -> Iterable[Sequence[Record]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _uri(path: Path) -> str:
    """The path as text for the database; undecodable bytes of a non-UTF-8 name escaped."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def _inspect(record: Record, uri: str, max_pixels: int | None, limits: ReadLimits | None
             ) -> ImageInfo | ImageError:
    if uri != str(record.image):
        return ImageError(f"file name {uri} is not valid UTF-8; rename the file (e.g. with convmv) and ingest again")
    try:
        return inspect_image(record.image, max_pixels=max_pixels, limits=limits)
    except ImageError as exc:
        return exc


UPSERT_PRODUCT = sa.text(
    """
    INSERT INTO products (sku, title, brand, description, attributes)
    VALUES (:sku, :title, :brand, :description, CAST(:attributes AS jsonb))
    ON CONFLICT (sku) DO UPDATE SET
        title = COALESCE(products.title, EXCLUDED.title),
        brand = COALESCE(products.brand, EXCLUDED.brand),
        description = COALESCE(products.description, EXCLUDED.description),
        attributes = EXCLUDED.attributes || products.attributes
    RETURNING id, (xmax = 0) AS inserted
    """
)

UPSERT_CATEGORY = sa.text(
    """
    INSERT INTO categories (name, source) VALUES (:name, 'manual')
    ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
    RETURNING id
    """
)

INSERT_IMAGE = sa.text(
    """
    INSERT INTO images (product_id, uri, sha256, width, height, domain, split, status, error)
    VALUES (:product_id, :uri, :sha256, :width, :height, :domain, :split, :status, :error)
    ON CONFLICT (sha256) DO NOTHING
    RETURNING id
    """
)


def _existing_uris(conn: sa.Connection, uris: list[str]) -> set[str]:
    rows = conn.execute(sa.text("SELECT uri FROM images WHERE uri = ANY(:uris)"), {"uris": uris})
    return {row[0] for row in rows}


def _product_ids(conn: sa.Connection, records: Sequence[Record], report: IngestReport) -> dict[str, int]:
    """Upsert the products (and their categories) of ``records``; return sku -> id."""
    ids: dict[str, int] = {}
    for record in records:
        if record.sku is None or record.sku in ids:
            continue
        row = conn.execute(
            UPSERT_PRODUCT,
            {
                "sku": record.sku,
                "title": record.title,
                "brand": record.brand,
                "description": record.description,
                "attributes": json.dumps(record.attributes or {}),
            },
        ).one()
        ids[record.sku] = row.id
        report.products_added += int(row.inserted)
        if record.category:
            category_id = conn.execute(UPSERT_CATEGORY, {"name": record.category}).scalar_one()
            conn.execute(
                sa.text(
                    "INSERT INTO product_categories (product_id, category_id) VALUES (:p, :c) "
                    "ON CONFLICT DO NOTHING"
                ),
                {"p": row.id, "c": category_id},
            )
    return ids


def _store_batch(db: Database, todo: Sequence[tuple[Record, str]], infos: Sequence[ImageInfo | ImageError],
                 report: IngestReport) -> None:
    """Store one inspected batch in one transaction; ``report`` is updated only on commit.

    URIs are checked again inside the transaction: after a lost connection the batch may
    already have been committed, and must not be stored twice.
    """
    delta = IngestReport()
    with db.begin() as conn:
        present = _existing_uris(conn, [uri for _, uri in todo])
        pending = [(item, info) for item, info in zip(todo, infos, strict=True) if item[1] not in present]
        delta.already_present += len(todo) - len(pending)
        products = _product_ids(conn, [record for (record, _), _ in pending], delta)
        for (record, uri), info in pending:
            ok = isinstance(info, ImageInfo)
            params = {
                "product_id": products.get(record.sku) if record.sku else None,
                "uri": uri,
                "sha256": info.sha256 if ok else None,
                "width": info.width if ok else None,
                "height": info.height if ok else None,
                "domain": record.domain,
                "split": record.split,
                "status": "ok" if ok else "failed",
                "error": None if ok else str(info),
            }
            inserted = conn.execute(INSERT_IMAGE, params).scalar()
            if not ok:
                delta.failed += 1
                delta.failures.append((uri, str(info)))
            elif inserted is None:
                delta.duplicates += 1
            else:
                delta.images_added += 1
    for name in ("images_added", "products_added", "already_present", "duplicates", "failed"):
        setattr(report, name, getattr(report, name) + getattr(delta, name))
    report.failures.extend(delta.failures)


def _todo(db: Database, batch: Sequence[Record]) -> list[tuple[Record, str]]:
    """(record, uri) of the records in ``batch`` not stored yet."""
    uris = [_uri(record.image) for record in batch]
    with db.begin() as conn:
        present = _existing_uris(conn, uris)
    return [(record, uri) for record, uri in zip(batch, uris, strict=True) if uri not in present]


def ingest_records(
    db: Database,
    records: Sequence[Record],
    *,
    batch_size: int = config.DEFAULT_INGEST_BATCH,
    max_pixels: int | None = None,
    limits: ReadLimits | None = None,
    progress: bool = False,
    max_outage: float = config.DEFAULT_MAX_OUTAGE,
    say: Callable[[str], None] | None = None,
) -> IngestReport:
    """Store ``records`` batch by batch; safe to re-run, and it waits out database outages
    (retrying a batch with backoff for up to ``max_outage`` seconds, telling ``say``). ``limits``
    caps the bytes and seconds each file may take; a file over them is recorded as failed."""
    from tqdm import tqdm

    report = IngestReport(records=len(records))
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(records), desc="ingest", unit="img", disable=not progress
    ) as bar:
        def tell(message: str) -> None:
            if progress:
                bar.write(message)  # above the bar, not through it
            elif say is not None:
                say(message)

        for batch in _batches(records, batch_size):
            todo = with_reconnect(partial(_todo, db, batch), max_outage=max_outage, say=tell)
            report.already_present += len(batch) - len(todo)
            # Files are read with no transaction open; they are read once even if the store is retried.
            infos = list(pool.map(lambda item: _inspect(*item, max_pixels, limits), todo))
            # A batch is one transaction: after an outage it is simply run again.
            with_reconnect(partial(_store_batch, db, todo, infos, report), max_outage=max_outage, say=tell)
            bar.update(len(batch))
    return report


def ingest(
    db: Database,
    dataset: Dataset,
    path: Path,
    *,
    batch_size: int = config.DEFAULT_INGEST_BATCH,
    max_pixels: int | None = None,
    limits: ReadLimits | None = None,
    progress: bool = False,
    max_outage: float = config.DEFAULT_MAX_OUTAGE,
    say: Callable[[str], None] | None = None,
) -> IngestReport:
    """Read every record of ``dataset`` at ``path`` first (a malformed file stores nothing),
    then store them (see :func:`ingest_records`)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; check the path and try again")
    records = list(dataset.records(path))
    return ingest_records(db, records, batch_size=batch_size, max_pixels=max_pixels, limits=limits,
                          progress=progress, max_outage=max_outage, say=say)

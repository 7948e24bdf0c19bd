"""Ingest: dataset records -> products, categories and images rows.

Images are validated (fully decoded) and de-duplicated by content hash; every batch commits
on its own, so a re-run skips what is already stored and a bad file is recorded with its
error instead of aborting the batch. A re-run also brings the catalogue up to date: product
fields the dataset changed are updated (:mod:`manet.catalog.upsert`), a file changed at a
stored path is hashed again and replaces the old image row (whose descriptors go with it), and
with ``sync`` what the dataset stored and no longer lists is removed (:mod:`manet.catalog.sync`). Each
image row records its ``source``, the dataset it came from (:func:`dataset_source`); a re-ingest
adopts the rows at its paths stored before sources were recorded. Files are read under :class:`~manet.safe_files.ReadLimits`
(regular files only, a byte cap, a per-file time budget), outside any transaction, so a slow
or refused file never holds the database, and a crash loses at most the batch in flight.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from manet import config
from manet.catalog.images import ImageInfo, inspect_image
from manet.catalog.removal import Removal, any_of
from manet.catalog.sync import dataset_root, dataset_source, sync_catalogue
from manet.catalog.upsert import store_products
from manet.errors import DatasetError, ImageError, ManetError
from manet.plugin_base import Dataset, Record
from manet.safe_files import CHUNK_BYTES, ReadLimits, open_limited
from manet.store.database import Database, with_reconnect
from manet.store.events import record_events
from manet.store.schema import images


@dataclass
class IngestReport:
    """What one ingest run did."""

    records: int = 0
    images_added: int = 0
    products_added: int = 0
    #: Stored products whose fields the dataset changed (``product.update`` events say how).
    products_updated: int = 0
    #: Images whose file changed at the same path: a new row, the old one (and its descriptors) gone.
    images_replaced: int = 0
    #: Images moved to another product (the dataset gives another SKU for the same file).
    images_moved: int = 0
    #: Stored images without a source (from before sources were recorded) that this dataset
    #: lists: now recorded as its own, so that its sync may remove them.
    images_adopted: int = 0
    already_present: int = 0
    duplicates: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: With sync: what was removed (with a dry run: what would be).
    removed: Removal | None = None

    def as_dict(self) -> dict:
        return {
            "records": self.records,
            "images_added": self.images_added,
            "products_added": self.products_added,
            "products_updated": self.products_updated,
            "images_replaced": self.images_replaced,
            "images_moved": self.images_moved,
            "images_adopted": self.images_adopted,
            "already_present": self.already_present,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "failures": [{"image": uri, "error": error} for uri, error in self.failures],
            **({"removed": self.removed.as_dict()} if self.removed is not None else {}),
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


INSERT_IMAGE = sa.text(
    """
    INSERT INTO images (product_id, uri, sha256, width, height, domain, split, status, error, source)
    VALUES (:product_id, :uri, :sha256, :width, :height, :domain, :split, :status, :error, :source)
    ON CONFLICT (sha256) DO NOTHING
    RETURNING id
    """
)


@dataclass(frozen=True)
class Stored:
    """An image row already stored at a record's path."""

    id: int
    sha256: str | None
    status: str
    product_id: int | None


#: (record, its uri, the ``ok`` row stored at that uri or None): one image to check or store.
Item = tuple[Record, str, "Stored | None"]
#: What reading an item found: a new or changed file's info or error, or None (unchanged).
Found = ImageInfo | ImageError | None


def _stored(conn: sa.Connection, uris: list[str]) -> dict[str, list[Stored]]:
    rows = conn.execute(sa.select(images.c.uri, images.c.id, images.c.sha256, images.c.status,
                                  images.c.product_id).where(images.c.uri.in_(uris)))
    found: dict[str, list[Stored]] = {}
    for uri, *fields in rows:
        found.setdefault(uri, []).append(Stored(*fields))
    return found


def _todo(db: Database, batch: Sequence[Record]) -> list[Item]:
    """The records of ``batch`` to read: new paths, and paths stored as ``ok`` (their file may
    have changed). A path stored as failed is left to ``manet retry --failed``."""
    uris = [_uri(record.image) for record in batch]
    with db.begin() as conn:
        stored = _stored(conn, uris)
    items: list[Item] = []
    for record, uri in zip(batch, uris, strict=True):
        rows = stored.get(uri, [])
        ok = [row for row in rows if row.status == "ok"]
        if not rows or ok:
            items.append((record, uri, ok[0] if ok else None))
    return items


def _file_sha256(path: Path, limits: ReadLimits | None) -> str | ImageError:
    """SHA-256 of the file, or why it cannot be read now (reported; what is stored is kept)."""
    try:
        with open_limited(path, limits) as reader:
            digest = hashlib.sha256()
            while chunk := reader.read(CHUNK_BYTES):
                digest.update(chunk)
    except ManetError as exc:
        return exc if isinstance(exc, ImageError) else ImageError(str(exc))
    except OSError as exc:
        return ImageError(f"image {path} cannot be read: {exc.strerror or exc}; check the file or remove it "
                          f"from the dataset")
    return digest.hexdigest()


def _read(item: Item, max_pixels: int | None, limits: ReadLimits | None) -> Found:
    """A new file is inspected; a stored one is hashed, and inspected only if it changed (one
    that cannot be read is an error: reported, and the stored image kept)."""
    record, uri, stored = item
    if stored is not None:
        digest = _file_sha256(record.image, limits)
        if isinstance(digest, ImageError):
            return digest
        if digest == stored.sha256:
            return None
    return _inspect(record, uri, max_pixels, limits)


def _image_params(record: Record, uri: str, info: ImageInfo | ImageError, product_id: int | None,
                  source: str | None) -> dict[str, object]:
    ok = isinstance(info, ImageInfo)
    return {"product_id": product_id, "uri": uri, "sha256": info.sha256 if ok else None,
            "width": info.width if ok else None, "height": info.height if ok else None,
            "domain": record.domain, "split": record.split, "status": "ok" if ok else "failed",
            "error": None if ok else str(info), "source": source}


def _adopt(conn: sa.Connection, uris: list[str], source: str | None) -> int:
    """Record ``source`` on the rows at ``uris`` that have none (stored before sources were
    recorded); rows another dataset stored keep their source."""
    if source is None or not uris:
        return 0
    adopted = conn.execute(images.update().where(any_of(images.c.uri, uris, sa.Text), images.c.source.is_(None))
                           .values(source=source))
    return adopted.rowcount


def _keep(conn: sa.Connection, item: Item, product_id: int | None, delta: IngestReport,
          events: list[dict]) -> None:
    """An unchanged file: only its product may have changed (another SKU in the dataset)."""
    record, uri, old = item
    delta.already_present += 1
    if old is not None and product_id is not None and old.product_id != product_id:
        conn.execute(images.update().where(images.c.id == old.id).values(product_id=product_id))
        delta.images_moved += 1
        events.append({"action": "image.move", "image_id": old.id, "product_id": product_id, "sku": record.sku,
                       "details": {"uri": uri, "old_product_id": old.product_id}})


def _replace(conn: sa.Connection, item: Item, new_id: int | None, info: ImageInfo, rows: list[Stored],
             delta: IngestReport, events: list[dict]) -> None:
    """The file at a stored path changed: the old row goes (its descriptors cascade with it)."""
    record, uri, old = item
    assert old is not None
    if old.id in {row.id for row in rows}:
        conn.execute(images.delete().where(images.c.id == old.id))
    change = {"uri": uri, "old_image_id": old.id, "old_sha256": old.sha256, "new_sha256": info.sha256}
    if new_id is None:  # the new content is already stored as another image: no row of its own
        delta.duplicates += 1
        events.append({"action": "image.delete", "image_id": old.id, "product_id": old.product_id,
                       "sku": record.sku, "details": {**change, "reason": "file changed to a duplicate"}})
        return
    delta.images_replaced += 1
    events.append({"action": "image.replace", "image_id": new_id, "product_id": old.product_id,
                   "sku": record.sku, "details": change})


def _store_item(conn: sa.Connection, item: Item, info: Found, product_id: int | None, rows: list[Stored],
                delta: IngestReport, events: list[dict], source: str | None) -> None:
    record, uri, old = item
    if info is None:
        _keep(conn, item, product_id, delta, events)
        return
    ok = isinstance(info, ImageInfo)
    # Stored meanwhile: a batch retried after a lost connection, or a concurrent ingest.
    if (old is None and rows) or (ok and any(row.sha256 == info.sha256 for row in rows)):
        delta.already_present += 1
        return
    if not ok:
        delta.failed += 1
        delta.failures.append((uri, str(info)))
        if old is not None:  # a changed file that cannot be read: the stored image stays
            return
    new_id = conn.execute(INSERT_IMAGE, _image_params(record, uri, info, product_id, source)).scalar()
    if old is not None:
        _replace(conn, item, new_id, info, rows, delta, events)
    elif ok and new_id is None:
        delta.duplicates += 1
    elif ok:
        delta.images_added += 1


def _store_batch(db: Database, batch: Sequence[Record], items: Sequence[Item], found: Sequence[Found],
                 report: IngestReport, source: str | None = None) -> None:
    """Store one read batch in one transaction, new rows with ``source``; ``report`` is
    updated only on commit.

    Paths are checked again inside the transaction: after a lost connection the batch may
    already have been committed, and must not be stored twice. Then every row at the batch's
    paths without a source (an unchanged, moved or failed image stored before sources were
    recorded) is adopted: given ``source``.
    """
    delta = IngestReport()
    with db.begin() as conn:
        rows = _stored(conn, [uri for _, uri, _ in items])
        products = store_products(conn, batch, delta)
        events: list[dict] = []
        for item, info in zip(items, found, strict=True):
            record, uri, _ = item
            _store_item(conn, item, info, products.get(record.sku) if record.sku else None, rows.get(uri, []),
                        delta, events, source)
        delta.images_adopted = _adopt(conn, list(dict.fromkeys(_uri(record.image) for record in batch)), source)
        record_events(conn, events)
    for name in ("images_added", "products_added", "products_updated", "images_replaced", "images_moved",
                 "images_adopted", "already_present", "duplicates", "failed"):
        setattr(report, name, getattr(report, name) + getattr(delta, name))
    report.failures.extend(delta.failures)


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
    source: str | None = None,
) -> IngestReport:
    """Store ``records`` batch by batch; safe to re-run, and it waits out database outages
    (retrying a batch with backoff for up to ``max_outage`` seconds, telling ``say``). ``limits``
    caps the bytes and seconds each file may take; a file over them is recorded as failed.
    ``source`` (see :func:`~manet.catalog.sync.dataset_source`) is recorded on the images stored,
    and on those stored without one at the records' paths (None: rows stay without a source)."""
    if batch_size < 1:  # range() refuses 0, and a negative size would store nothing and say done
        raise ManetError(f"batch size {batch_size} is out of range; use at least 1 image per transaction")
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
            found = list(pool.map(lambda item: _read(item, max_pixels, limits), todo))
            # A batch is one transaction: after an outage it is simply run again.
            with_reconnect(partial(_store_batch, db, batch, todo, found, report, source), max_outage=max_outage,
                           say=tell)
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
    sync: bool = False,
    dry_run: bool = False,
    confirm: Callable[[Removal], None] | None = None,
) -> IngestReport:
    """Read every record of ``dataset`` at ``path`` first (a malformed file stores nothing),
    then store them (see :func:`ingest_records`).

    Every image stored is recorded as the dataset's (``kind:/resolved/path``, see
    :func:`~manet.catalog.sync.dataset_source`). With ``sync``, what the dataset stored before
    and no longer lists is then removed (see :mod:`manet.catalog.sync`); ``confirm`` is
    shown the planned removal first and raises to stop before anything changes. ``dry_run``
    (with ``sync``) stores and removes nothing: ``report.removed`` says what would go.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; check the path and try again")
    if dry_run and not sync:
        raise ManetError("a dry run shows what a sync would remove; add --sync")
    records = list(dataset.records(path))
    source = dataset_source(dataset.name, path)
    plan = None
    if sync:
        root = dataset_root(path)
        uris, skus = {_uri(record.image) for record in records}, {record.sku for record in records if record.sku}
        plan = sync_catalogue(db, source, root, uris, skus, dry_run=True)
        if dry_run:
            return IngestReport(records=len(records), removed=plan)
        if confirm is not None and (plan.products or plan.images):
            confirm(plan)
    report = ingest_records(db, records, batch_size=batch_size, max_pixels=max_pixels, limits=limits,
                            progress=progress, max_outage=max_outage, say=say, source=source)
    if plan is not None:
        report.removed = sync_catalogue(db, source, root, uris, skus, only=plan)
    return report

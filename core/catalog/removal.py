"""Removing products and images: by SKU, by image id, or what a dataset no longer lists (sync).

Each removal is one transaction: a product goes with all its images (catalogue and query
photos), an image with its descriptors, extraction work, evaluation results and training-set
rows (they cascade from ``images``), and every removed row is recorded as a ``product.delete``
or ``image.delete`` event. A search is one statement, so it sees the catalogue either before
the commit or after it, never half of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from manet.errors import ManetError, NotFoundError
from manet.safe_files import ReadLimits, open_limited, read_limited
from manet.store.database import Database
from manet.store.events import record_events
from manet.store.schema import images, products

#: Bytes a file of SKUs may have (a million SKUs of 60 characters).
MAX_SKU_FILE_BYTES = 64 * 1024 * 1024
#: The largest image id (``images.id`` is a bigint).
MAX_IMAGE_ID = 2**63 - 1
#: Characters of one SKU shown in a message.
SHOWN_SKU_CHARS = 80


@dataclass
class Removal:
    """What a removal deleted (or, with ``dry_run``, would delete)."""

    products: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    #: SKUs or image ids asked for that do not exist (skipped with ``ignore_missing``).
    missing: list[Any] = field(default_factory=list)
    dry_run: bool = False
    #: A sync's: images under the dataset's folder (``root``) that it does not list and that have
    #: no source (stored before sources were recorded): left alone (None: not a sync).
    unsourced: int | None = None
    root: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "products_deleted": len(self.products), "images_deleted": len(self.images),
                "products": self.products, "images": self.images, "missing": self.missing,
                **({"unsourced_left": self.unsourced} if self.unsourced is not None else {})}

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return f"{verb} {len(self.products)} products and {len(self.images)} images (with their descriptors)"

    def unsourced_note(self) -> str | None:
        """A sync's word on the images without a source it left alone (None when there are none)."""
        if not self.unsourced:
            return None
        verb = "would leave" if self.dry_run else "left"
        return (f"sync {verb} alone {self.unsourced} images under {self.root} that this dataset does not list and "
                f"that were stored without a source (before sources were recorded), so may belong to another "
                f"dataset; to let sync manage them, ingest each dataset that lists them once (without --sync: it "
                f"adopts the images it lists), and delete the rest with: manet images delete ID... "
                f"(SELECT id, uri FROM images WHERE source IS NULL)")


def unique(values: Iterable[Any]) -> list[Any]:
    """``values`` without repeats, in their first order."""
    return list(dict.fromkeys(values))


def any_of(column: sa.ColumnElement[Any], values: Iterable[Any], item_type: Any) -> sa.ColumnElement[bool]:
    """``column = ANY(:values)``: one array parameter however many values (an IN list takes one
    parameter per value, and PostgreSQL's protocol caps a statement at 65,535)."""
    return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(item_type)))


def show_sku(sku: str) -> str:
    """``sku`` for a message: quoted when blank or padded with spaces, cut when very long."""
    shown = sku if len(sku) <= SHOWN_SKU_CHARS else f"{sku[:SHOWN_SKU_CHARS]}... ({len(sku)} characters)"
    return shown if sku and sku == sku.strip() and sku.isprintable() else repr(shown)


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def check_skus(skus: Iterable[Any]) -> list[str]:
    """The SKUs as text without repeats; an empty one or one with a NUL byte is refused."""
    skus = unique(str(sku) for sku in skus)
    for sku in skus:
        if not sku.strip():
            raise ManetError(f"an empty SKU ({sku!r}) was given; name each product by its SKU, or drop the "
                             f"empty argument or line")
        if "\0" in sku:
            raise ManetError(f"SKU {show_sku(sku.replace(chr(0), '?'))} holds a NUL byte, which no SKU can; "
                             f"check the SKU list (is it a binary file?)")
    return skus


def check_image_ids(image_ids: Iterable[Any]) -> list[int]:
    """The image ids as integers without repeats; one that is no integer id is refused."""
    ids = []
    for image_id in image_ids:
        try:
            value = int(image_id)
        except (TypeError, ValueError):
            raise ManetError(f"image id {image_id!r} is not a whole number; give image ids "
                             f"(SELECT id, uri FROM images)") from None
        if not 1 <= value <= MAX_IMAGE_ID:
            raise ManetError(f"image id {value} is out of range (ids are 1 to {MAX_IMAGE_ID}); give image ids "
                             f"(SELECT id, uri FROM images)")
        ids.append(value)
    return unique(ids)


def read_skus(path: Path) -> list[str]:
    """The SKUs of a text file, one a line (surrounding spaces, blank lines and ``#`` comments
    skipped), read under a byte cap; a file that is not UTF-8 text is refused."""
    limits = ReadLimits(max_bytes=MAX_SKU_FILE_BYTES,
                        too_big_fix="split it into files of at most 64 MiB and delete them one by one")
    with open_limited(path, limits, what="SKU file", error=ManetError) as reader:
        data = read_limited(reader)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManetError(f"SKU file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ManetError(f"SKU file {path} holds a NUL byte on line {line}, so it is no text file; give a "
                         f"UTF-8 text file with one SKU a line")
    lines = (line.strip() for line in text.splitlines())
    return unique(line for line in lines if line and not line.startswith("#"))


def product_rows(conn: sa.Connection, where: sa.ColumnElement[bool], *, lock: bool) -> list[dict[str, Any]]:
    """id, sku and title of the products matching ``where`` (locked when ``lock``)."""
    query = sa.select(products.c.id, products.c.sku, products.c.title).where(where).order_by(products.c.id)
    if lock:
        query = query.with_for_update()
    return [dict(row) for row in conn.execute(query).mappings()]


def image_rows(conn: sa.Connection, *, image_ids: Sequence[int] = (), product_ids: Sequence[int] = (),
                lock: bool) -> list[dict[str, Any]]:
    """id, uri, product id and SKU of the images with these ids or of these products (locked when
    ``lock``)."""
    query = (sa.select(images.c.id, images.c.uri, images.c.product_id, products.c.sku)
             .select_from(images.outerjoin(products, products.c.id == images.c.product_id))
             .where(sa.or_(any_of(images.c.id, image_ids, sa.BigInteger),
                           any_of(images.c.product_id, product_ids, sa.BigInteger)))
             .order_by(images.c.id))
    if lock:
        query = query.with_for_update(of=images)
    return [dict(row) for row in conn.execute(query).mappings()]


def remove_rows(conn: sa.Connection, doomed_products: list[dict[str, Any]], doomed_images: list[dict[str, Any]],
                reason: str) -> None:
    """Delete these images and products (inside ``conn``'s transaction) and record why."""
    image_ids = [row["id"] for row in doomed_images]
    product_ids = [row["id"] for row in doomed_products]
    if image_ids:  # first: products.id is ON DELETE SET NULL on images, which would keep them
        conn.execute(images.delete().where(any_of(images.c.id, image_ids, sa.BigInteger)))
    if product_ids:
        conn.execute(products.delete().where(any_of(products.c.id, product_ids, sa.BigInteger)))
    per_product: dict[int, int] = {}
    for row in doomed_images:
        per_product[row["product_id"]] = per_product.get(row["product_id"], 0) + 1
    record_events(conn, [  # in the order of the deletes: a product's images, then the product
        *({"action": "image.delete", "image_id": row["id"], "product_id": row["product_id"], "sku": row["sku"],
           "details": {"reason": reason, "uri": row["uri"]}} for row in doomed_images),
        *({"action": "product.delete", "product_id": row["id"], "sku": row["sku"],
           "details": {"reason": reason, "title": row["title"], "images": per_product.get(row["id"], 0)}}
          for row in doomed_products),
    ])


def delete_products(db: Database, skus: Sequence[str], *, ignore_missing: bool = False, dry_run: bool = False,
                    reason: str = "delete") -> Removal:
    """Delete the products ``skus`` with all their images, in one transaction. An unknown SKU
    deletes nothing (a NotFoundError names it) unless ``ignore_missing``; ``dry_run`` only says
    what would go."""
    skus = check_skus(skus)
    if not skus:
        raise ManetError("no SKU given; name the products to delete (or --from-file FILE)")
    with db.begin() as conn:
        found = product_rows(conn, any_of(products.c.sku, skus, sa.Text), lock=not dry_run)
        known = {row["sku"] for row in found}
        missing = [sku for sku in skus if sku not in known]
        if missing and not ignore_missing:
            raise NotFoundError(f"unknown SKU {_listed([show_sku(sku) for sku in missing])}; nothing was deleted: check the SKUs, or pass "
                                f"--ignore-missing to delete the others")
        pictures = image_rows(conn, product_ids=[row["id"] for row in found], lock=not dry_run)
        if not dry_run:
            remove_rows(conn, found, pictures, reason)
    return Removal(found, pictures, missing, dry_run)


def delete_images(db: Database, image_ids: Sequence[int], *, ignore_missing: bool = False,
                  dry_run: bool = False, reason: str = "delete") -> Removal:
    """Delete the images ``image_ids`` (their products stay), in one transaction; an unknown id
    deletes nothing unless ``ignore_missing``; ``dry_run`` only says what would go."""
    ids = check_image_ids(image_ids)
    if not ids:
        raise ManetError("no image id given; name the images to delete")
    with db.begin() as conn:
        rows = image_rows(conn, image_ids=ids, lock=not dry_run)
        known = {row["id"] for row in rows}
        missing = [image_id for image_id in ids if image_id not in known]
        if missing and not ignore_missing:
            raise NotFoundError(f"unknown image id {_listed([str(image_id) for image_id in missing])}; nothing was deleted: check the ids (SELECT id, uri "
                                f"FROM images), or pass --ignore-missing to delete the others")
        if not dry_run:
            remove_rows(conn, [], rows, reason)
    return Removal([], rows, missing, dry_run)


"""Reading one catalogue row back: a product by SKU with its categories and images, an image's
stored file. Used by the search service (:mod:`manet.serve`) through :class:`manet.Retriever`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from manet.errors import NotFoundError
from manet.store.database import Database


def product_by_sku(db: Database, sku: str) -> dict[str, Any]:
    """The product ``sku`` (title, brand, description, attributes), its category names and its
    images (id, domain, split, size, status, uri); :class:`NotFoundError` when there is none."""
    with db.begin() as conn:
        row = conn.execute(sa.text("SELECT id, sku, title, brand, description, attributes FROM products "
                                   "WHERE sku = :sku"), {"sku": sku}).mappings().first()
        if row is None:
            raise NotFoundError(f"product {sku!r} does not exist; the SKUs are those search results name")
        categories = conn.execute(sa.text(
            "SELECT c.name FROM product_categories pc JOIN categories c ON c.id = pc.category_id "
            "WHERE pc.product_id = :p ORDER BY c.name"), {"p": row["id"]}).scalars().all()
        images = conn.execute(sa.text(
            "SELECT id, domain, split, width, height, status, uri FROM images WHERE product_id = :p "
            "ORDER BY domain, id"), {"p": row["id"]}).mappings().all()
    return {**dict(row), "categories": list(categories), "images": [dict(image) for image in images]}


def image_file(db: Database, image_id: int) -> tuple[str, str | None]:
    """The stored file (uri) and content hash of image ``image_id``; :class:`NotFoundError`
    when the database has no such image."""
    with db.begin() as conn:
        row = conn.execute(sa.text("SELECT uri, sha256 FROM images WHERE id = :i"), {"i": int(image_id)}).first()
    if row is None:
        raise NotFoundError(f"image {image_id} does not exist; image ids are those search results name")
    return row.uri, row.sha256

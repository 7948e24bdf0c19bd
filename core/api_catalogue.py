"""The catalogue-changes part of :class:`manet.Retriever`: deletions, sync and history.

A base class of Retriever (its methods read ``self.db``), kept apart so that api.py stays one
screenful per stage. Updates on re-ingest and sync are options of ``Retriever.ingest``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from manet.catalog.removal import Removal
    from manet.store.database import Database


class CatalogueChanges:
    """Delete products and images, sync the catalogue with a manifest, read its history."""

    db: "Database"

    def delete_products(self, skus: Sequence[str], *, ignore_missing: bool = False,
                        dry_run: bool = False) -> "Removal":
        """Delete products by SKU with all their images and descriptors, in one transaction; an
        unknown SKU deletes nothing unless ``ignore_missing`` (see
        :func:`manet.catalog.removal.delete_products`)."""
        from manet.catalog.removal import delete_products

        return delete_products(self.db, skus, ignore_missing=ignore_missing, dry_run=dry_run)

    def delete_images(self, image_ids: Sequence[int], *, ignore_missing: bool = False,
                      dry_run: bool = False) -> "Removal":
        """Delete images by id with their descriptors (their products stay), in one transaction."""
        from manet.catalog.removal import delete_images

        return delete_images(self.db, image_ids, ignore_missing=ignore_missing, dry_run=dry_run)

    def history(self, *, sku: str | None = None, image_id: int | None = None, model_id: int | None = None,
                action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ``limit`` recorded changes (oldest first): who, when, what; filtered by
        product SKU, image id (also an image replaced by another), model id or action."""
        from manet.store.events import read_events

        with self.db.begin() as conn:
            return read_events(conn, sku=sku, image_id=image_id, model_id=model_id, action=action, limit=limit)

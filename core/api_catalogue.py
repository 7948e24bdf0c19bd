"""The catalogue-changes part of :class:`manet.Retriever`: deletions, sync and history.

A base class of Retriever (its methods read ``self.db``), kept apart so that api.py stays one
screenful per stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from manet.store.database import Database


class CatalogueChanges:
    """Delete products and images, sync the catalogue with a manifest, read its history."""

    db: "Database"

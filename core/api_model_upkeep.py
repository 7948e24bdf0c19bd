"""The model-upkeep part of :class:`manet.Retriever`: model aliases and index upkeep.

A base class of Retriever (its methods read ``self.db``), kept apart so that api.py stays one
screenful per stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from manet.store.database import Database


class ModelUpkeep:
    """Point aliases (``production``) at models; report and rebuild the per-model indexes."""

    db: "Database"

"""The training-data part of :class:`manet.Retriever`: mined categories and training sets.

A base class of Retriever (its methods read ``self.db``), kept apart so that api.py stays one
screenful per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from manet.store.database import Database


class TrainingData:
    """Categories (TF-IDF keywords or a manual column) and balanced training sets."""

    db: "Database"

    def categories(self, source: str | None = None) -> list[dict[str, Any]]:
        """Each category (or those of ``source``: tfidf or manual) with its products and images."""
        from manet.catalog.categories import list_categories

        return list_categories(self.db, source)

    def mine_categories(self, top: int, min_images: int = 1, *,
                        keywords: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """TF-IDF category keywords over product text (or ``keywords``), replacing the mined ones
        (see :func:`manet.catalog.categories.mine_categories`)."""
        from manet.catalog.categories import mine_categories

        return mine_categories(self.db, top, min_images, keywords=keywords)

    def categories_from_column(self, column: str) -> list[dict[str, Any]]:
        """Manual categories from the manifest's category column or a product attribute."""
        from manet.catalog.categories import categories_from_column

        return categories_from_column(self.db, column)

    def has_training_set(self, name: str) -> bool:
        from manet.catalog.trainset import training_set_exists

        return training_set_exists(self.db, name)

    def build_training_set(self, name: str = "default", **options: Any) -> dict[str, Any]:
        """Sample a balanced training set (options: see :func:`manet.catalog.trainset.build_training_set`)."""
        from manet.catalog.trainset import build_training_set

        return build_training_set(self.db, name=name, **options)

    def training_set(self, name: str = "default") -> dict[str, Any]:
        """Counts per split and per category of training set ``name``."""
        from manet.catalog.trainset import show_training_set

        return show_training_set(self.db, name)

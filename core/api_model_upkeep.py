"""The model-upkeep part of :class:`manet.Retriever`: model aliases and index upkeep.

A base class of Retriever (its methods read ``self.db``), kept apart so that api.py stays one
screenful per stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manet import config

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from manet.store.database import Database
    from manet.store.models import ModelRecord


class ModelUpkeep:
    """Point aliases (``production``) at models; report and rebuild the per-model indexes."""

    db: "Database"
    progress: bool
    #: Retriever.model: a record by model name or alias.
    model: "Callable[[str], ModelRecord]"

    def alias_model(self, alias: str, model: str) -> dict[str, Any]:
        """Point ``alias`` at model ``model``, creating or re-pointing it in one transaction; every
        command, ``manet serve`` and ``manet_search`` accept the alias where they take a model name
        (see :func:`manet.store.aliases.set_alias`)."""
        from manet.store.aliases import set_alias

        return set_alias(self.db, alias, model)

    def unalias_model(self, alias: str) -> dict[str, Any]:
        """Remove ``alias``; the model it pointed at stays."""
        from manet.store.aliases import remove_alias

        return remove_alias(self.db, alias)

    def aliases(self) -> list[dict[str, Any]]:
        """Every alias with its model (``alias``, ``model``, ``model_id``, ``updated_at``)."""
        from manet.store.aliases import list_aliases

        return list_aliases(self.db)

    def index_status(self, model: str | None = None) -> list[dict[str, Any]]:
        """The index of ``model`` (a name or an alias), else of every model: rows, size, validity,
        dead tuples, last build (see :func:`manet.search.index_upkeep.index_status`)."""
        from manet.search.index_upkeep import index_status
        from manet.store.models import list_models

        names = [model] if model is not None else [row["name"] for row in list_models(self.db)]
        return [index_status(self.db, self.model(name)) for name in names]

    def build_category_indexes(self, model: str, *, categories: list[str] | None = None,
                               min_rows: int | None = None, m: int = config.DEFAULT_CATEGORY_HNSW_M,
                               ef_construction: int = config.DEFAULT_CATEGORY_EF_CONSTRUCTION,
                               maintenance_work_mem: str | None = None) -> list[Any]:
        """Give large categories their own HNSW graph: the ``categories`` named, else every category
        with more than ``min_rows`` catalogue descriptors (default
        :data:`manet.config.DEFAULT_CATEGORY_INDEX_MIN_ROWS`), of degree ``m``; see :func:`manet.search.category_index.build_category_indexes`."""
        from manet.search.category_index import build_category_indexes

        return build_category_indexes(self.db, self.model(model), categories=categories, min_rows=min_rows,
                                      m=m, ef_construction=ef_construction,
                                      maintenance_work_mem=maintenance_work_mem, progress=self.progress)

    def rebuild_index(self, model: str, *, concurrently: bool = True,
                      maintenance_work_mem: str | None = None) -> dict[str, Any]:
        """REINDEX the model's HNSW index (``concurrently``: searches keep running); see
        :func:`manet.search.index_upkeep.rebuild_index`."""
        from manet.search.index_upkeep import rebuild_index

        return rebuild_index(self.db, self.model(model), concurrently=concurrently,
                             maintenance_work_mem=maintenance_work_mem,
                             progress=self.progress)

"""Built-in re-rankers and catalogue augmenter: thin wrappers around :mod:`manet.search.reranking`.

The re-rankers ``aqe`` and ``alpha-qe`` re-score a search shortlist with an expanded query. The
catalogue augmenter ``dba`` changes the catalogue instead: evaluation applies it to the gallery
it ranks, and ``manet models augment`` stores an augmented copy of a model's catalogue for SQL
search.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from manet.errors import PluginError
from manet.hookspecs import Register, hookimpl
from manet.plugin_base import CatalogueAugmenter, Plugin, Reranker


def _check_ranges(plugin: Plugin) -> None:
    """Refuse ``top_n < 1`` and ``alpha < 0`` where the plugin has them."""
    label = f"{plugin.kind.replace('_', ' ')} '{plugin.name}'"
    if plugin.params.get("top_n", 1) < 1:
        raise PluginError(f"{label}: top_n={plugin.params['top_n']} must be at least 1")
    if plugin.params.get("alpha", 0.0) < 0:
        raise PluginError(f"{label}: alpha={plugin.params['alpha']} must be 0 or more")


class _Validated(Reranker):
    """Checks ``top_n >= 1`` and ``alpha >= 0`` where the plugin has them."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_ranges(self)


class AverageQueryExpansion(_Validated):
    name = "aqe"
    description = "Average query expansion: re-score the shortlist with L2(query + its top_n candidates)."
    defaults: ClassVar[dict[str, Any]] = {"top_n": 3}

    def rerank(self, query: np.ndarray, candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
        from manet.search.reranking import query_expansion_scores

        return query_expansion_scores(query, candidates, scores, self.params["top_n"], 0.0)


class AlphaQueryExpansion(_Validated):
    name = "alpha-qe"
    description = "alpha-QE: query expansion with the top_n candidates weighted by similarity**alpha."
    defaults: ClassVar[dict[str, Any]] = {"top_n": 10, "alpha": 3.0}

    def rerank(self, query: np.ndarray, candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
        from manet.search.reranking import query_expansion_scores

        return query_expansion_scores(query, candidates, scores, self.params["top_n"], self.params["alpha"])


class DatabaseSideAugmentation(CatalogueAugmenter):
    name = "dba"
    description = ("Database-side augmentation: each catalogue descriptor becomes L2(itself + its top_n "
                   "catalogue neighbours weighted by similarity**alpha).")
    defaults: ClassVar[dict[str, Any]] = {"top_n": 3, "alpha": 3.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        _check_ranges(self)

    def augment(self, gallery: np.ndarray) -> np.ndarray:
        """The augmented catalogue (N, D) -> (N, D)."""
        from manet.search.reranking import database_side_augmentation

        return database_side_augmentation(gallery, self.params["top_n"], self.params["alpha"])


@hookimpl
def register_rerankers(register: Register) -> None:
    for cls in (AverageQueryExpansion, AlphaQueryExpansion):
        register(cls)


@hookimpl
def register_catalogue_augmenters(register: Register) -> None:
    register(DatabaseSideAugmentation)

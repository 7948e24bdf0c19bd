"""Re-ranking math (pure numpy), the plugin ``--rerank NAME`` names, and applying a re-ranker
plugin to a shortlist.

Query expansion (Chum et al. 2007; alpha-QE: Radenović et al. 2018) builds a new query from
the query and its best-scoring candidates and re-scores the shortlist with it. Database-side
augmentation (DBA; Arandjelović & Zisserman 2012, weighted as in Radenović et al.) replaces each
catalogue descriptor by the weighted mean of itself and its nearest catalogue neighbours; it
changes the catalogue, not the query, so it runs once over the whole catalogue.
All descriptors are L2-normalised and compared by inner product.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from manet.plugin_base import CatalogueAugmenter, Reranker
    from manet.plugin_manager import Registry

#: Catalogue rows per similarity block in :func:`database_side_augmentation` (bounds memory).
AUGMENT_CHUNK = 1024

#: The plugin kinds ``--rerank NAME`` picks from: a shortlist re-ranker, or a catalogue augmenter
#: (eval augments its gallery; ``manet models augment`` stores an augmented model).
RERANK_KINDS = ("reranker", "catalogue_augmenter")


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def expansion_weights(scores: np.ndarray, top_n: int, alpha: float) -> np.ndarray:
    """Weights of the shortlist in the expanded query: ``max(score, 0) ** alpha`` for the
    ``top_n`` best scores (ties: earlier first), 0 for the rest. ``alpha = 0`` gives 1 each (AQE)."""
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.zeros_like(scores)
    best = np.argsort(-scores, kind="stable")[: max(0, int(top_n))]
    weights[best] = np.maximum(scores[best], 0.0) ** float(alpha)
    return weights


def expand_query(query: np.ndarray, candidates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``L2(query + sum_i weights[i] * candidates[i])``: (D,), (k, D), (k,) -> (D,), the query
    itself counting with weight 1."""
    query = np.asarray(query, dtype=np.float64)
    expanded = query + np.asarray(weights, dtype=np.float64) @ np.asarray(candidates, dtype=np.float64)
    return _l2(expanded).astype(np.float32)


def query_expansion_scores(query: np.ndarray, candidates: np.ndarray, scores: np.ndarray, top_n: int,
                           alpha: float) -> np.ndarray:
    """New shortlist scores: the candidates' inner products with the expanded query."""
    expanded = expand_query(query, candidates, expansion_weights(scores, top_n, alpha))
    return np.asarray(candidates, dtype=np.float32) @ expanded


def database_side_augmentation(gallery: np.ndarray, top_n: int, alpha: float,
                               chunk: int = AUGMENT_CHUNK) -> np.ndarray:
    """Each row replaced by ``L2(row + sum_j max(s_j, 0) ** alpha * neighbour_j)`` over its
    ``top_n`` most similar other rows (similarity ``s_j`` by inner product).

    Exact neighbours by blocks of ``chunk`` rows: time O(N^2 D), memory O(chunk N).
    """
    gallery = np.asarray(gallery, dtype=np.float32)
    rows = gallery.shape[0]
    top_n = min(int(top_n), rows - 1)
    if top_n <= 0:
        return gallery.copy()
    out = np.empty_like(gallery)
    for start in range(0, rows, chunk):
        block = gallery[start : start + chunk]
        similarity = block @ gallery.T
        own = np.arange(start, start + block.shape[0])
        similarity[np.arange(block.shape[0]), own] = -np.inf  # a row is not its own neighbour
        neighbours = np.argpartition(-similarity, top_n - 1, axis=1)[:, :top_n]
        weights = np.maximum(np.take_along_axis(similarity, neighbours, axis=1), 0.0) ** float(alpha)
        augmented = block.astype(np.float64) + np.einsum("bn,bnd->bd", weights, gallery[neighbours])
        out[start : start + block.shape[0]] = _l2(augmented)
    return out


def rerank_plugin(registry: Registry, name: str,
                  params: Mapping[str, Any] | None = None) -> Reranker | CatalogueAugmenter:
    """The plugin ``--rerank NAME`` names, created with ``params``: a re-ranker or a catalogue
    augmenter. An unknown name lists the names of both kinds."""
    kind = registry.find(RERANK_KINDS, name).kind
    if kind == "catalogue_augmenter":
        return registry.create("catalogue_augmenter", name, **(params or {}))
    return registry.create("reranker", name, **(params or {}))


def rerank_shortlist(reranker: Reranker, query: np.ndarray, candidates: np.ndarray,
                     scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply a re-ranker plugin to one shortlist: (positions of the shortlist in the new order,
    the new scores by shortlist position). Ties keep the shortlist's order."""
    new_scores = np.asarray(reranker.rerank(np.asarray(query, dtype=np.float32),
                                            np.asarray(candidates, dtype=np.float32),
                                            np.asarray(scores, dtype=np.float32)), dtype=np.float32)
    return np.argsort(-new_scores, kind="stable"), new_scores

"""Re-rank a SQL search's shortlist with a re-ranker plugin, on the candidates' stored descriptors.

The shortlist comes from the model's index through :func:`manet.search.query.search_vector` (filters
included); only the shortlist's descriptors are read back, so the cost is one extra indexed
lookup plus the re-ranker's arithmetic on ``shortlist x dim`` numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from manet.errors import ManetError
from manet.plugin_base import CatalogueAugmenter, Reranker
from manet.search.query import Hit
from manet.search.reranking import rerank_shortlist
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord


def check_query_reranker(plugin: Reranker | CatalogueAugmenter, k: int, shortlist: int) -> Reranker:
    """``plugin`` as a search's re-ranker; one-line errors for a catalogue augmenter (it cannot
    re-rank a search) or a shortlist shorter than k."""
    if not isinstance(plugin, Reranker):
        raise ManetError(
            f"catalogue augmenter '{plugin.name}' augments the catalogue, not a query: make an augmented "
            f"model with manet models augment BASE --name NEW --rerank {plugin.name}, and search NEW"
        )
    if not k <= shortlist <= 1000:
        raise ManetError(f"--shortlist {shortlist} is out of range; use k ({k}) to 1000")
    return plugin


def _stored_vectors(db: Database, model: ModelRecord, image_ids: Sequence[int]) -> dict[int, np.ndarray]:
    if not image_ids:
        return {}
    with db.raw() as conn:  # binary vectors: parsing 100 vectors from text would cost more than the search
        return descriptors.read_vectors(conn, model.id, image_ids)


def candidate_descriptors(db: Database, model: ModelRecord, image_ids: Sequence[int]) -> np.ndarray:
    """The stored descriptors of ``image_ids`` under ``model``, in that order."""
    if not image_ids:
        return np.zeros((0, model.dim), np.float32)
    by_id = _stored_vectors(db, model, image_ids)
    return np.stack([by_id[int(i)] for i in image_ids])


def rerank_hits(db: Database, model: ModelRecord, query: np.ndarray, hits: Sequence[Hit], reranker: Reranker,
                k: int) -> list[Hit]:
    """The top ``k`` of ``hits`` (a shortlist) re-ranked by ``reranker``, with the new scores."""
    by_id = _stored_vectors(db, model, [hit.image_id for hit in hits])
    # A second statement: an image deleted since the shortlist was read has lost its descriptor,
    # and is dropped rather than returned (or failing the search).
    hits = [hit for hit in hits if int(hit.image_id) in by_id]
    if not hits:
        return []
    candidates = np.stack([by_id[int(hit.image_id)] for hit in hits])
    scores = np.array([hit.score for hit in hits], dtype=np.float32)
    permutation, new_scores = rerank_shortlist(reranker, query, candidates, scores)
    return [replace(hits[position], rank=rank, score=float(new_scores[position]))
            for rank, position in enumerate(permutation[:k], start=1)]

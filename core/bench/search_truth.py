"""Exact ground truth and recall of ``manet bench search``, and the layout of its scratch
catalogue (pure: numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The depth of every search and of recall: the project's top 7.
K = 7
#: Catalogue images per product in the scratch catalogue.
IMAGES_PER_PRODUCT = 4


def merge_top_k(scores_a: np.ndarray, ids_a: np.ndarray, scores_b: np.ndarray, ids_b: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` highest scores (and their ids) of two candidate sets, best first.

    ``scores_*`` are (queries, m) arrays; ``ids_b`` may be one (m,) row shared by all queries.
    """
    scores = np.concatenate([scores_a, scores_b], axis=1)
    ids = np.concatenate([ids_a, np.broadcast_to(ids_b, scores_b.shape)], axis=1)
    if scores.shape[1] > k:
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


class RunningTopK:
    """Exact top-``k`` by inner product of fixed queries over rows that arrive in chunks."""

    def __init__(self, queries: np.ndarray, k: int = K) -> None:
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids):
            self.scores, self.ids = merge_top_k(self.scores, self.ids, self.queries @ vectors.T, ids, self.k)


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (a missing row counts as a miss)."""
    hits = [len(set(list(f)[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def category_members(product_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Whether each product (ids from 1) is in the filter category: an evenly spaced
    ``fraction`` of all ids, so any prefix of the catalogue holds that fraction."""
    ids = np.asarray(product_ids, dtype=np.float64)
    return np.floor(ids * fraction) != np.floor((ids - 1) * fraction)


def filtered_rows(n: int, fraction: float) -> int:
    """Gallery rows in the filter category when ``n`` rows are loaded."""
    products = np.arange(1, (n - 1) // IMAGES_PER_PRODUCT + 2)
    images = np.minimum(IMAGES_PER_PRODUCT, n - (products - 1) * IMAGES_PER_PRODUCT)
    return int(images[category_members(products, fraction)].sum())

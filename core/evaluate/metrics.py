"""Retrieval metrics (pure numpy): AP@k / MAP@k, full-ranking AP, recall@k (hit rate).

Conventions used throughout:

* A *ranking* is a boolean vector ``relevance`` where ``relevance[i]`` says whether the item
  ranked at position ``i + 1`` is relevant to the query.
* ``n_relevant`` is the size of the query's relevant set G in the whole gallery. It can be
  larger than the number of True values when a ranking is truncated.
* AP is computed from the (1-based) positions ``p_1 < p_2 < ...`` of the relevant items:
  at the j-th hit the precision is ``P(p_j) = j / p_j``, so
  ``sum_{i<=k} P(i) * rel(i) = sum_{p_j <= k} j / p_j``. This needs only the positions of
  True values, never a dense cumulative sum, so (Q, N) inputs with N ~ 1e5 stay cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from manet import config

__all__ = [
    "NORMALISERS",
    "average_precision",
    "average_precision_at_k",
    "PairedDifference",
    "evaluate_rankings",
    "paired_difference",
    "ranked_relevance",
    "recall_at_k",
]

#: "min": divide by min(|G|, k) (the Perfect-500K challenge's MAP@7);
#: "hits": divide by the number of relevant items found in the top k (some challenge code).
NORMALISERS = ("min", "hits")

BoolLike = Sequence[bool] | Sequence[int] | npt.NDArray[Any]


def _check_normaliser(normaliser: str) -> None:
    if normaliser not in NORMALISERS:
        raise ValueError(f"unknown normaliser {normaliser!r}; expected one of {NORMALISERS}")


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _as_bool_vector(relevance: BoolLike) -> npt.NDArray[np.bool_]:
    rel = np.asarray(relevance).astype(bool, copy=False)
    if rel.ndim != 1:
        raise ValueError(f"relevance must be 1-D, got shape {rel.shape}")
    return rel


def _hit_stats(
    relevance: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per-row sums from the positions of True values in a (Q, N) ranked relevance matrix.

    Returns ``(prec_sum_all, prec_sum_k, hits_k, first_hit)``: the sum of P(p_j) over all
    hits, the same over hits within the top k, the number of hits within the top k, and the
    1-based position of the first hit (N + 1 when there is none).
    """
    q, n = relevance.shape
    rows, cols = np.nonzero(relevance)  # row-major order: hits of a row are contiguous, ascending
    counts = np.bincount(rows, minlength=q)
    starts = np.cumsum(counts) - counts  # index of each row's first hit in rows/cols
    j = np.arange(rows.size, dtype=np.float64) - starts[rows] + 1.0  # rank of the hit within its row
    precision = j / (cols + 1.0)
    in_k = cols < k
    prec_all = np.bincount(rows, weights=precision, minlength=q)
    prec_k = np.bincount(rows, weights=precision * in_k, minlength=q)
    hits_k = np.bincount(rows, weights=in_k.astype(np.float64), minlength=q)
    first_hit = np.full(q, n + 1, dtype=np.int64)
    has_hit = counts > 0
    first_hit[has_hit] = cols[starts[has_hit]] + 1
    return prec_all, prec_k, hits_k, first_hit


def _safe_divide(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def average_precision_at_k(
    relevance: BoolLike, n_relevant: int, k: int = config.DEFAULT_K, normaliser: str = "min"
) -> float:
    """AP@k = (1/Z) * sum_{i<=k} P(i) * rel(i) for one ranked list.

    ``relevance`` holds at least the top k (extra positions are ignored; a shorter list,
    e.g. a gallery smaller than k, counts missing positions as not relevant).
    ``normaliser="min"``: Z = min(n_relevant, k) (the challenge's MAP@7);
    ``normaliser="hits"``: Z = number of relevant items in the top k.
    Returns 0.0 when Z == 0. Raises ValueError for an unknown normaliser.
    """
    _check_normaliser(normaliser)
    _check_k(k)
    rel = _as_bool_vector(relevance)[:k]
    _, prec_k, hits_k, _ = _hit_stats(rel[None, :], k)
    z = float(min(n_relevant, k)) if normaliser == "min" else float(hits_k[0])
    return float(prec_k[0] / z) if z > 0 else 0.0


def average_precision(relevance: BoolLike, n_relevant: int) -> float:
    """AP over the full ranking: sum over all positions of P(i) * rel(i), divided by n_relevant.

    Relevant items missing from ``relevance`` (truncated ranking) contribute 0.
    Returns 0.0 when n_relevant == 0.
    """
    rel = _as_bool_vector(relevance)
    if n_relevant <= 0:
        return 0.0
    prec_all, _, _, _ = _hit_stats(rel[None, :], 1)
    return float(prec_all[0] / n_relevant)


def recall_at_k(relevance: BoolLike, k: int) -> float:
    """Hit rate at k: 1.0 if any of the top k is relevant, else 0.0.

    This is the "recall@k" of product-retrieval papers (did a correct product show up in the
    top k), not the fraction of the relevant set retrieved.
    """
    _check_k(k)
    rel = _as_bool_vector(relevance)
    return 1.0 if bool(rel[:k].any()) else 0.0


def descending_order(similarity: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Gallery indices of each row of a (Q, N) similarity by descending similarity; ties keep
    ascending index (argsort of -x ascending with a stable sort == x descending)."""
    return np.argsort(-np.asarray(similarity), axis=1, kind="stable")


def ranked_relevance(
    similarity: npt.ArrayLike, query_labels: npt.ArrayLike, gallery_labels: npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """Rank a (Q, N) similarity matrix and mark which ranked gallery items match each query.

    Gallery items are ordered by descending similarity; ties keep ascending gallery index
    (stable sort), so results do not depend on the sort implementation. Returns a (Q, N)
    bool array where True means ``gallery_labels[rank] == query_labels[q]``.
    """
    sim = np.asarray(similarity)
    q_labels = np.asarray(query_labels)
    g_labels = np.asarray(gallery_labels)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be (Q, N), got shape {sim.shape}")
    q, n = sim.shape
    if q_labels.shape != (q,) or g_labels.shape != (n,):
        raise ValueError(
            f"labels do not match similarity {sim.shape}: query {q_labels.shape}, gallery {g_labels.shape}"
        )
    out = np.empty((q, n), dtype=bool)
    # Chunk the rows so the int64 argsort buffer stays ~<= 256 MB even for Q=10k, N=100k.
    step = max(1, (32 * 1024 * 1024) // max(n, 1))
    for start in range(0, q, step):
        stop = min(q, start + step)
        out[start:stop] = g_labels[descending_order(sim[start:stop])] == q_labels[start:stop, None]
    return out


def evaluate_rankings(
    relevance: npt.ArrayLike, n_relevant: npt.ArrayLike, k: int = config.DEFAULT_K, normaliser: str = "min"
) -> dict[str, Any]:
    """Aggregate metrics over Q ranked queries.

    ``relevance``: (Q, N) bool, ranked; ``n_relevant``: (Q,) sizes of the relevant sets.
    Returns ``{"map@<k>", "map", "recall@1", "recall@5", "recall@7", "queries", "normaliser",
    "per_query"}``; ``per_query`` is a list of dicts with plain floats
    ``{"ap@k", "ap", "hit@1", "hit@5", "hit@7"}``. "map" is full-ranking mAP (always divided by
    n_relevant); the normaliser applies to AP@k only and is echoed so numbers stay labelled.
    Means over zero queries are 0.0.
    """
    _check_normaliser(normaliser)
    _check_k(k)
    rel = np.asarray(relevance)
    if rel.dtype != np.bool_:
        rel = rel.astype(bool)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be (Q, N), got shape {rel.shape}")
    q = rel.shape[0]
    n_rel = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if n_rel.shape != (q,):
        raise ValueError(f"n_relevant must have shape ({q},), got {n_rel.shape}")

    prec_all, prec_k, hits_k, first_hit = _hit_stats(rel, k)
    z = np.minimum(n_rel, k) if normaliser == "min" else hits_k
    ap_k = _safe_divide(prec_k, z)
    ap = _safe_divide(prec_all, n_rel)
    hits = {c: (first_hit <= c).astype(np.float64) for c in (1, 5, 7)}

    def mean(x: npt.NDArray[np.float64]) -> float:
        return float(x.mean()) if x.size else 0.0

    per_query = [
        {"ap@k": a, "ap": b, "hit@1": h1, "hit@5": h5, "hit@7": h7}
        for a, b, h1, h5, h7 in zip(
            ap_k.tolist(), ap.tolist(), hits[1].tolist(), hits[5].tolist(), hits[7].tolist(), strict=True
        )
    ]
    return {
        f"map@{k}": mean(ap_k),
        "map": mean(ap),
        "recall@1": mean(hits[1]),
        "recall@5": mean(hits[5]),
        "recall@7": mean(hits[7]),
        "queries": int(q),
        "normaliser": normaliser,
        "per_query": per_query,
    }


class PairedDifference(NamedTuple):
    """``mean(a) - mean(b)`` over paired per-query scores, with a bootstrap interval."""

    difference: float
    low: float
    high: float
    queries: int
    confidence: float


def paired_difference(a: npt.ArrayLike, b: npt.ArrayLike, *, confidence: float = 0.95,
                      resamples: int = 10_000, seed: int = 0) -> PairedDifference:
    """How much pipeline ``a`` beats ``b`` on the same queries (``a[i]`` and ``b[i]`` are one
    query's scores, e.g. AP@k), with a percentile bootstrap interval over the queries.

    Resampling the per-query differences (a paired bootstrap; Sakai, "Evaluating evaluation
    metrics based on the bootstrap", SIGIR 2006) says how far the difference of the two means
    could move with another sample of queries of the same kind. It does not cover what a
    training seed changes: that needs several trainings. Seeded, so a table prints the same
    interval twice.
    """
    from scipy.stats import bootstrap

    left, right = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    if left.shape != right.shape:
        raise ValueError(f"paired scores need the same queries, got {left.size} and {right.size}")
    if not left.size:
        raise ValueError("paired_difference needs at least one query")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = left - right
    mean = float(diff.mean())
    if diff.size < 2 or np.all(diff == diff[0]):  # every resample has the same mean
        return PairedDifference(mean, mean, mean, int(diff.size), confidence)
    interval = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=resamples,
                         method="percentile", vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return PairedDifference(mean, float(interval.low), float(interval.high), int(diff.size), confidence)

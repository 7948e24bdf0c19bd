"""Retrieval evaluation: queries with a known product against the catalogue gallery.

The ranking is exact (inner product over every stored gallery descriptor), so the figure
measures the descriptors, not the approximate index; runs are stored in ``eval_runs``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.errors import ManetError
from manet.evaluate.metrics import descending_order, evaluate_rankings
from manet.store import descriptors
from manet.store.database import Database, as_array
from manet.store.models import ModelRecord

QUERY_CHUNK = 1024


@dataclass
class EvalResult:
    model: str
    split: str | None
    k: int
    normaliser: str
    metrics: dict[str, float]
    queries: int
    run_id: int | None = None
    skipped_queries: int = 0
    #: The re-ranker applied (name, params, shortlist) and its cost, or None.
    reranker: dict[str, Any] | None = None
    #: Milliseconds per query of the exact ranking and of the re-ranking; seconds of a catalogue
    #: augmentation (DBA), done once for all queries.
    timing: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics)
        out.update({"queries": self.queries, "model": self.model, "split": self.split, "k": self.k,
                    "normaliser": self.normaliser, "run_id": self.run_id,
                    "queries_without_relevant": self.skipped_queries, "reranker": self.reranker,
                    "timing": self.timing})
        return out


def _load(conn: sa.Connection, model: ModelRecord, split: str | None):
    return descriptors.labelled_gallery(conn, model.id), descriptors.labelled_queries(conn, model.id, split)


def _matrix(rows: list[Any], dim: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([as_array(row.embedding) for row in rows])


def _rerank(reranker: Any, queries: np.ndarray, gallery: np.ndarray, similarity: np.ndarray,
            order: np.ndarray, shortlist: int) -> None:
    """Re-order each query's first ``shortlist`` gallery indices in ``order`` (in place) by
    ``reranker``; the rest of the ranking keeps its exact order."""
    from manet.search.reranking import rerank_shortlist

    for row, query in enumerate(queries):
        head = order[row, :shortlist]
        permutation, _ = rerank_shortlist(reranker, query, gallery[head], similarity[row, head])
        order[row, :shortlist] = head[permutation]


def evaluate(db: Database, model: ModelRecord, *, split: str | None = None, k: int = 7,
             normaliser: str = "min", store: bool = True, reranker: Any = None,
             shortlist: int = 50, progress: bool = False) -> EvalResult:
    """MAP@k (normaliser ``min``: min(|G|, k); ``hits``: hits in the top k), mAP, recall@1/5/7.

    With ``reranker`` (a re-ranker plugin), each query's exact top ``shortlist`` is re-ranked
    before scoring; one that augments the catalogue (DBA) is applied to the gallery first.
    """
    if normaliser not in ("min", "hits"):
        raise ManetError(f"unknown normaliser '{normaliser}'; use min (the challenge's) or hits")
    if reranker is not None and not k <= shortlist <= 10_000:
        raise ManetError(f"--shortlist {shortlist} is out of range; use k ({k}) to 10000")
    with db.begin() as conn:
        gallery, queries = _load(conn, model, split)
    if not gallery:
        raise ManetError(f"model '{model.name}' has no catalogue descriptors; run: manet extract --model {model.name}")
    gallery_labels = np.array([row.product_id if row.product_id is not None else -1 for row in gallery])
    gallery_ids = np.array([row.image_id for row in gallery])
    relevant_counts = {label: count for label, count in zip(*np.unique(gallery_labels, return_counts=True))}
    usable = [row for row in queries if relevant_counts.get(row.product_id, 0) > 0]
    if not usable:
        where = f" in split '{split}'" if split else ""
        raise ManetError(
            f"no query images with a known catalogue product{where} have descriptors for model "
            f"'{model.name}'; ingest queries (domain=query, with sku) and run manet extract"
        )
    gallery_matrix = _matrix(gallery, model.dim)
    timing = {"augment_s": 0.0, "rank_ms_per_query": 0.0, "rerank_ms_per_query": 0.0}
    augmenting = reranker is not None and reranker.augments_catalogue
    if augmenting:  # the catalogue changes, the query side is the plain ranking
        started = time.perf_counter()
        gallery_matrix = reranker.augment(gallery_matrix)
        timing["augment_s"] = time.perf_counter() - started
    from tqdm import tqdm

    relevance_chunks, top_ids = [], []
    with tqdm(total=len(usable), desc=f"eval {model.name}", unit="query", disable=not progress) as bar:
        for start in range(0, len(usable), QUERY_CHUNK):
            chunk = usable[start : start + QUERY_CHUNK]
            query_matrix = _matrix(chunk, model.dim)
            started = time.perf_counter()
            similarity = query_matrix @ gallery_matrix.T
            order = descending_order(similarity)  # one sort gives both the relevance and the top k
            timing["rank_ms_per_query"] += time.perf_counter() - started
            if reranker is not None and not augmenting:
                started = time.perf_counter()
                _rerank(reranker, query_matrix, gallery_matrix, similarity, order, shortlist)
                timing["rerank_ms_per_query"] += time.perf_counter() - started
            labels = np.array([row.product_id for row in chunk])
            relevance_chunks.append(gallery_labels[order] == labels[:, None])
            top_ids.extend(gallery_ids[order[:, :k]].tolist())
            bar.update(len(chunk))
    relevance = np.concatenate(relevance_chunks)
    n_relevant = np.array([relevant_counts[row.product_id] for row in usable])
    summary = evaluate_rankings(relevance, n_relevant, k=k, normaliser=normaliser)
    per_query = summary.pop("per_query")
    metrics = {key: float(value) for key, value in summary.items() if isinstance(value, (int, float)) and key != "queries"}
    for key in ("rank_ms_per_query", "rerank_ms_per_query"):
        timing[key] = round(1000.0 * timing[key] / len(usable), 4)
    timing["augment_s"] = round(timing["augment_s"], 4)
    described = None if reranker is None else {"name": reranker.name, "params": dict(reranker.params),
                                                 "shortlist": int(shortlist)}
    result = EvalResult(model.name, split, k, normaliser, metrics, len(usable),
                        skipped_queries=len(queries) - len(usable), reranker=described, timing=timing)
    if store:
        result.run_id = _store(db, model, result, usable, per_query, top_ids, k)
    return result


def _store(db: Database, model: ModelRecord, result: EvalResult, queries: list[Any],
           per_query: list[dict[str, float]], top_ids: list[list[int]], k: int) -> int:
    with db.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO eval_runs (model_id, split, k, normaliser, queries, metrics) "
                "VALUES (:m, :s, :k, :n, :q, CAST(:metrics AS jsonb)) RETURNING id"
            ),
            {"m": model.id, "s": result.split, "k": k, "n": result.normaliser, "q": result.queries,
             "metrics": json.dumps(result.as_dict())},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO eval_results (run_id, image_id, ap_at_k, ap, hit_at_1, top_image_ids) "
                "VALUES (:r, :i, :apk, :ap, :h, :top)"
            ),
            [
                {"r": run_id, "i": row.image_id, "apk": values["ap@k"], "ap": values["ap"],
                 "h": bool(values["hit@1"]), "top": ids}
                for row, values, ids in zip(queries, per_query, top_ids)
            ],
        )
    return int(run_id)

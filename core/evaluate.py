"""Retrieval evaluation: queries with a known product against the catalogue gallery.

The ranking is exact (inner product over every stored gallery descriptor), so the figure
measures the descriptors, not the approximate index; runs are stored in ``eval_runs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.db import Database, as_array
from manet.errors import ManetError
from manet.metrics import descending_order, evaluate_rankings
from manet.models import ModelRecord

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

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.metrics)
        out.update({"queries": self.queries, "model": self.model, "split": self.split, "k": self.k,
                    "normaliser": self.normaliser, "run_id": self.run_id,
                    "queries_without_relevant": self.skipped_queries})
        return out


def _load(conn: sa.Connection, model: ModelRecord, split: str | None):
    gallery = conn.execute(
        sa.text(
            """SELECT d.image_id, i.product_id, d.embedding FROM descriptors d
               JOIN images i ON i.id = d.image_id
               WHERE d.model_id = :m AND d.gallery ORDER BY d.image_id"""
        ),
        {"m": model.id},
    ).all()
    split_sql = "" if split is None else "AND i.split = :split"
    queries = conn.execute(
        sa.text(
            f"""SELECT d.image_id, i.product_id, d.embedding FROM descriptors d
                JOIN images i ON i.id = d.image_id
                WHERE d.model_id = :m AND i.domain = 'query' AND i.product_id IS NOT NULL {split_sql}
                ORDER BY d.image_id"""
        ),
        {"m": model.id, "split": split},
    ).all()
    return gallery, queries


def _matrix(rows: list[Any], dim: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([as_array(row.embedding) for row in rows])


def evaluate(db: Database, model: ModelRecord, *, split: str | None = None, k: int = 7,
             normaliser: str = "min", store: bool = True) -> EvalResult:
    """MAP@k (normaliser ``min``: min(|G|, k); ``hits``: hits in the top k), mAP, recall@1/5/7."""
    if normaliser not in ("min", "hits"):
        raise ManetError(f"unknown normaliser '{normaliser}'; use min (the challenge's) or hits")
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
    relevance_chunks, top_ids = [], []
    for start in range(0, len(usable), QUERY_CHUNK):
        chunk = usable[start : start + QUERY_CHUNK]
        similarity = _matrix(chunk, model.dim) @ gallery_matrix.T
        labels = np.array([row.product_id for row in chunk])
        order = descending_order(similarity)  # one sort gives both the relevance and the top k
        relevance_chunks.append(gallery_labels[order] == labels[:, None])
        top_ids.extend(gallery_ids[order[:, :k]].tolist())
    relevance = np.concatenate(relevance_chunks)
    n_relevant = np.array([relevant_counts[row.product_id] for row in usable])
    summary = evaluate_rankings(relevance, n_relevant, k=k, normaliser=normaliser)
    per_query = summary.pop("per_query")
    metrics = {key: float(value) for key, value in summary.items() if isinstance(value, (int, float)) and key != "queries"}
    result = EvalResult(model.name, split, k, normaliser, metrics, len(usable),
                        skipped_queries=len(queries) - len(usable))
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

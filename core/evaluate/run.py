"""Retrieval evaluation: queries with a known product against the catalogue gallery.

The ranking is exact (inner product over every stored gallery descriptor), so the figure
measures the descriptors, not the approximate index; runs are stored in ``eval_runs``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import ManetError
from manet.evaluate.metrics import PairedDifference, descending_order, evaluate_rankings, paired_difference
from manet.plugin_base import CatalogueAugmenter, Reranker
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
    #: The re-ranker or catalogue augmenter applied (name, params, shortlist), or None.
    reranker: dict[str, Any] | None = None
    #: Milliseconds per query of the exact ranking and of the re-ranking; seconds of a catalogue
    #: augmentation (DBA), done once for all queries.
    timing: dict[str, float] | None = None
    #: AP@k of each query, by the query's image id (stored per run in ``eval_results``; pairs
    #: two runs' queries for :func:`paired_against`).
    query_ap: dict[int, float] = field(default_factory=dict, repr=False)

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


@dataclass(frozen=True)
class _Gallery:
    """The catalogue side of an evaluation: product labels (-1: none), image ids, descriptors."""

    labels: np.ndarray
    ids: np.ndarray
    matrix: np.ndarray

    def relevant_counts(self) -> dict[Any, int]:
        """Product label -> its catalogue images."""
        return {label: count for label, count in zip(*np.unique(self.labels, return_counts=True))}


def _gallery_and_queries(db: Database, model: ModelRecord, split: str | None) -> tuple[_Gallery, list[Any], int]:
    """The gallery, the queries whose product it holds, and how many queries were left out."""
    with db.begin() as conn:
        gallery, queries = _load(conn, model, split)
    if not gallery:
        raise ManetError(f"model '{model.name}' has no catalogue descriptors; run: manet extract --model {model.name}")
    labels = np.array([row.product_id if row.product_id is not None else -1 for row in gallery])
    side = _Gallery(labels, np.array([row.image_id for row in gallery]), _matrix(gallery, model.dim))
    counts = side.relevant_counts()
    usable = [row for row in queries if counts.get(row.product_id, 0) > 0]
    if not usable:
        where = f" in split '{split}'" if split else ""
        raise ManetError(
            f"no query images with a known catalogue product{where} have descriptors for model "
            f"'{model.name}'; ingest queries (domain=query, with sku) and run manet extract"
        )
    return side, usable, len(queries) - len(usable)


def _rerank(reranker: Reranker, queries: np.ndarray, gallery: np.ndarray, similarity: np.ndarray,
            order: np.ndarray, shortlist: int) -> None:
    """Re-order each query's first ``shortlist`` gallery indices in ``order`` (in place) by
    ``reranker``; the rest of the ranking keeps its exact order."""
    from manet.search.reranking import rerank_shortlist

    for row, query in enumerate(queries):
        head = order[row, :shortlist]
        permutation, _ = rerank_shortlist(reranker, query, gallery[head], similarity[row, head])
        order[row, :shortlist] = head[permutation]


def _rank(model: ModelRecord, usable: list[Any], gallery: _Gallery, k: int, reranker: Reranker | None,
          shortlist: int, progress: bool) -> tuple[np.ndarray, list[list[int]], float, float]:
    """Rank the gallery for every query, by chunks: (relevance of each ranked gallery image,
    each query's top-k image ids, seconds of exact ranking, seconds of re-ranking)."""
    from tqdm import tqdm

    relevance_chunks, top_ids, rank_s, rerank_s = [], [], 0.0, 0.0
    with tqdm(total=len(usable), desc=f"eval {model.name}", unit="query", disable=not progress) as bar:
        for start in range(0, len(usable), QUERY_CHUNK):
            chunk = usable[start : start + QUERY_CHUNK]
            query_matrix = _matrix(chunk, model.dim)
            started = time.perf_counter()
            similarity = query_matrix @ gallery.matrix.T
            order = descending_order(similarity)  # one sort gives both the relevance and the top k
            rank_s += time.perf_counter() - started
            if reranker is not None:
                started = time.perf_counter()
                _rerank(reranker, query_matrix, gallery.matrix, similarity, order, shortlist)
                rerank_s += time.perf_counter() - started
            labels = np.array([row.product_id for row in chunk])
            relevance_chunks.append(gallery.labels[order] == labels[:, None])
            top_ids.extend(gallery.ids[order[:, :k]].tolist())
            bar.update(len(chunk))
    return np.concatenate(relevance_chunks), top_ids, rank_s, rerank_s


def _check_options(normaliser: str, k: int, shortlist: int, reranker: Reranker | None,
                   augmenter: CatalogueAugmenter | None) -> Reranker | CatalogueAugmenter | None:
    """One-line errors for bad options; the re-ranking plugin (either one), or None."""
    if k < 1:  # the metrics raise a bare ValueError, a traceback at the CLI
        raise ManetError(f"k={k} is out of range; use k >= 1 (MAP@k of the top k)")
    if normaliser not in ("min", "hits"):
        raise ManetError(f"unknown normaliser '{normaliser}'; use min (the challenge's) or hits")
    if reranker is not None and augmenter is not None:
        raise ManetError("evaluate takes a reranker or a catalogue augmenter, not both; to re-rank an augmented "
                         "catalogue, make it a model (manet models augment) and evaluate that with --rerank")
    plugin = reranker if reranker is not None else augmenter
    if plugin is not None and not k <= shortlist <= 10_000:
        raise ManetError(f"--shortlist {shortlist} is out of range; use k ({k}) to 10000")
    return plugin


def evaluate(db: Database, model: ModelRecord, *, split: str | None = None, k: int = config.DEFAULT_K,
             normaliser: str = "min", store: bool = True, reranker: Reranker | None = None,
             augmenter: CatalogueAugmenter | None = None, shortlist: int = config.DEFAULT_SHORTLIST,
             progress: bool = False) -> EvalResult:
    """MAP@k (normaliser ``min``: min(|G|, k); ``hits``: hits in the top k), mAP, recall@1/5/7.

    With ``reranker`` (a re-ranker plugin), each query's exact top ``shortlist`` is re-ranked
    before scoring. With ``augmenter`` instead (a catalogue augmenter plugin, e.g. DBA), the
    gallery is augmented first and the queries rank it plainly.
    """
    plugin = _check_options(normaliser, k, shortlist, reranker, augmenter)
    gallery, usable, skipped = _gallery_and_queries(db, model, split)
    augment_s = 0.0
    if augmenter is not None:  # the catalogue changes, the query side is the plain ranking
        started = time.perf_counter()
        gallery = replace(gallery, matrix=augmenter.augment(gallery.matrix))
        augment_s = time.perf_counter() - started
    relevance, top_ids, rank_s, rerank_s = _rank(model, usable, gallery, k, reranker, shortlist, progress)
    counts = gallery.relevant_counts()
    summary = evaluate_rankings(relevance, np.array([counts[row.product_id] for row in usable]), k=k,
                                normaliser=normaliser)
    per_query = summary.pop("per_query")
    metrics = {key: float(value) for key, value in summary.items() if isinstance(value, (int, float)) and key != "queries"}
    timing = {"augment_s": round(augment_s, 4), "rank_ms_per_query": round(1000.0 * rank_s / len(usable), 4),
              "rerank_ms_per_query": round(1000.0 * rerank_s / len(usable), 4)}
    described = None if plugin is None else {"name": plugin.name, "params": dict(plugin.params),
                                               "shortlist": int(shortlist)}
    result = EvalResult(model.name, split, k, normaliser, metrics, len(usable),
                        skipped_queries=skipped, reranker=described, timing=timing,
                        query_ap={row.image_id: values["ap@k"] for row, values in zip(usable, per_query)})
    if store:
        result.run_id = _store(db, model, result, usable, per_query, top_ids, k)
    return result


def paired_against(reference: EvalResult, result: EvalResult, *, confidence: float = 0.95,
                   resamples: int = 10_000, seed: int = 0) -> PairedDifference:
    """``result``'s MAP@k minus ``reference``'s on the queries both runs ranked, with a paired
    bootstrap interval over those queries (:func:`manet.evaluate.metrics.paired_difference`)."""
    if (result.k, result.normaliser) != (reference.k, reference.normaliser):
        raise ManetError(f"'{result.model}' was scored at k={result.k} ({result.normaliser}) and "
                         f"'{reference.model}' at k={reference.k} ({reference.normaliser}); compare runs of one k and normaliser")
    shared = sorted(result.query_ap.keys() & reference.query_ap.keys())
    if not shared:
        raise ManetError(f"'{result.model}' and '{reference.model}' share no scored query; extract both for "
                         f"the same split (manet extract --model NAME --split SPLIT)")
    return paired_difference([result.query_ap[i] for i in shared], [reference.query_ap[i] for i in shared],
                             confidence=confidence, resamples=resamples, seed=seed)


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

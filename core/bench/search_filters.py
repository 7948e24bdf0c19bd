"""``manet bench search``'s filtered series: per filter selectivity, the planner's path against
forced HNSW, forced exact and raw pgvector with an iterative scan, on the same queries.

Each selectivity has its own category in the scratch catalogue (``bench-filter-<selectivity>``,
an evenly spaced fraction of the products) and its own exact top-7. The planner, forced HNSW and
raw pgvector take turns on the same queries (:func:`manet.bench.search_timing.timed_series`); forced
exact reads every matching row, so on large filters it is timed on a sample, like the unfiltered
exact scan.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from manet.bench.common import latency_summary
from manet.bench.search_load import category_name
from manet.bench.search_timing import series_figures, timed_series
from manet.bench.search_truth import K, recall_at_k
from manet.search.index import index_layout
from manet.search.query import run_search
from manet.store import descriptors, filters
from manet.store.database import Database
from manet.store.models import ModelRecord

#: Forced exact: at least this many queries, then until this budget is spent.
EXACT_MIN_QUERIES = 20
EXACT_BUDGET_S = 10.0


def _raw_filtered_sql(model: ModelRecord) -> str:
    """pgvector's README query with the category filter in its WHERE (psycopg ``%(name)s``)."""
    layout = index_layout(model)
    where = tuple(p.replace(":category", "%(category)s")
                  for p in filters.image_predicates("descriptors.image_id", category=True, brand=False))
    return descriptors.bare_top_k_sql(model.id, K, layout.distance("embedding", "%(q)s"),
                                      binary=layout.quantize == "binary", rerank_factor=layout.rerank_factor,
                                      where=where)


def _forced_exact(db: Database, model: ModelRecord, queries: np.ndarray, truth: np.ndarray, category: str
                  ) -> dict[str, Any]:
    latencies, results, spent = [], [], 0.0
    for query in queries:
        if len(latencies) >= EXACT_MIN_QUERIES and spent > EXACT_BUDGET_S:
            break
        started = time.perf_counter()
        hits = run_search(db, model, query, k=K, category=category, path="exact").hits
        latencies.append(time.perf_counter() - started)
        spent += latencies[-1]
        results.append([h.image_id for h in hits])
    summary = latency_summary(latencies)
    return {"exact_p50_ms": summary["p50_ms"], "exact_p99_ms": summary["p99_ms"], "exact_queries": len(latencies),
            "exact_recall_at_7": round(recall_at_k(results, truth[: len(results)]), 4),
            "exact_rows_min": min(len(r) for r in results)}


def filter_row(db: Database, model: ModelRecord, raw: Any, queries: np.ndarray, truth: np.ndarray,
               selectivity: float, rows: int, ef_search: int) -> dict[str, Any]:
    """The four filtered series at one selectivity (``rows`` catalogue images match)."""
    category = category_name(selectivity)
    raw.execute("SELECT set_config('hnsw.ef_search', %s, false), "
                "set_config('hnsw.iterative_scan', 'relaxed_order', false)", (str(ef_search),))
    raw_sql, paths, planner_efs = _raw_filtered_sql(model), [], []

    def planner(q: np.ndarray) -> list[int]:
        # The planner with its own defaults (ef_search by path), as `manet search` runs it.
        result = run_search(db, model, q, k=K, category=category)
        paths.append(result.plan.path)
        planner_efs.append(result.plan.ef_search)
        return [h.image_id for h in result.hits]

    timed = timed_series({
        "planner_": planner,
        "hnsw_": lambda q: [h.image_id for h in run_search(db, model, q, k=K, category=category, path="hnsw",
                                                         ef_search=ef_search).hits],
        "raw_": lambda q: [r[0] for r in raw.execute(raw_sql, {"q": q, "category": category}).fetchall()],
    }, queries)
    row: dict[str, Any] = {"selectivity": selectivity, "matching_rows": rows, "ef_search": ef_search,
                           "planner_path": max(set(paths), key=paths.count),
                           "planner_ef_search": max(set(planner_efs), key=planner_efs.count)}
    for prefix, (latencies, results) in timed.items():
        row.update(series_figures(latencies, results, truth, prefix))
    row.update(_forced_exact(db, model, queries, truth, category))
    return row


def format_filter_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The filtered table of ``manet bench search``."""
    lines = [f"{'filter':>7} {'rows':>7} {'path':>14} {'ef':>4} {'R@7':>6} {'p50':>7} {'p99':>7} | {'HNSW p50':>8} {'p99':>7} "
             f"{'R@7':>6} | {'exact p50':>9} {'p99':>7} | {'raw p50':>7} {'p99':>7} {'R@7':>6} {'min rows':>8}"]
    for r in rows:
        lines.append(
            f"{r['selectivity']:>7g} {r['matching_rows']:>7} {r['planner_path']:>14} {r['planner_ef_search'] or '-':>4} "
            f"{r['planner_recall_at_7']:>6.3f} "
            f"{r['planner_p50_ms']:>7.2f} {r['planner_p99_ms']:>7.2f} | {r['hnsw_p50_ms']:>8.2f} "
            f"{r['hnsw_p99_ms']:>7.2f} {r['hnsw_recall_at_7']:>6.3f} | {r['exact_p50_ms']:>9.2f} "
            f"{r['exact_p99_ms']:>7.2f} | {r['raw_p50_ms']:>7.2f} {r['raw_p99_ms']:>7.2f} {r['raw_recall_at_7']:>6.3f} "
            f"{r['planner_rows_min']:>8}")
    return lines

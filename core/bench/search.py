"""``manet bench search``: HNSW latency and recall@7 of the project's SQL against exact search.

Descriptors come from a ``.npy`` file (e.g. a model's real descriptors) or from
:class:`DescriptorGenerator`, and are streamed chunk by chunk into the scratch database
(products, images, a filter category, descriptors by binary COPY) while the exact top-7 of
every query is accumulated in numpy, so no stage holds more than one chunk (FAISS, when
asked for, keeps one copy). Then the model's HNSW index is built with the project's own
:func:`manet.search.index.build_index` and, for each ``ef_search``, four query series are timed one
query at a time: the project's search (:func:`manet.search.query.search_vector`, the SQL top-7
with the products join), the same with a category filter, raw pgvector (a bare
``ORDER BY ... LIMIT 7`` on the same index, session-level ``SET``, as pgvector-python's
examples do), and, once, the exact sequential scan. Recall is measured on ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from manet import config
from manet.bench.common import latency_summary, peak_rss_mb
from manet.bench.search_data import DescriptorGenerator, VectorFile
from manet.bench.search_faiss import faiss_available, faiss_series
from manet.bench.search_filters import filter_row, format_filter_rows
from manet.bench.search_load import BENCH_MODEL, Loaded, clear_scratch, load_gallery
from manet.bench.search_timing import BLOCK_QUERIES, WARMUP_QUERIES, series_figures, timed_series
from manet.bench.search_truth import K, filtered_rows, recall_at_k
from manet.errors import ManetError
from manet.search.category_index import build_category_indexes
from manet.search.index import build_index, index_layout
from manet.search.query import FILTERED_EF_SEARCH, execute_search, search_query, search_vector
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import ModelRecord, create_vector_model, get_model

#: pgvector's default hnsw.ef_search: the top-level figures are measured there.
DEFAULT_EF_SEARCH = 40
#: The exact scan is timed on a sample: at least this many queries, then until this budget is spent.
EXACT_MIN_QUERIES = 5
EXACT_BUDGET_S = 15.0
#: pgvector's vector type holds at most 16,000 dimensions.
MAX_DIM = 16000


def _raw_sql(model: ModelRecord) -> str:
    """pgvector's README query for the model's index: a bare ORDER BY ... LIMIT 7 (with the
    README's re-rank for a binary index); the partial index's predicate, no join."""
    layout = index_layout(model)
    return descriptors.bare_top_k_sql(model.id, K, layout.distance("embedding", "%(q)s"),
                                      binary=layout.quantize == "binary", rerank_factor=layout.rerank_factor)


def _psycopg(db: Database, autocommit: bool) -> Any:
    import psycopg
    from pgvector.psycopg import register_vector

    from manet.config import libpq_url

    conn = psycopg.connect(libpq_url(db.url), autocommit=autocommit)
    register_vector(conn)
    return conn


def _exact_series(db: Database, model: ModelRecord, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """The project's SQL ordered by the exact inner product, index scans off (a parallel
    sequential scan), on a time-bounded sample."""
    latencies, results, spent, applied = [], [], 0.0, {}
    with _psycopg(db, autocommit=True) as conn:
        for query in queries:
            if len(latencies) >= EXACT_MIN_QUERIES and spent > EXACT_BUDGET_S:
                break
            sql, params = search_query(model, query, k=K, exact=True)
            params["q"] = query
            started = time.perf_counter()
            rows = execute_search(conn, sql, params, {"enable_indexscan": "off", "enable_bitmapscan": "off"},
                                  applied)
            latencies.append(time.perf_counter() - started)
            spent += latencies[-1]
            results.append([row[0] for row in rows])
    summary = latency_summary(latencies)
    return {"exact_p50_ms": summary["p50_ms"], "exact_p99_ms": summary["p99_ms"], "exact_queries": len(latencies),
            "exact_recall_at_7": round(recall_at_k(results, truth[: len(results)]), 4)}


# -- the benchmark ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchBenchOptions:
    n: int | None = None
    dim: int | None = None
    queries: int = 1000
    filter_selectivity: tuple[float, ...] = (0.05,)
    #: Queries timed per filter selectivity (the first of ``queries``).
    filter_queries: int = 200
    #: ef_search of the filtered HNSW series (None: manet's default for filtered queries).
    filtered_ef_search: int | None = None
    ef_search: tuple[int, ...] = (40, 100, 200, 400)
    vectors: Path | None = None
    queries_file: Path | None = None
    intrinsic_dim: int = 64
    seed: int = 0
    m: int = 16
    ef_construction: int = 64
    quantize: str | None = None
    faiss: bool | None = None
    #: Give each filter category of more than DEFAULT_CATEGORY_INDEX_MIN_ROWS images its own HNSW index.
    category_indexes: bool = True


def _check(options: SearchBenchOptions) -> None:
    if options.queries < 1:
        raise ManetError("--queries must be at least 1")
    if not options.filter_selectivity or not all(0 < s <= 1 for s in options.filter_selectivity):
        raise ManetError("--filter-selectivity takes fractions in (0, 1], e.g. 0.001,0.01,0.05,0.2,0.5")
    if options.filter_queries < 1:
        raise ManetError("--filter-queries must be at least 1")
    if not options.ef_search or not all(1 <= ef <= 1000 for ef in options.ef_search):
        raise ManetError("--ef-search takes values between 1 and 1000, e.g. 40,100,200,400")
    if options.queries_file is not None and options.vectors is None:
        raise ManetError("--queries-file needs --vectors (generated data draws its own queries)")
    if options.faiss and not faiss_available():
        raise ManetError("--faiss needs faiss; install it with: pip install 'manet-retrieval[bench]'")


def _source(options: SearchBenchOptions) -> tuple[Any, int, int]:
    """The vector source, n and dim, checked."""
    if options.vectors is not None:
        source = VectorFile(options.vectors, options.queries, options.queries_file, options.seed)
        if options.dim is not None and options.dim != source.dim:
            raise ManetError(f"--vectors {options.vectors} has {source.dim} dimensions, not --dim {options.dim}; "
                             f"drop --dim or give a file of that dimension")
        n = source.available if options.n is None else options.n
        if n > source.available:
            raise ManetError(f"--n {n} exceeds the {source.available} gallery rows of --vectors {options.vectors}")
    else:
        source = DescriptorGenerator(options.dim or 512, options.intrinsic_dim, seed=options.seed)
        n = 100_000 if options.n is None else options.n
    if not 2 <= source.dim <= MAX_DIM:
        raise ManetError(f"descriptors have {source.dim} dimensions; pgvector stores 2..{MAX_DIM}")
    for selectivity in options.filter_selectivity:
        if filtered_rows(n, selectivity) < K:
            raise ManetError(f"--n {n} at --filter-selectivity {selectivity:g} leaves fewer than {K} "
                             f"filtered rows; raise --n or the selectivity")
    return source, n, source.dim


def _sweep_row(db: Database, model: ModelRecord, raw: Any, queries: np.ndarray, loaded: Loaded, ef: int
               ) -> dict[str, Any]:
    """The project's search and raw pgvector at one ef_search."""
    # Iterative scan on the raw session too: a binary index's re-rank asks for more rows than ef_search.
    raw.execute("SELECT set_config('hnsw.ef_search', %s, false), "
                "set_config('hnsw.iterative_scan', 'strict_order', false)", (str(ef),))
    raw_sql = _raw_sql(model)
    timed = timed_series({
        "": lambda q: [h.image_id for h in search_vector(db, model, q, k=K, ef_search=ef)],
        "raw_": lambda q: [r[0] for r in raw.execute(raw_sql, {"q": q}).fetchall()],
    }, queries)
    row: dict[str, Any] = {"ef_search": ef}
    for prefix, (latencies, results) in timed.items():
        row.update(series_figures(latencies, results, loaded.truth, prefix))
    return row


def _headline(sweep: list[dict[str, Any]], ef: int) -> dict[str, Any]:
    return next((row for row in sweep if row["ef_search"] == ef), sweep[0])


def run_search_bench(db: Database, options: SearchBenchOptions, say: Callable[[str], None] = lambda _: None
                     ) -> dict[str, Any]:
    """Load, index and query; the figures of ``manet bench search --json``."""
    _check(options)
    source, n, dim = _source(options)
    use_faiss = faiss_available() if options.faiss is None else options.faiss
    queries = source.queries(options.queries)
    clear_scratch(db)
    model = create_vector_model(db, BENCH_MODEL, dim, {"bench": source.describe()})
    try:
        say(f"loading {n} x {dim} descriptors")
        loaded = load_gallery(db, model, source.gallery(n), queries, n=n,
                              selectivities=options.filter_selectivity, keep_vectors=use_faiss)
        say("building the HNSW index")
        index = build_index(db, model, m=options.m, ef_construction=options.ef_construction,
                            quantize=options.quantize)
        model = get_model(db, BENCH_MODEL)  # now with the index options search reads
        categories = []
        if options.category_indexes:
            say("building the category indexes")
            categories = build_category_indexes(db, model)
        sweep = []
        with _psycopg(db, autocommit=True) as raw:
            for ef in options.ef_search:
                say(f"ef_search {ef}")
                sweep.append(_sweep_row(db, model, raw, queries, loaded, ef))
            filtered = []
            filter_queries = queries[: options.filter_queries]
            for selectivity in options.filter_selectivity:
                say(f"filter selectivity {selectivity:g}")
                filtered.append(filter_row(db, model, raw, filter_queries,
                                           loaded.filtered_truth[selectivity][: len(filter_queries)], selectivity,
                                           loaded.filtered_rows[selectivity],
                                           options.filtered_ef_search or FILTERED_EF_SEARCH))
        say("exact scan")
        exact = _exact_series(db, model, queries, loaded.truth)
        faiss_report = None
        if use_faiss:
            say("FAISS")
            faiss_report = faiss_series(loaded.vectors, queries, loaded.truth, list(options.ef_search), options.m,
                                  options.ef_construction)
    finally:
        clear_scratch(db)
    report = _report(options, source, loaded, index, sweep, exact, faiss_report, db.server_versions())
    report["category_indexes"] = [c.as_dict() for c in categories]
    return {**report, **_filtered_summary(filtered, report)}


def _report(options: SearchBenchOptions, source: Any, loaded: Loaded, index: Any, sweep: list[dict[str, Any]],
            exact: dict[str, Any], faiss_report: dict[str, Any] | None, versions: dict[str, Any]) -> dict[str, Any]:
    headline = _headline(sweep, DEFAULT_EF_SEARCH)
    good = [row for row in sweep if row["recall_at_7"] >= 0.95]
    at95 = min(good, key=lambda row: row["ef_search"]) if good else None
    compared = at95 or headline
    report = {
        "n": loaded.n, "dim": source.dim, "queries": options.queries, "k": K,
        "data": source.describe(),
        "versions": versions,
        "load_s": round(loaded.seconds, 2),
        "build_s": round(index.seconds, 2),
        "index": {key: value for key, value in index.as_dict().items() if key not in ("name", "seconds")},
        "ef_search": headline["ef_search"],
        **{key: headline[key] for key in ("p50_ms", "p95_ms", "p99_ms", "qps", "recall_at_7")},
        "sweep": sweep,
        "ef_at_recall_95": at95["ef_search"] if at95 else None,
        "p50_ms_at_recall_95": at95["p50_ms"] if at95 else None,
        "p99_ms_at_recall_95": at95["p99_ms"] if at95 else None,
        "raw_p50_ms_at_recall_95": at95["raw_p50_ms"] if at95 else None,
        **exact,
        "ratios": {
            "measured_at_ef_search": compared["ef_search"],
            "sql_over_raw": round(compared["p50_ms"] / compared["raw_p50_ms"], 3),
            "exact_over_sql": round(exact["exact_p50_ms"] / compared["p50_ms"], 1),
        },
        "warmup": f"per ef_search, the first {min(WARMUP_QUERIES, options.queries)} queries run untimed through "
                  f"the SQL and raw searches, then all {options.queries} are timed one at a time, the two "
                  f"taking turns every {BLOCK_QUERIES} queries in rotating order; per filter selectivity, the first "
                  f"{min(options.filter_queries, options.queries)} queries likewise through the planner, forced "
                  f"HNSW and raw pgvector, and forced exact on a sample; the exact scan is timed on a sample "
                  f"(>= {EXACT_MIN_QUERIES} queries, about {EXACT_BUDGET_S:.0f} s)",
        "faiss": faiss_report,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return report


def _filtered_summary(filtered: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """The filtered rows and what the acceptance compares: each selectivity's planner against the
    unfiltered p50 at the smallest ef_search reaching recall 0.95 (the headline's when none does)."""
    unfiltered = report["p50_ms_at_recall_95"] or report["p50_ms"]
    for row in filtered:
        row["planner_over_unfiltered"] = round(row["planner_p50_ms"] / unfiltered, 2)
    return {
        "filter_selectivity": [row["selectivity"] for row in filtered],
        "filtered_ef_search": filtered[0]["ef_search"],
        "filter_exact_threshold": config.DEFAULT_FILTER_EXACT_THRESHOLD,
        "filters": filtered,
        "filtered_rows_min": min(row["planner_rows_min"] for row in filtered),
        "filtered_recall_at_7": min(row["planner_recall_at_7"] for row in filtered),
        "filtered_p50_ms": max(row["planner_p50_ms"] for row in filtered),
        "filtered_over_unfiltered_max": max(row["planner_over_unfiltered"] for row in filtered),
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of ``manet bench search``."""
    data = report["data"]
    source = data["source"] if data["source"] != "generator" else (
        f"generator (intrinsic dim {data['intrinsic_dim']}, {data['clusters']} clusters, spread {data['spread']}, "
        f"noise {data['noise']}, seed {data['seed']})")
    index = report["index"]
    lines = [
        f"{report['n']} x {report['dim']} descriptors from {source}; {report['queries']} queries",
        f"PostgreSQL {report['versions']['postgresql']}, pgvector {report['versions']['pgvector']}; "
        f"load {report['load_s']} s, HNSW build {report['build_s']} s ({index['quantize']}, m={index['m']}, "
        f"ef_construction={index['ef_construction']}, maintenance_work_mem {index['maintenance_work_mem']}, "
        f"parallel workers {index['parallel_workers']}: {index['parallel_reason']})",
        *[f"category index {c['category']}: {c['rows']} rows in {c['seconds']:.1f} s"
          for c in report["category_indexes"]],
        "",
        f"{'ef':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'QPS':>8} {'R@7':>6} | {'raw p50':>8} {'raw R@7':>7}",
    ]
    for row in report["sweep"]:
        lines.append(
            f"{row['ef_search']:>5} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} {row['p99_ms']:>8.3f} "
            f"{row['qps']:>8.1f} {row['recall_at_7']:>6.3f} | {row['raw_p50_ms']:>8.3f} "
            f"{row['raw_recall_at_7']:>7.3f}")
    ratios = report["ratios"]
    lines += [
        "",
        f"exact scan: p50 {report['exact_p50_ms']} ms over {report['exact_queries']} queries "
        f"(recall {report['exact_recall_at_7']})",
        f"recall@7 >= 0.95 first at ef_search {report['ef_at_recall_95']}; at ef_search "
        f"{ratios['measured_at_ef_search']}: SQL / raw p50 = {ratios['sql_over_raw']}, "
        f"exact / SQL p50 = {ratios['exact_over_sql']}",
        "",
        f"filtered (category), ef_search {report['filtered_ef_search']} on forced HNSW and raw, exact threshold "
        f"{report['filter_exact_threshold']} rows; path and ef = the planner's (most queries, its own defaults); "
        f"min rows = the planner's:",
        *format_filter_rows(report["filters"]),
    ]
    if report["faiss"]:
        faiss = report["faiss"]
        lines.append(f"FAISS {faiss['version']} (1 search thread): flat p50 {faiss['flat']['p50_ms']} ms; "
                     f"HNSW build {faiss['hnsw_build_s']} s; " + ", ".join(
                         f"ef {row['ef_search']}: p50 {row['p50_ms']} ms R@7 {row['recall_at_7']}"
                         for row in faiss["hnsw"]))
    lines.append(f"peak RSS {report['peak_rss_mb']} MB; {report['warmup']}")
    return "\n".join(lines)

"""``manet bench index-upkeep``: what deleting part of a catalogue does to HNSW search, and what
``manet index rebuild --concurrently`` gives back, in one run on the scratch database.

N generated unit descriptors are loaded and indexed as ``manet bench search`` does
(:mod:`manet.bench.search_load`, :func:`manet.search.index.build_index`); then the project's SQL
search (:func:`manet.search.query.search_vector`) is timed one query at a time and its recall@7
measured against the exact top-7, three times: as built; after deleting a random fraction of
the catalogue images (their descriptors go with them; the graph still holds the dead entries);
and after :func:`manet.search.index_upkeep.rebuild_index` (REINDEX CONCURRENTLY). The exact
top-7 after the deletion is recomputed over the surviving rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from manet.bench.common import peak_rss_mb
from manet.bench.search_data import DescriptorGenerator
from manet.bench.search_load import BENCH_MODEL, clear_scratch, load_gallery
from manet.bench.search_timing import WARMUP_QUERIES, series_figures, timed_series
from manet.bench.search_truth import K, RunningTopK
from manet.errors import ManetError
from manet.search.index import build_index
from manet.search.index_upkeep import index_status, rebuild_index
from manet.search.query import search_vector
from manet.store.database import Database
from manet.store.models import ModelRecord, create_vector_model, get_model

#: Rows the exact top-7 over the survivors is computed on at a time.
TRUTH_CHUNK = 20_000
#: Image ids deleted per statement.
DELETE_CHUNK = 5_000


@dataclass(frozen=True)
class UpkeepBenchOptions:
    n: int = 100_000
    dim: int = 512
    queries: int = 500
    delete_fraction: float = 0.2
    ef_search: int = 40
    intrinsic_dim: int = 64
    seed: int = 0
    m: int = 16
    ef_construction: int = 64


def _check(options: UpkeepBenchOptions) -> None:
    if not 0 < options.delete_fraction < 1:
        raise ManetError(f"--delete-fraction {options.delete_fraction} must be between 0 and 1, e.g. 0.2")
    if options.n * (1 - options.delete_fraction) < 10 * K:
        raise ManetError(f"--n {options.n} leaves too few rows after deleting; raise --n")
    if not 1 <= options.ef_search <= 1000:
        raise ManetError(f"--ef-search {options.ef_search} is out of range; use 1..1000")


def _phase(db: Database, model: ModelRecord, name: str, queries: np.ndarray, truth: np.ndarray,
           ef_search: int) -> dict[str, Any]:
    """One measurement: latency and recall@7 of every query, the index's size and the dead tuples."""
    timed = timed_series({"": lambda q: [h.image_id for h in search_vector(db, model, q, k=K,
                                                                            ef_search=ef_search)]}, queries)
    latencies, results = timed[""]
    status = index_status(db, model)
    return {"phase": name, "rows": status["rows"], **series_figures(latencies, results, truth),
            "rows_min": min(len(r) for r in results), "index_size_bytes": status["size_bytes"],
            "dead_tuples": status["dead_tuples"]}


def _delete_images(db: Database, ids: np.ndarray) -> float:
    """Delete catalogue images ``ids`` (descriptors cascade) as a catalogue deletion does; seconds."""
    started = time.perf_counter()
    with db.raw() as conn:
        for start in range(0, len(ids), DELETE_CHUNK):
            conn.execute("DELETE FROM images WHERE id = ANY(%s)", [ids[start:start + DELETE_CHUNK].tolist()])
        # Count the dead tuples now rather than when this session next idles for 10 s.
        conn.execute("SELECT pg_stat_force_next_flush()")
    return time.perf_counter() - started


def _surviving_truth(vectors: np.ndarray, alive: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact top-7 of each query over the rows still stored (image id = row + 1)."""
    truth = RunningTopK(queries)
    for start in range(0, len(vectors), TRUTH_CHUNK):
        keep = alive[start:start + TRUTH_CHUNK]
        ids = np.arange(start + 1, start + len(keep) + 1, dtype=np.int64)
        truth.add(vectors[start:start + TRUTH_CHUNK][keep], ids[keep])
    return truth.ids


def run_upkeep_bench(db: Database, options: UpkeepBenchOptions, say: Callable[[str], None] = lambda _: None
                     ) -> dict[str, Any]:
    """Load, index, measure; delete, measure; rebuild concurrently, measure. The scratch database
    is left empty."""
    _check(options)
    source = DescriptorGenerator(options.dim, options.intrinsic_dim, seed=options.seed)
    queries = source.queries(options.queries)
    clear_scratch(db)
    model = create_vector_model(db, BENCH_MODEL, options.dim, {"bench": source.describe()})
    try:
        say(f"loading {options.n} x {options.dim} descriptors")
        loaded = load_gallery(db, model, source.gallery(options.n), queries, n=options.n, selectivities=(0.05,),
                              keep_vectors=True)
        say("building the HNSW index")
        built = build_index(db, model, m=options.m, ef_construction=options.ef_construction)
        model = get_model(db, BENCH_MODEL)
        phases = [_phase(db, model, "built", queries, loaded.truth, options.ef_search)]
        doomed = np.random.default_rng(options.seed).choice(
            options.n, size=int(round(options.n * options.delete_fraction)), replace=False) + 1
        say(f"deleting {len(doomed)} images")
        delete_s = _delete_images(db, np.sort(doomed))
        alive = np.ones(options.n, dtype=bool)
        alive[doomed - 1] = False
        truth = _surviving_truth(loaded.vectors, alive, queries)
        phases.append(_phase(db, model, "deleted", queries, truth, options.ef_search))
        say("REINDEX CONCURRENTLY")
        rebuilt = rebuild_index(db, model, concurrently=True)
        phases.append(_phase(db, get_model(db, BENCH_MODEL), "rebuilt", queries, truth, options.ef_search))
    finally:
        clear_scratch(db)
    return _report(options, source, loaded.seconds, built, delete_s, len(doomed), rebuilt, phases,
                   db.server_versions())


def _report(options: UpkeepBenchOptions, source: Any, load_s: float, built: Any, delete_s: float, deleted: int,
            rebuilt: dict[str, Any], phases: list[dict[str, Any]], versions: dict[str, Any]) -> dict[str, Any]:
    by = {phase["phase"]: phase for phase in phases}
    return {
        "n": options.n, "dim": options.dim, "queries": options.queries, "k": K, "ef_search": options.ef_search,
        "data": source.describe(), "versions": versions,
        "load_s": round(load_s, 2), "build_s": round(built.seconds, 2),
        "index": {"m": built.m, "ef_construction": built.ef_construction, "quantize": built.quantize,
                  "parallel_workers": built.parallel_workers, "parallel_reason": built.parallel_reason},
        "delete_fraction": options.delete_fraction, "deleted": deleted, "delete_s": round(delete_s, 2),
        "rebuild_s": rebuilt["seconds"], "rebuild_parallel_workers": rebuilt["parallel_workers"],
        "index_size_before_rebuild": rebuilt["size_bytes_before"],
        "index_size_after_rebuild": rebuilt["size_bytes_after"],
        "phases": phases,
        "ratios": {
            "p50_deleted_over_built": round(by["deleted"]["p50_ms"] / by["built"]["p50_ms"], 3),
            "p50_rebuilt_over_deleted": round(by["rebuilt"]["p50_ms"] / by["deleted"]["p50_ms"], 3),
            "size_rebuilt_over_deleted": round(rebuilt["size_bytes_after"] / rebuilt["size_bytes_before"], 3),
        },
        "warmup": f"per phase, the first {min(WARMUP_QUERIES, options.queries)} queries run untimed, then all "
                  f"{options.queries} are timed one at a time (hnsw.ef_search {options.ef_search}, iterative scan "
                  f"relaxed_order, as manet search runs them)",
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of ``manet bench index-upkeep``."""
    lines = [
        f"{report['n']} x {report['dim']} descriptors, {report['queries']} queries, ef_search {report['ef_search']}; "
        f"PostgreSQL {report['versions']['postgresql']}, pgvector {report['versions']['pgvector']}",
        f"load {report['load_s']} s, HNSW build {report['build_s']} s (m={report['index']['m']}, ef_construction="
        f"{report['index']['ef_construction']}, parallel workers {report['index']['parallel_workers']}); deleted "
        f"{report['deleted']} images ({report['delete_fraction']:.0%}) in {report['delete_s']} s; REINDEX "
        f"CONCURRENTLY {report['rebuild_s']} s",
        "",
        f"{'phase':<8} {'rows':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'R@7':>6} {'index MiB':>10} {'dead':>8}",
    ]
    for row in report["phases"]:
        lines.append(f"{row['phase']:<8} {row['rows']:>8} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} "
                     f"{row['p99_ms']:>8.3f} {row['recall_at_7']:>6.3f} {row['index_size_bytes'] / 2**20:>10.1f} "
                     f"{row['dead_tuples']:>8}")
    ratios = report["ratios"]
    lines += ["", f"p50 deleted / built = {ratios['p50_deleted_over_built']}, rebuilt / deleted = "
                  f"{ratios['p50_rebuilt_over_deleted']}; index size rebuilt / before = "
                  f"{ratios['size_rebuilt_over_deleted']}",
              f"peak RSS {report['peak_rss_mb']} MB; {report['warmup']}"]
    return "\n".join(lines)

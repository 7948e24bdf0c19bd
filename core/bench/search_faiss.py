"""FAISS on the same vectors and queries as ``manet bench search``, for comparison (optional:
``pip install 'manet-retrieval[bench]'``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from manet.bench.search_timing import series_figures, timed_series
from manet.bench.search_truth import K


def faiss_series(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, ef_values: list[int], m: int,
                 ef_construction: int) -> dict[str, Any]:
    """FAISS IndexFlatIP and IndexHNSWFlat on the same vectors, one query at a time, one thread."""
    import faiss

    def series(index: Any) -> dict[str, Any]:
        timed = timed_series({"faiss": lambda q: index.search(q[None, :], K)[1][0].tolist()}, queries)
        figures = series_figures(*timed["faiss"], truth - 1)  # faiss numbers rows from 0, the database from 1
        return {key: figures[key] for key in ("p50_ms", "p99_ms", "qps", "recall_at_7")}

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(vectors)
    build_s = time.perf_counter() - started
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        result = {"version": faiss.__version__, "build_threads": threads, "flat": series(flat),
                  "hnsw_build_s": round(build_s, 2), "hnsw": []}
        for ef in ef_values:
            hnsw.hnsw.efSearch = ef
            result["hnsw"].append({"ef_search": ef, **series(hnsw)})
    finally:
        faiss.omp_set_num_threads(threads)
    return result


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True

"""Timing query series one query at a time, and their latency and recall figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from manet.bench.common import latency_summary
from manet.bench.search_truth import recall_at_k

#: Each timed series first runs this many of its queries untimed (caches, prepared statements).
WARMUP_QUERIES = 50
#: Queries a runner times in a row before the next runner takes over.
BLOCK_QUERIES = 25

Runner = Callable[[np.ndarray], list[int]]


def timed_series(runners: dict[str, Runner], queries: np.ndarray, block: int = BLOCK_QUERIES
                 ) -> dict[str, tuple[list[float], list[list[int]]]]:
    """Latencies and result ids of every query through every runner, one query at a time.

    The runners take turns block by block (``block`` queries each), in an order that rotates
    from block to block, so load drift on a shared machine hits them alike. Not query by query:
    a runner that walks the same graph as the one before it would find that query's pages in
    the CPU caches, and one on another graph (a category's own index) never would, so the
    comparison would favour the runners that share a graph. :data:`WARMUP_QUERIES` queries go
    through every runner untimed first.
    """
    names = list(runners)
    for query in queries[:WARMUP_QUERIES]:
        for name in names:
            runners[name](query)
    timed: dict[str, tuple[list[float], list[list[int]]]] = {name: ([], []) for name in names}
    for number, start in enumerate(range(0, len(queries), block)):
        for turn in range(len(names)):
            name = names[(number + turn) % len(names)]
            for query in queries[start:start + block]:
                started = time.perf_counter()
                ids = runners[name](query)
                timed[name][0].append(time.perf_counter() - started)
                timed[name][1].append(ids)
    return timed


def series_figures(latencies: list[float], results: list[list[int]], truth: np.ndarray, prefix: str = ""
                   ) -> dict[str, Any]:
    """Latency percentiles, QPS and recall@7 of one timed series, keys prefixed with ``prefix``;
    a prefixed series also reports its shortest result list (``rows_min``)."""
    figures = {f"{prefix}{key}": value for key, value in latency_summary(latencies).items()}
    figures[f"{prefix}recall_at_7"] = round(recall_at_k(results, truth), 4)
    if prefix:
        figures[f"{prefix}rows_min"] = min(len(r) for r in results)
    return figures

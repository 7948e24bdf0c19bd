"""The filter planner: which path a filtered top-k takes (exact, HNSW, or a category's own HNSW
index) by the filter's size.

A filter that keeps few catalogue images leaves fewer descriptors than an HNSW scan visits to
find k of them: ranking those rows exactly is then both faster and exact, while pgvector's
iterative index scan, which walks the graph until k rows pass the filter, visits more and more
nodes (and loses recall) as the filter narrows. Above the threshold the graph wins.

The filter's size is counted, not estimated, in the statement that tries the exact path
(:func:`manet.store.descriptors.exact_top_k_sql`): it counts the matching products up to
``threshold + 1`` (an index-only range read), then lists the matching images, at most
``threshold + 1`` of them, so a large filter costs little to recognise; it ranks them when there
are at most ``threshold``, and otherwise the HNSW statement follows.
It needs no counts kept anywhere, so it is right however products, categories and images change.

A category that has its own HNSW index (``manet index build --by-category``,
:mod:`manet.search.category_index`) is walked there instead, at an ef_search that grows with the
index's rows (:func:`category_ef_search`): a graph of only the rows that pass costs about what an
unfiltered search of that many rows costs. With a brand as well, the count comes first, and only a
filter past the threshold walks the category's index (the brand checked as rows arrive).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from manet import config
from manet.errors import ManetError

#: What a search may be told: ``auto`` lets the planner choose; the others force a path.
PATHS = ("auto", "exact", "hnsw")


@dataclass(frozen=True)
class SearchPlan:
    """The path one search took, and why."""

    path: str  # "hnsw", "exact" or "category-index"
    filtered: bool
    #: Catalogue images that pass the filter: exact up to the threshold, else ``threshold + 1``
    #: ("more than"); None when not counted (no filter, HNSW forced, or more than the threshold in
    #: products already).
    matching: int | None
    threshold: int
    ef_search: int | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for ``manet search --explain``."""
        ef = f"ef_search {self.ef_search or 'the server default'}"
        what = {"exact": "exact scan of the filter's catalogue images",
                "category-index": f"HNSW scan of the category's own index ({ef})"
                }.get(self.path, f"HNSW index scan ({ef}{', iterative' if self.filtered else ''})")
        return f"path: {what}; {self.reason}"


def check_path(path: str, threshold: int) -> None:
    """A one-line error for an unknown path or a threshold out of range."""
    if path not in PATHS:
        raise ManetError(f"unknown search path '{path}'; use one of: {', '.join(PATHS)}")
    if not 0 <= int(threshold) <= 10_000_000:
        raise ManetError(f"filter exact threshold {threshold} is out of range; use 0..10000000")


def exact_limits(path: str, threshold: int) -> tuple[int | None, int]:
    """``(cap, threshold)`` of the exact attempt: auto counts up to one past the threshold;
    forced exact reads every matching image (no cap) and never gives up."""
    return (None, 2**31 - 1) if path == "exact" else (int(threshold) + 1, int(threshold))


def decide(path: str, matching: int | None, threshold: int, category_index_rows: int | None = None
           ) -> tuple[str, str]:
    """The path a filtered search takes once ``matching`` images were counted (None: not counted),
    and why. ``category_index_rows``: the category filtered on has its own HNSW index
    (:mod:`manet.search.category_index`) of that many rows, which the search then walks."""
    if path == "hnsw":
        return "hnsw", "HNSW forced"
    if path == "exact":
        return "exact", f"exact forced; {matching} catalogue images match the filter"
    if category_index_rows is not None and matching is None:
        return "category-index", f"the category has its own index ({category_index_rows} rows)"
    if matching is not None and matching <= threshold:
        return "exact", f"{matching} catalogue images match the filter (threshold {threshold})"
    counted = "catalogue images" if matching is not None else "products"
    if category_index_rows is not None:
        return "category-index", (f"more than {threshold} {counted} match the filter; the category has its own "
                                  f"index ({category_index_rows} rows)")
    return "hnsw", f"more than {threshold} {counted} match the filter"


def category_ef_search(rows: int) -> int:
    """ef_search for a category's own index of ``rows`` rows (the ``CATEGORY_EF_*`` rule of
    :mod:`manet.config`), between that rule's value at 1,000 rows and pgvector's 1,000."""
    wanted = config.CATEGORY_EF_AT_1000 * (max(int(rows), 1) / 1000) ** config.CATEGORY_EF_EXPONENT
    return int(min(1000, max(config.CATEGORY_EF_AT_1000, round(wanted))))


def default_threshold(threshold: int | None) -> int:
    """``threshold``, or the configured :data:`manet.config.DEFAULT_FILTER_EXACT_THRESHOLD`."""
    return config.DEFAULT_FILTER_EXACT_THRESHOLD if threshold is None else int(threshold)

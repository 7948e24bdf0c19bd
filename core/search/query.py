"""Top-k search in SQL over a model's descriptors, through its HNSW index (:mod:`manet.search.index`).

The model id, the index expression and the limits are spliced into the SQL as validated
integers so that the planner can match the model's expression + partial index (and a
prepared statement gets one generic plan); every user value (the query vector, filters) is
a bound parameter.
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import ManetError, NotFoundError
from manet.search.index import IndexLayout, index_layout
from manet.search.planner import (
    SearchPlan,
    category_ef_search,
    check_path,
    decide,
    default_threshold,
    exact_limits,
)
from manet.store import category_indexes, descriptors
from manet.store.database import Database, vector_connection
from manet.store.models import ModelRecord

#: ef_search of filtered searches on the HNSW path that set none (manet.config).
FILTERED_EF_SEARCH = config.DEFAULT_FILTERED_EF_SEARCH
#: Search statements are prepared (psycopg, after a few runs); their plan does not depend on the
#: values bound (the model id and limits are literals), so PostgreSQL need not re-plan each run to
#: compare a custom plan with the generic one: planning the joins cost more than the join itself.
GENERIC_PLANS = {"plan_cache_mode": "force_generic_plan"}


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int
    image_id: int
    product_id: int | None
    sku: str | None
    title: str | None
    brand: str | None
    score: float
    uri: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_vector(model: ModelRecord, vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != model.dim:
        raise ManetError(
            f"query vector has {vector.shape[0]} dimensions but model '{model.name}' has {model.dim}; "
            f"extract the query with the same model"
        )
    if not np.isfinite(vector).all():
        raise ManetError("query vector contains NaN or infinity")
    return vector


def _search_sql(model: ModelRecord, k: int, category: str | None, brand: str | None, exact: bool = False,
                category_index: int | None = None) -> tuple[str, dict[str, Any]]:
    """The top-``k`` SQL (query vector ``:q``) and its filter parameters."""
    if not 1 <= int(k) <= 1000:
        raise ManetError(f"k={k} is out of range; use 1..1000")
    layout = IndexLayout("none", model.dim, 1) if exact else index_layout(model)
    if category_index is not None:
        layout = layout.for_category()
    params: dict[str, Any] = {}
    if category is not None:
        params["category"] = category
    if brand is not None:
        params["brand"] = brand
    sql = descriptors.top_k_sql(model.id, k, layout.distance("d.embedding", ":q"), layout.rerank_factor,
                                category=category is not None, brand=brand is not None,
                                graph=None if category_index is None
                                else category_indexes.member_condition(category_index, "d."))
    return sql, params


def search_query(
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = config.DEFAULT_K,
    category: str | None = None,
    brand: str | None = None,
    exact: bool = False,
    category_index: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and bound parameters of a top-``k`` search (see :func:`search_vector`), for
    any SQLAlchemy connection (the vector is passed as pgvector text). ``exact`` orders by the
    float32 inner product itself: the same result shape, but no quantised index matches it.
    ``category_index`` (a category id) walks that category's own index (:mod:`manet.search.category_index`)."""
    from pgvector import Vector

    sql, params = _search_sql(model, k, category, brand, exact, category_index)
    return sql, {**params, "q": Vector(_check_vector(model, vector)).to_text()}


@functools.lru_cache(maxsize=256)
def driver_sql(sql: str) -> str:
    """``:name`` SQL (SQLAlchemy text) as psycopg ``%(name)s`` SQL."""
    from sqlalchemy.dialects.postgresql.psycopg import dialect

    return str(sa.text(sql).compile(dialect=dialect()))


def execute_search(conn: Any, sql: str, params: dict[str, Any], settings: dict[str, str | None],
                   applied: dict[str, str | None]) -> list[tuple]:
    """Run ``sql`` (``:name`` style) on an autocommit psycopg connection (pgvector types
    registered) whose session settings are first brought to ``settings`` (None: the server's
    default). ``applied`` remembers what the session already has, so a search whose settings
    did not change is one round trip; psycopg prepares the statement after a few runs."""
    for name, value in settings.items():
        if applied.get(name) != value:
            if value is None:
                conn.execute(f"RESET {name}")
            else:
                conn.execute("SELECT set_config(%s, %s, false)", (name, value))
            applied[name] = value
    return conn.execute(driver_sql(sql), params).fetchall()


@dataclass
class SearchResult:
    """A search's hits, the plan it ran, and (when asked) PostgreSQL's EXPLAIN of its statement."""

    plan: SearchPlan
    hits: list[Hit]
    explain: list[str] = field(default_factory=list)


def _hnsw_settings(ef_search: int | None, filtered: bool) -> dict[str, str | None]:
    if ef_search is None and filtered:
        ef_search = FILTERED_EF_SEARCH
    if ef_search is not None and not 1 <= int(ef_search) <= 1000:
        raise ManetError(f"ef_search={ef_search} is out of range; use 1..1000")
    # relaxed_order: the SQL re-sorts the candidates by the exact distance anyway (pgvector's
    # advice), and it measured a higher filtered recall than strict_order at the same cost.
    return {**GENERIC_PLANS, "hnsw.iterative_scan": "relaxed_order",
            "hnsw.ef_search": None if ef_search is None else str(int(ef_search))}


def _category_graph(conn: Any, model: ModelRecord, category: str) -> tuple[int, int] | None:
    """``(category id, rows)`` of the category's own valid index under ``model``, if it has one."""
    found = conn.execute(category_indexes.LOOKUP_SQL, {"model": model.id, "category": category}).fetchone()
    return None if found is None else (int(found[0]), int(found[1]))


def _run_planned(conn: Any, applied: dict[str, str | None], model: ModelRecord, vector: np.ndarray, k: int,
                 category: str | None, brand: str | None, ef_search: int | None, path: str, threshold: int,
                 explain: bool) -> SearchResult:
    """Plan and run one search on an autocommit psycopg connection (see :func:`run_search`)."""
    filtered = category is not None or brand is not None
    if path == "exact" and not filtered:
        raise ManetError("the exact path needs a filter (--category or --brand); without one, search uses HNSW")
    sql, params = _search_sql(model, k, category, brand)
    params["q"] = vector
    chosen, matching, reason, rows, graph = "hnsw", None, "no filter", None, None
    if path == "auto" and category is not None and brand is None:
        # A category with its own index is walked at once: it was built because the category is
        # large, and however its size changed since, its graph holds only rows that pass.
        graph = _category_graph(conn, model, category)
    if filtered and path != "hnsw" and graph is None:
        # One round trip: count the filter's images and, when few enough, rank them exactly. No
        # index setting matters to it, so none is sent.
        cap, limit = exact_limits(path, threshold)
        exact_sql = descriptors.exact_top_k_sql(model.id, k, category=category is not None, brand=brand is not None)
        exact_params = {**params, "cap": cap, "threshold": limit}
        found = execute_search(conn, exact_sql, exact_params, GENERIC_PLANS, applied)
        matching = found[0][0]  # NULL: past the threshold in products already
        if matching is not None and matching <= limit:
            sql, params, rows = exact_sql, exact_params, [row[1:] for row in found if row[1] is not None]
        elif path == "auto" and category is not None:  # with a brand: many match, walk the category
            graph = _category_graph(conn, model, category)
    if graph is not None:
        sql, params = _search_sql(model, k, category, brand, category_index=graph[0])
        params["q"] = vector
        if ef_search is None:
            # Only rows that pass are in this graph: it needs the candidates of an unfiltered
            # search of its size, far fewer than an iterative scan that skips the others.
            ef_search = category_ef_search(graph[1])
    if filtered:
        chosen, reason = decide(path, matching, threshold, None if graph is None else graph[1])
    settings = _hnsw_settings(ef_search, filtered)
    if rows is None:
        rows = execute_search(conn, sql, params, settings, applied)
    plan = SearchPlan(chosen, filtered, matching, threshold,
                      None if chosen == "exact" else _effective_ef(settings), reason)
    hits = [Hit(rank, image_id, product_id, sku, title, brand_, float(score), uri)
            for rank, (image_id, product_id, sku, title, brand_, uri, score) in enumerate(rows, start=1)]
    lines = [_readable(row[0]) for row in conn.execute("EXPLAIN (COSTS OFF) " + driver_sql(sql), params)
             ] if explain else []
    return SearchResult(plan, hits, lines)


def _readable(line: str) -> str:
    """An EXPLAIN line without the query vector's and the id list's literals (hundreds of numbers)."""
    line = re.sub(r"'\[[^\]]*\]'", "'[query vector]'", line)
    return re.sub(r"'\{[0-9,]*\}'", "'{matching image ids}'", line)


def _effective_ef(settings: dict[str, str | None]) -> int | None:
    value = settings.get("hnsw.ef_search")
    return None if value is None else int(value)


def run_search(
    db: Database,
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = config.DEFAULT_K,
    category: str | None = None,
    brand: str | None = None,
    ef_search: int | None = None,
    path: str = "auto",
    exact_threshold: int | None = None,
    explain: bool = False,
) -> SearchResult:
    """Top-``k`` gallery images for ``vector`` by inner product, joined with products, with the
    plan that ran (and PostgreSQL's EXPLAIN of its statement when ``explain``).

    Unfiltered: the model's HNSW index. Filtered (``category``, ``brand``, together or alone),
    the planner (:mod:`manet.search.planner`) counts the matching catalogue images up to
    ``exact_threshold`` (default :data:`manet.config.DEFAULT_FILTER_EXACT_THRESHOLD`): at most that
    many are ranked exactly; more go through the index with pgvector's iterative scan, so ``k``
    rows come back whenever ``k`` gallery images match. ``path`` ``exact`` / ``hnsw`` forces one.
    ``ef_search`` (HNSW path) defaults to the server's, or :data:`FILTERED_EF_SEARCH` with a filter.
    """
    threshold = default_threshold(exact_threshold)
    check_path(path, threshold)
    vector = _check_vector(model, vector)
    args = (model, vector, k, category, brand, ef_search, path, threshold, explain)
    try:
        return _on_search_connection(db, args)
    except Exception as exc:
        # The search pool skips the liveness ping: a connection the server dropped (restart,
        # idle timeout) fails here once, is discarded, and the search runs on a fresh one.
        if not _connection_lost(exc):
            raise
        return _on_search_connection(db, args)


def _connection_lost(exc: Exception) -> bool:
    import psycopg

    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled)


def _on_search_connection(db: Database, args: tuple) -> SearchResult:
    with db.search_engine.connect() as sa_conn:
        pooled = sa_conn.connection
        conn = vector_connection(pooled)
        # Autocommit: no BEGIN/COMMIT round trips for a read; the session settings persist on
        # this pooled connection (remembered in its info) and only changes are sent.
        conn.autocommit = True
        try:
            return _run_planned(conn, pooled.info.setdefault("search_settings", {}), *args)
        except Exception:
            if conn.closed or conn.broken:
                sa_conn.invalidate()
            raise
        finally:
            if not conn.closed:
                conn.autocommit = False


def search_vector(
    db: Database,
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = config.DEFAULT_K,
    category: str | None = None,
    brand: str | None = None,
    ef_search: int | None = None,
    path: str = "auto",
) -> list[Hit]:
    """The hits of :func:`run_search` (same arguments): what ``manet search``, the service and
    ``Retriever.search`` return."""
    return run_search(db, model, vector, k=k, category=category, brand=brand, ef_search=ef_search,
                      path=path).hits


def stored_descriptor(db: Database, model: ModelRecord, image_id: int) -> np.ndarray:
    """The stored descriptor of ``image_id`` under ``model``."""
    with db.begin() as conn:
        exists = conn.execute(sa.text("SELECT status FROM images WHERE id = :i"), {"i": int(image_id)}).first()
        if exists is None:
            raise NotFoundError(f"image {image_id} does not exist; list images with SQL: SELECT id, uri FROM images")
        vector = descriptors.read_vectors(conn, model.id, [int(image_id)]).get(int(image_id))
    if vector is None:
        raise NotFoundError(
            f"image {image_id} has no descriptor for model '{model.name}'; run: manet extract --model {model.name}"
        )
    return vector

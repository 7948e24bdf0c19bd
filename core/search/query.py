"""Top-k search in SQL over a model's descriptors, through its HNSW index (:mod:`manet.search.index`).

The model id, the index expression and the limits are spliced into the SQL as validated
integers so that the planner can match the model's expression + partial index (and a
prepared statement gets one generic plan); every user value (the query vector, filters) is
a bound parameter.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import ManetError, NotFoundError
from manet.search.index import IndexLayout, index_layout
from manet.store import descriptors
from manet.store.database import Database, vector_connection
from manet.store.models import ModelRecord

#: ef_search of filtered searches that do not set one. Filtered top-7 recall at 5 % selectivity,
#: 100K x 512 (manet bench search): 0.77 at ef_search 40, 0.91 at 400, for about twice the time.
FILTERED_EF_SEARCH = 400
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


def _search_sql(model: ModelRecord, k: int, category: str | None, brand: str | None, exact: bool = False
                ) -> tuple[str, dict[str, Any]]:
    """The top-``k`` SQL (query vector ``:q``) and its filter parameters."""
    if not 1 <= int(k) <= 1000:
        raise ManetError(f"k={k} is out of range; use 1..1000")
    layout = IndexLayout("none", model.dim, 1) if exact else index_layout(model)
    params: dict[str, Any] = {}
    if category is not None:
        params["category"] = category
    if brand is not None:
        params["brand"] = brand
    sql = descriptors.top_k_sql(model.id, k, layout.distance("d.embedding", ":q"), layout.rerank_factor,
                                category=category is not None, brand=brand is not None)
    return sql, params


def search_query(
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = config.DEFAULT_K,
    category: str | None = None,
    brand: str | None = None,
    exact: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The SQL and bound parameters of a top-``k`` search (see :func:`search_vector`), for
    any SQLAlchemy connection (the vector is passed as pgvector text). ``exact`` orders by the
    float32 inner product itself: the same result shape, but no quantised index matches it."""
    from pgvector import Vector

    sql, params = _search_sql(model, k, category, brand, exact)
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


def search_vector(
    db: Database,
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = config.DEFAULT_K,
    category: str | None = None,
    brand: str | None = None,
    ef_search: int | None = None,
) -> list[Hit]:
    """Top-``k`` gallery images for ``vector`` by inner product, joined with products.

    Filters run inside the index scan's ORDER BY ... LIMIT with pgvector's iterative scan, so
    ``k`` rows come back whenever ``k`` gallery images match. ``ef_search`` defaults to the
    server's (pgvector: 40), or to :data:`FILTERED_EF_SEARCH` when a filter is given.
    """
    sql, params = _search_sql(model, k, category, brand)
    params["q"] = _check_vector(model, vector)
    if ef_search is None and (category is not None or brand is not None):
        ef_search = FILTERED_EF_SEARCH
    if ef_search is not None and not 1 <= int(ef_search) <= 1000:
        raise ManetError(f"ef_search={ef_search} is out of range; use 1..1000")
    # relaxed_order: the SQL re-sorts the candidates by the exact distance anyway (pgvector's
    # advice), and it measured a higher filtered recall than strict_order at the same cost.
    settings = {"hnsw.iterative_scan": "relaxed_order",
                "hnsw.ef_search": None if ef_search is None else str(int(ef_search))}
    with db.engine.connect() as sa_conn:
        pooled = sa_conn.connection
        conn = vector_connection(pooled)
        # Autocommit: no BEGIN/COMMIT round trips for a read; the session settings persist on
        # this pooled connection (remembered in its info) and only changes are sent.
        conn.autocommit = True
        try:
            rows = execute_search(conn, sql, params, settings, pooled.info.setdefault("search_settings", {}))
        finally:
            if not conn.closed:
                conn.autocommit = False
    return [
        Hit(rank, image_id, product_id, sku, title, brand_, float(score), uri)
        for rank, (image_id, product_id, sku, title, brand_, uri, score) in enumerate(rows, start=1)
    ]


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

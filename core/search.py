"""Top-k search in SQL and the per-model HNSW index.

The model id and vector type are spliced into the SQL as validated integers so that the
planner can match the model's expression + partial index; every user value (the query
vector, k, filters) is a bound parameter.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.db import Database, as_array
from manet.errors import ManetError, NotFoundError
from manet.models import ModelRecord

# pgvector releases before 0.8.2 overflow a buffer in parallel HNSW builds (CVE-2026-3172).
SAFE_PARALLEL_PGVECTOR = (0, 8, 2)
#: Candidates per result taken from a half-precision index before exact re-ranking.
RERANK_FACTOR = 4


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


def _version_tuple(version: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (version or "0").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def parallel_build_allowed(pgvector_version: str | None) -> bool:
    """False on pgvector < 0.8.2, whose parallel HNSW build is unsafe (CVE-2026-3172)."""
    return _version_tuple(pgvector_version) >= SAFE_PARALLEL_PGVECTOR


@dataclass(frozen=True)
class IndexReport:
    name: str
    rows: int
    seconds: float
    parallel_workers: int
    m: int
    ef_construction: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_index(db: Database, model: ModelRecord, *, m: int = 16, ef_construction: int = 64,
                maintenance_work_mem: str = "512MB", parallel_workers: int = 2) -> IndexReport:
    """(Re)build the HNSW index over ``model``'s gallery descriptors (inner product)."""
    if not (2 <= m <= 100 and 4 <= ef_construction <= 1000 and ef_construction >= 2 * m):
        raise ManetError(
            f"invalid HNSW options m={m}, ef_construction={ef_construction}; "
            f"use 2 <= m <= 100 and 2*m <= ef_construction <= 1000"
        )
    versions = db.server_versions()
    workers = parallel_workers if parallel_build_allowed(versions["pgvector"]) else 0
    name = model.index_name
    started = time.perf_counter()
    with db.begin() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM descriptors WHERE model_id = :m AND gallery"), {"m": model.id}
        ).scalar_one()
        if rows == 0:
            raise ManetError(f"model '{model.name}' has no gallery descriptors; run: manet extract --model {model.name}")
        conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :v, true)"), {"v": maintenance_work_mem})
        conn.execute(sa.text("SELECT set_config('max_parallel_maintenance_workers', :v, true)"), {"v": str(workers)})
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        conn.execute(
            sa.text(
                f"CREATE INDEX {name} ON descriptors USING hnsw "
                f"((embedding::{model.vector_type}) {model.vector_type.split('(')[0]}_ip_ops) "
                f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
                f"WHERE model_id = {int(model.id)} AND gallery"
            )
        )
        # Fresh statistics after a bulk load, so the planner costs the index scan correctly.
        conn.execute(sa.text("ANALYZE descriptors"))
    return IndexReport(name, int(rows), time.perf_counter() - started, workers, m, ef_construction)


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


def search_query(
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = 7,
    category: str | None = None,
    brand: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL and bound parameters of a top-``k`` search (see :func:`search_vector`)."""
    from pgvector import Vector

    if not 1 <= int(k) <= 1000:
        raise ManetError(f"k={k} is out of range; use 1..1000")
    vector = _check_vector(model, vector)
    vtype = model.vector_type
    # Literal model id and cast: the planner only matches the partial expression index so.
    where = [f"d.model_id = {int(model.id)}", "d.gallery"]
    params: dict[str, Any] = {"q": Vector(vector).to_text(), "k": int(k)}
    if category is not None:
        where.append(
            "EXISTS (SELECT 1 FROM product_categories pc JOIN categories c ON c.id = pc.category_id "
            "WHERE pc.product_id = i.product_id AND c.name = :category)"
        )
        params["category"] = category
    if brand is not None:
        where.append("lower(p.brand) = lower(:brand)")
        params["brand"] = brand
    # halfvec indexes (> 2,000 dims) rank in half precision: take more candidates from the
    # index, then order them by the exact float32 inner product.
    params["candidates"] = int(k) * RERANK_FACTOR if model.dim > 2000 else int(k)
    sql = f"""
        SELECT c.image_id, c.product_id, c.sku, c.title, c.brand, c.uri,
               -(c.embedding <#> CAST(:q AS vector))::double precision AS score
          FROM (SELECT d.image_id, d.embedding, i.product_id, i.uri, p.sku, p.title, p.brand
                  FROM descriptors d
                  JOIN images i ON i.id = d.image_id
                  LEFT JOIN products p ON p.id = i.product_id
                 WHERE {' AND '.join(where)}
                 ORDER BY d.embedding::{vtype} <#> CAST(:q AS {vtype})
                 LIMIT :candidates) c
         ORDER BY c.embedding <#> CAST(:q AS vector), c.image_id
         LIMIT :k
    """
    return sql, params


def search_vector(
    db: Database,
    model: ModelRecord,
    vector: np.ndarray,
    *,
    k: int = 7,
    category: str | None = None,
    brand: str | None = None,
    ef_search: int | None = None,
) -> list[Hit]:
    """Top-``k`` gallery images for ``vector`` by inner product, joined with products.

    Filters run inside the index scan's ORDER BY ... LIMIT with pgvector's iterative scan
    (strict order), so ``k`` rows come back whenever ``k`` gallery images match.
    """
    sql, params = search_query(model, vector, k=k, category=category, brand=brand)
    with db.begin() as conn:
        conn.execute(sa.text("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)"))
        if ef_search is not None:
            conn.execute(sa.text("SELECT set_config('hnsw.ef_search', :v, true)"), {"v": str(int(ef_search))})
        rows = conn.execute(sa.text(sql), params).all()
    return [
        Hit(rank, row.image_id, row.product_id, row.sku, row.title, row.brand, float(row.score), row.uri)
        for rank, row in enumerate(rows, start=1)
    ]


def stored_descriptor(db: Database, model: ModelRecord, image_id: int) -> np.ndarray:
    """The stored descriptor of ``image_id`` under ``model``."""
    with db.begin() as conn:
        exists = conn.execute(sa.text("SELECT status FROM images WHERE id = :i"), {"i": int(image_id)}).first()
        if exists is None:
            raise NotFoundError(f"image {image_id} does not exist; list images with SQL: SELECT id, uri FROM images")
        row = conn.execute(
            sa.text("SELECT embedding FROM descriptors WHERE model_id = :m AND image_id = :i"),
            {"m": model.id, "i": int(image_id)},
        ).first()
    if row is None:
        raise NotFoundError(
            f"image {image_id} has no descriptor for model '{model.name}'; run: manet extract --model {model.name}"
        )
    return as_array(row[0])

"""Top-k search in SQL and the per-model HNSW index.

The model id, the index expression and the limits are spliced into the SQL as validated
integers so that the planner can match the model's expression + partial index (and a
prepared statement gets one generic plan); every user value (the query vector, filters) is
a bound parameter.

A model's index is one of three layouts (:class:`IndexLayout`), recorded in
``models.index_options`` by :func:`build_index` so that search, ``manet_search`` and the
index always agree on the indexed expression:

- ``none``: HNSW on ``embedding::vector(D)`` (up to 2,000 dims), exact inner product;
- ``halfvec``: HNSW on ``embedding::halfvec(D)`` (up to 4,000 dims; the default above 2,000),
  ``rerank_factor`` x k candidates re-ranked by the float32 inner product;
- ``binary``: HNSW on ``binary_quantize(embedding)::bit(D)`` with Hamming distance,
  ``rerank_factor`` x k candidates re-ranked by the float32 inner product (pgvector's README recipe). Sign bits
  only carry information for centred descriptors (e.g. PCA-whitened ones).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.errors import ManetError, NotFoundError
from manet.search.index_progress import index_build_progress
from manet.store import descriptors
from manet.store.database import Database, vector_connection
from manet.store.models import ModelRecord

# pgvector releases before 0.8.2 overflow a buffer in parallel HNSW builds (CVE-2026-3172).
SAFE_PARALLEL_PGVECTOR = (0, 8, 2)
#: Index layouts; "auto" picks vector up to 2,000 dims and halfvec above.
QUANTIZATIONS = ("none", "halfvec", "binary")
#: The most dimensions pgvector's HNSW indexes per type.
MAX_INDEX_DIMS = {"none": 2000, "halfvec": 4000, "binary": 64000}
#: Candidates per result taken from a quantised index before exact re-ranking.
DEFAULT_RERANK_FACTOR = {"none": 1, "halfvec": 4, "binary": 10}
#: ef_search of filtered searches that do not set one. Filtered top-7 recall at 5 % selectivity,
#: 100K x 512 (manet bench search): 0.77 at ef_search 40, 0.91 at 400, for about twice the time.
FILTERED_EF_SEARCH = 400
#: Largest maintenance_work_mem chosen automatically for an index build.
MAX_AUTO_BUILD_MEMORY_MB = 4096


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


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``"0.8.1"`` -> ``(0, 8, 1)``, for comparing server and extension versions (None -> (0,))."""
    parts = []
    for piece in (version or "0").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def parallel_build_allowed(pgvector_version: str | None) -> bool:
    """False on pgvector < 0.8.2, whose parallel HNSW build is unsafe (CVE-2026-3172)."""
    return version_tuple(pgvector_version) >= SAFE_PARALLEL_PGVECTOR


@dataclass(frozen=True)
class IndexLayout:
    """What a model's HNSW index holds, and the SQL that uses it (both from here, so they match)."""

    quantize: str
    dim: int
    rerank_factor: int

    @property
    def opclass(self) -> str:
        return {"none": "vector_ip_ops", "halfvec": "halfvec_ip_ops", "binary": "bit_hamming_ops"}[self.quantize]

    def stored(self, column: str) -> str:
        """The indexed expression over the ``embedding`` column named ``column``."""
        if self.quantize == "binary":
            return f"binary_quantize({column})::bit({self.dim})"
        return f"{column}::{'halfvec' if self.quantize == 'halfvec' else 'vector'}({self.dim})"

    def distance(self, column: str, query: str) -> str:
        """The index's distance between a stored ``column`` and a query vector expression."""
        if self.quantize == "binary":
            return f"{self.stored(column)} <~> binary_quantize(CAST({query} AS vector({self.dim})))"
        kind = "halfvec" if self.quantize == "halfvec" else "vector"
        return f"{self.stored(column)} <#> CAST({query} AS {kind}({self.dim}))"


def index_layout(model: ModelRecord, quantize: str | None = None, rerank_factor: int | None = None
                 ) -> IndexLayout:
    """The layout of ``model``'s index: from its recorded index options, else the default for
    its dimension; ``quantize``/``rerank_factor`` override them (for a new build). Checks the limits."""
    options = model.index_options
    quantize = quantize or options.get("quantize") or ("halfvec" if model.dim > 2000 else "none")
    if quantize not in QUANTIZATIONS:
        raise ManetError(f"unknown quantization '{quantize}'; use one of: {', '.join(QUANTIZATIONS)}")
    if model.dim > MAX_INDEX_DIMS[quantize]:
        hint = "halfvec or binary" if model.dim <= MAX_INDEX_DIMS["halfvec"] else "binary (or PCA-whiten the model)"
        raise ManetError(
            f"a '{quantize}' HNSW index takes at most {MAX_INDEX_DIMS[quantize]} dimensions and model "
            f"'{model.name}' has {model.dim}; use --quantize {hint}"
        )
    factor = rerank_factor
    if factor is None:
        factor = options.get("rerank_factor") if options.get("quantize") == quantize else None
    factor = DEFAULT_RERANK_FACTOR[quantize] if factor is None else int(factor)
    if not 1 <= factor <= 100:
        raise ManetError(f"rerank factor {factor} is out of range; use 1..100")
    return IndexLayout(quantize, model.dim, factor)


def hnsw_build_memory_mb(rows: int, dim: int, quantize: str, m: int) -> int:
    """An estimate of the memory an in-memory HNSW build needs (MiB, at least 64).

    Per element: the indexed value (4, 2 or 1/8 bytes a dimension), its level-0 neighbour list
    (2 m candidates of 16 bytes) and ~128 bytes of element overhead, plus 25 % headroom. A build
    whose graph outgrows maintenance_work_mem continues on disk, many times slower.
    """
    value_bytes = {"none": 4 * dim, "halfvec": 2 * dim, "binary": (dim + 7) // 8}[quantize] + 8
    per_row = value_bytes + 2 * m * 16 + 128
    return max(64, int(np.ceil(rows * per_row * 1.25 / 2**20)))


@dataclass(frozen=True)
class IndexReport:
    name: str
    rows: int
    seconds: float
    parallel_workers: int
    m: int
    ef_construction: int
    quantize: str = "none"
    rerank_factor: int = 1
    maintenance_work_mem: str = ""
    #: Why parallel_workers is what it is (pgvector version).
    parallel_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_index(db: Database, model: ModelRecord, *, m: int = 16, ef_construction: int = 64,
                quantize: str | None = None, rerank_factor: int | None = None,
                maintenance_work_mem: str | None = None, parallel_workers: int = 2,
                progress: bool = False) -> IndexReport:
    """(Re)build the HNSW index over ``model``'s gallery descriptors and record its options.

    ``quantize`` is ``none``, ``halfvec`` or ``binary`` (default: the recorded one, else by
    dimension); ``maintenance_work_mem`` defaults to an estimate of the graph's size
    (:func:`hnsw_build_memory_mb`, at most 4 GB). Parallel workers are used only where pgvector
    allows them safely (>= 0.8.2).
    """
    if not (2 <= m <= 100 and 4 <= ef_construction <= 1000 and ef_construction >= 2 * m):
        raise ManetError(
            f"invalid HNSW options m={m}, ef_construction={ef_construction}; "
            f"use 2 <= m <= 100 and 2*m <= ef_construction <= 1000"
        )
    layout = index_layout(model, quantize, rerank_factor)
    pgvector = db.server_versions()["pgvector"]
    if parallel_build_allowed(pgvector):
        workers, reason = parallel_workers, f"pgvector {pgvector} builds in parallel safely"
    else:
        workers, reason = 0, f"pgvector {pgvector} < 0.8.2: parallel HNSW builds are unsafe (CVE-2026-3172)"
    options = {"quantize": layout.quantize, "rerank_factor": layout.rerank_factor, "m": int(m),
               "ef_construction": int(ef_construction)}
    name = model.index_name
    started = time.perf_counter()
    with db.begin() as conn:
        rows = descriptors.count(conn, model.id, gallery=True)
        if rows == 0:
            raise ManetError(f"model '{model.name}' has no gallery descriptors; run: manet extract --model {model.name}")
        memory = maintenance_work_mem or (
            f"{min(MAX_AUTO_BUILD_MEMORY_MB, hnsw_build_memory_mb(rows, model.dim, layout.quantize, m))}MB")
        conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :v, true)"), {"v": memory})
        conn.execute(sa.text("SELECT set_config('max_parallel_maintenance_workers', :v, true)"), {"v": str(workers)})
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with index_build_progress(db, pid, int(rows), model.name, progress):
            conn.execute(
                sa.text(
                    f"CREATE INDEX {name} ON descriptors USING hnsw (({layout.stored('embedding')}) "
                    f"{layout.opclass}) WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
                    f"WHERE model_id = {int(model.id)} AND gallery"
                )
            )
        # Search and manet_search read these to query with the index's own expression.
        conn.execute(sa.text("UPDATE models SET index_options = CAST(:o AS jsonb) WHERE id = :m"),
                     {"o": json.dumps(options), "m": model.id})
        # Fresh statistics after a bulk load, so the planner costs the index scan correctly.
        conn.execute(sa.text("ANALYZE descriptors"))
    return IndexReport(name, int(rows), time.perf_counter() - started, workers, m, ef_construction,
                       layout.quantize, layout.rerank_factor, memory, reason)


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
    k: int = 7,
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
    k: int = 7,
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

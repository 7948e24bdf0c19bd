"""The per-model HNSW index: its layout (what it holds, the SQL that uses it) and its build.

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

import json
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet import config
from manet.errors import DamagedModelError, ManetError
from manet.search.index_progress import index_build_progress
from manet.settings_json import matches_type
from manet.store import category_indexes, descriptors
from manet.store.database import Database
from manet.store.events import record_event
from manet.store.models import ModelRecord

# pgvector releases before 0.8.2 overflow a buffer in parallel HNSW builds (CVE-2026-3172).
SAFE_PARALLEL_PGVECTOR = (0, 8, 2)
#: Index layouts; "auto" picks vector up to 2,000 dims and halfvec above.
QUANTIZATIONS = ("none", "halfvec", "binary")
#: The most dimensions pgvector's HNSW indexes per type.
MAX_INDEX_DIMS = {"none": 2000, "halfvec": 4000, "binary": 64000}
#: Candidates per result taken from a quantised index before exact re-ranking.
DEFAULT_RERANK_FACTOR = {"none": 1, "halfvec": 4, "binary": 10}
#: What :func:`build_index` records in ``models.index_options``: each key's JSON type.
RECORDED_OPTIONS = {"quantize": str, "rerank_factor": int, "m": int, "ef_construction": int, "built_at": str}
#: Largest maintenance_work_mem chosen automatically for an index build.
MAX_AUTO_BUILD_MEMORY_MB = 4096



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


def build_workers(db: Database, wanted: int) -> tuple[int, str]:
    """Parallel maintenance workers for an HNSW build or rebuild on ``db``'s server, and why:
    ``wanted`` where pgvector allows it, else 0 (CVE-2026-3172)."""
    pgvector = db.server_versions()["pgvector"]
    if parallel_build_allowed(pgvector):
        return wanted, f"pgvector {pgvector} builds in parallel safely"
    return 0, f"pgvector {pgvector} < 0.8.2: parallel HNSW builds are unsafe (CVE-2026-3172)"


@dataclass(frozen=True)
class IndexLayout:
    """What a model's HNSW index holds, and the SQL that uses it (both from here, so they match)."""

    quantize: str
    dim: int
    rerank_factor: int
    #: A category's own index (:mod:`manet.search.category_index`): the same values, indexed
    #: through the identity ``subvector(embedding, 1, dim)`` (see :meth:`for_category`). Its graph is denser than the
    #: model's, and pgvector costs a denser graph higher, so on the model's expression PostgreSQL
    #: would plan a category's search on the model's index; on its own expression it cannot.
    category: bool = False

    @property
    def opclass(self) -> str:
        return {"none": "vector_ip_ops", "halfvec": "halfvec_ip_ops", "binary": "bit_hamming_ops"}[self.quantize]

    def for_category(self) -> IndexLayout:
        """The layout of the model's category indexes: halfvec, re-ranked by the float32 inner
        product, where the model's index is float32 (half the size, and 0.9 x the search time at
        equal recall: docs/PERFORMANCE.md); else the model's own quantisation."""
        if self.quantize == "none":
            return replace(self, category=True, quantize="halfvec", rerank_factor=DEFAULT_RERANK_FACTOR["halfvec"])
        return replace(self, category=True)

    def stored(self, column: str) -> str:
        """The indexed expression over the ``embedding`` column named ``column``."""
        if self.category:
            column = f"subvector({column}, 1, {self.dim})"
        if self.quantize == "binary":
            return f"binary_quantize({column})::bit({self.dim})"
        return f"{column}::{'halfvec' if self.quantize == 'halfvec' else 'vector'}({self.dim})"

    def distance(self, column: str, query: str) -> str:
        """The index's distance between a stored ``column`` and a query vector expression."""
        if self.quantize == "binary":
            return f"{self.stored(column)} <~> binary_quantize(CAST({query} AS vector({self.dim})))"
        kind = "halfvec" if self.quantize == "halfvec" else "vector"
        return f"{self.stored(column)} <#> CAST({query} AS {kind}({self.dim}))"


def default_quantize(dim: int) -> str:
    """The layout of a first build: ``none`` up to 2,000 dimensions, ``halfvec`` above."""
    return "halfvec" if dim > 2000 else "none"


def recorded_options(model: ModelRecord) -> dict[str, Any]:
    """``model.index_options`` if they are what :func:`build_index` writes; else a one-line error
    saying how to build the index again (the row was edited, or written by another manet)."""
    options = model.index_options
    wrong = [f"{key}={value!r:.40}" for key, value in options.items()
             if key not in RECORDED_OPTIONS or not matches_type(value, RECORDED_OPTIONS[key])
             or (key == "quantize" and value not in QUANTIZATIONS)
             or (key == "rerank_factor" and not 1 <= value <= 100)]
    if wrong:
        raise DamagedModelError(f"model '{model.name}' has damaged index options in the database ({', '.join(wrong)}); "
                                f"build its index again: manet index build --model {model.name} "
                                f"--quantize {default_quantize(model.dim)}")
    return options


def index_layout(model: ModelRecord, quantize: str | None = None, rerank_factor: int | None = None
                 ) -> IndexLayout:
    """The layout of ``model``'s index: from its recorded index options, else the default for
    its dimension; ``quantize``/``rerank_factor`` override them (for a new build, which also
    replaces damaged options). Checks the limits."""
    try:
        options = recorded_options(model)
    except DamagedModelError:
        if quantize is None:
            raise
        options = {}
    quantize = quantize or options.get("quantize") or default_quantize(model.dim)
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


def auto_build_memory(rows: int, layout: IndexLayout, m: int) -> str:
    """maintenance_work_mem for building a graph of ``rows`` (:func:`hnsw_build_memory_mb`, <= 4 GB)."""
    return f"{min(MAX_AUTO_BUILD_MEMORY_MB, hnsw_build_memory_mb(rows, layout.dim, layout.quantize, m))}MB"


def create_hnsw_index(db: Database, conn: sa.Connection, name: str, layout: IndexLayout, *, m: int,
                      ef_construction: int, where: str, rows: int, memory: str, workers: int, progress: bool,
                      label: str) -> None:
    """(Re)create the partial HNSW index ``name`` over the ``descriptors`` rows matching ``where``
    (validated SQL of literals), in ``conn``'s transaction; ``rows`` sizes the progress bar."""
    conn.execute(sa.text("SELECT set_config('maintenance_work_mem', :v, true)"), {"v": memory})
    conn.execute(sa.text("SELECT set_config('max_parallel_maintenance_workers', :v, true)"), {"v": str(workers)})
    conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    with index_build_progress(db, pid, int(rows), label, progress):
        conn.execute(sa.text(
            f"CREATE INDEX {name} ON descriptors USING hnsw (({layout.stored('embedding')}) {layout.opclass}) "
            f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) WHERE {where}"))


def check_graph_options(m: int, ef_construction: int) -> None:
    """A one-line error for HNSW graph options pgvector refuses."""
    if not (2 <= m <= 100 and 4 <= ef_construction <= 1000 and ef_construction >= 2 * m):
        raise ManetError(
            f"invalid HNSW options m={m}, ef_construction={ef_construction}; "
            f"use 2 <= m <= 100 and 2*m <= ef_construction <= 1000"
        )


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


def build_index(db: Database, model: ModelRecord, *, m: int = config.DEFAULT_HNSW_M, ef_construction: int = config.DEFAULT_EF_CONSTRUCTION,
                quantize: str | None = None, rerank_factor: int | None = None,
                maintenance_work_mem: str | None = None, parallel_workers: int = 2,
                progress: bool = False) -> IndexReport:
    """(Re)build the HNSW index over ``model``'s gallery descriptors and record its options.

    ``quantize`` is ``none``, ``halfvec`` or ``binary`` (default: the recorded one, else by
    dimension); ``maintenance_work_mem`` defaults to an estimate of the graph's size
    (:func:`hnsw_build_memory_mb`, at most 4 GB). Parallel workers are used only where pgvector
    allows them safely (>= 0.8.2).
    """
    check_graph_options(m, ef_construction)
    layout = index_layout(model, quantize, rerank_factor)
    workers, reason = build_workers(db, parallel_workers)
    options = {"quantize": layout.quantize, "rerank_factor": layout.rerank_factor, "m": int(m),
               "ef_construction": int(ef_construction)}
    name = model.index_name
    started = time.perf_counter()
    with db.begin() as conn:
        rows = descriptors.count(conn, model.id, gallery=True)
        if rows == 0:
            raise ManetError(f"model '{model.name}' has no gallery descriptors; run: manet extract --model {model.name}")
        memory = maintenance_work_mem or auto_build_memory(rows, layout, m)
        if model.index_options.get("quantize", layout.quantize) != layout.quantize:
            # Category indexes of another layout hold an expression searches no longer use.
            category_indexes.drop_for_model(conn, model.id)
        create_hnsw_index(db, conn, name, layout, m=m, ef_construction=ef_construction,
                          where=f"model_id = {int(model.id)} AND gallery", rows=rows, memory=memory,
                          workers=workers, progress=progress, label=model.name)
        # Search and manet_search read these to query with the index's own expression; built_at
        # is the last build (or rebuild) that `manet index status` reports.
        conn.execute(sa.text("UPDATE models SET index_options = CAST(:o AS jsonb) "
                             "|| jsonb_build_object('built_at', now()) WHERE id = :m"),
                     {"o": json.dumps(options), "m": model.id})
        record_event(conn, "index.build", model_id=model.id,
                     details={"model": model.name, "index": name, "rows": int(rows), **options})
        # Fresh statistics after a bulk load, so the planner costs the index scan correctly.
        conn.execute(sa.text("ANALYZE descriptors"))
    return IndexReport(name, int(rows), time.perf_counter() - started, workers, m, ef_construction,
                       layout.quantize, layout.rerank_factor, memory, reason)

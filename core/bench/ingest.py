"""``manet bench ingest``: descriptor rows/s of binary COPY (manet's path) vs executemany INSERT.

All write the same generated rows into the ``descriptors`` table of the scratch database
(no HNSW index yet, as in a bulk load: the index is built afterwards). The INSERT side uses
psycopg's ``executemany`` with pgvector-python's ``register_vector``, the way its examples
insert rows (psycopg 3 pipelines them); a third figure sends one INSERT per row, as
pgvector-python's example loop does. The INSERT sides may run on fewer rows (``insert_rows``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from manet.bench.common import peak_rss_mb
from manet.bench.search_data import CHUNK_ROWS, DescriptorGenerator
from manet.bench.search_load import clear_scratch, insert_catalogue_rows
from manet.errors import ManetError
from manet.store import descriptors
from manet.store.database import Database
from manet.store.models import create_vector_model, delete_model

BENCH_MODEL = "bench-ingest"


def _copy_rows_per_s(db: Database, model_id: int, vectors: np.ndarray) -> float:
    """Binary COPY in chunks, one transaction per chunk (like extraction batches)."""
    started = time.perf_counter()
    with db.raw() as conn:
        for start in range(0, len(vectors), CHUNK_ROWS):
            chunk = vectors[start:start + CHUNK_ROWS]
            ids = list(range(start + 1, start + len(chunk) + 1))
            with conn.cursor() as cur:
                descriptors.copy_rows(cur, model_id, ids, [True] * len(ids), chunk)
            conn.commit()
    return len(vectors) / (time.perf_counter() - started)


def _insert_rows_per_s(db: Database, model_id: int, vectors: np.ndarray) -> float:
    rows = [(model_id, i + 1, True, vector) for i, vector in enumerate(vectors)]
    started = time.perf_counter()
    with db.raw() as conn, conn.cursor() as cur:
        cur.executemany(descriptors.INSERT_ROW, rows)
    return len(vectors) / (time.perf_counter() - started)


def _row_insert_rows_per_s(db: Database, model_id: int, vectors: np.ndarray) -> float:
    """One INSERT statement per row (one round trip each), as pgvector-python's example loop."""
    started = time.perf_counter()
    with db.raw() as conn:
        for i, vector in enumerate(vectors):
            descriptors.insert_row(conn, model_id, i + 1, True, vector)
    return len(vectors) / (time.perf_counter() - started)


def _empty(db: Database) -> None:
    with db.begin() as conn:  # the same empty table for every method
        descriptors.truncate(conn)


def run_ingest_bench(db: Database, *, rows: int = 20_000, dim: int = 512, insert_rows: int | None = None,
                     seed: int = 0) -> dict[str, Any]:
    """Rows/s of both ways into ``descriptors``; the figures of ``manet bench ingest --json``."""
    insert_rows = rows if insert_rows is None else insert_rows
    if rows < 1 or not 1 <= insert_rows <= rows:
        raise ManetError(f"--rows {rows} / --insert-rows {insert_rows}: use 1 <= --insert-rows <= --rows")
    if not 2 <= dim <= 16000:
        raise ManetError(f"--dim {dim} is out of range; pgvector stores 2..16000 dimensions")
    generator = DescriptorGenerator(dim, min(64, dim), seed=seed)
    vectors = np.concatenate(list(generator.gallery(rows)))
    clear_scratch(db)
    model = create_vector_model(db, BENCH_MODEL, dim, {"bench": "ingest"})
    try:
        with db.raw() as conn:
            insert_catalogue_rows(conn, 1, rows, 0)
        copy_rate = _copy_rows_per_s(db, model.id, vectors)
        _empty(db)
        insert_rate = _insert_rows_per_s(db, model.id, vectors[:insert_rows])
        _empty(db)
        row_rate = _row_insert_rows_per_s(db, model.id, vectors[:insert_rows])
    finally:
        delete_model(db, BENCH_MODEL)
        clear_scratch(db)
    return {
        "rows": rows, "insert_rows": insert_rows, "dim": dim,
        "copy_rows_per_s": round(copy_rate, 1), "insert_rows_per_s": round(insert_rate, 1),
        "ratio": round(copy_rate / insert_rate, 2),
        "row_insert_rows_per_s": round(row_rate, 1), "ratio_row_insert": round(copy_rate / row_rate, 2),
        "method": {"copy": f"manet.store.descriptors.copy_rows (binary COPY), {CHUNK_ROWS} rows a transaction",
                   "insert": "psycopg 3 executemany INSERT (pipelined), pgvector register_vector, one transaction",
                   "row_insert": "one INSERT per row (a round trip each), one transaction"},
        "versions": db.server_versions(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable lines of ``manet bench ingest``."""
    note = "" if report["insert_rows"] == report["rows"] else f" (INSERT on the first {report['insert_rows']} rows)"
    return (f"{report['rows']} x {report['dim']} descriptor rows{note}\n"
            f"binary COPY        {report['copy_rows_per_s']:>10.0f} rows/s\n"
            f"executemany INSERT {report['insert_rows_per_s']:>10.0f} rows/s   COPY / INSERT {report['ratio']:.2f} x\n"
            f"row-by-row INSERT  {report['row_insert_rows_per_s']:>10.0f} rows/s   COPY / INSERT "
            f"{report['ratio_row_insert']:.2f} x")

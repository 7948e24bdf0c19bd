"""The upkeep of a model's HNSW index: ``manet index status`` and ``manet index rebuild``.

Deleted descriptors stay in an HNSW graph as dead entries until VACUUM, and the graph built
around them stays as it was; ``REINDEX INDEX CONCURRENTLY`` builds a fresh copy beside the old
one while searches keep using the old, then swaps them. It cannot run in a transaction block, so
it runs on a connection of its own in autocommit, with the same build settings as
:func:`manet.search.index.build_index` (no parallel workers on pgvector < 0.8.2). A concurrent
rebuild that fails leaves an invalid ``<index>_ccnew`` copy behind: the rebuild drops such
leftovers before it starts and after it fails, and the status lists any it finds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from manet.errors import ManetError, one_line
from manet.search.index import auto_build_memory, build_workers, index_layout
from manet.search.index_progress import index_build_progress
from manet.store import category_indexes, descriptors
from manet.store.database import Database
from manet.store.events import record_event
from manet.store.models import ModelRecord

#: Advisory lock (first key; the model id is the second) held while a model's index is rebuilt.
REBUILD_LOCK = 0x6D6E6978  # "mnix"

_INDEX_SQL = sa.text(
    "SELECT c.reltuples, i.indisvalid AS valid, pg_relation_size(c.oid) AS size_bytes, "
    "pg_size_pretty(pg_relation_size(c.oid)) AS size FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
    "WHERE c.oid = to_regclass(:n)")
# What a failed REINDEX CONCURRENTLY leaves: the new copy (_ccnew) or the old one (_ccold).
_LEFTOVERS_SQL = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE i.indrelid = to_regclass('descriptors') AND c.relname ~ ('^' || {n} || '_cc(new|old)[0-9]*$') "
    "ORDER BY c.relname")
# Whether a session holds the rebuild lock of model :m (pg_try_advisory_lock(int, int): objsubid 2).
_REBUILDING_SQL = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
    "AND classid::bigint = :k AND objid::bigint = :m)")
_TABLE_SQL = sa.text(
    "SELECT n_live_tup, n_dead_tup, greatest(last_vacuum, last_autovacuum) AS last_vacuum "
    "FROM pg_stat_user_tables WHERE relid = to_regclass('descriptors')")


def _stamp(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def index_status(db: Database, model: ModelRecord) -> dict[str, Any]:
    """What ``manet index status`` reports for ``model``: its index (exists, valid, size, tuples,
    layout, last build), its gallery rows, and the descriptors table's live and dead tuples
    (statistics views: updated within a second or so of a change, for all models together)."""
    with db.begin() as conn:
        rows = descriptors.count(conn, model.id, gallery=True)
        index = conn.execute(_INDEX_SQL, {"n": model.index_name}).first()
        leftovers = list(conn.execute(sa.text(_LEFTOVERS_SQL.format(n=":n")),
                                      {"n": model.index_name}).scalars())
        table = conn.execute(_TABLE_SQL).first()
        rebuilding = bool(conn.execute(_REBUILDING_SQL, {"k": REBUILD_LOCK, "m": model.id}).scalar())
        by_category = [index.as_dict() for index in category_indexes.list_for_model(conn, model.id)]
    options = model.index_options
    status = {
        "model": model.name, "model_id": model.id, "index": model.index_name, "exists": index is not None,
        "valid": None if index is None else bool(index.valid),
        "rows": int(rows),
        # pg_class.reltuples: the entries at the last build or VACUUM (-1: never counted).
        "index_tuples": None if index is None or index.reltuples < 0 else int(index.reltuples),
        "size_bytes": None if index is None else int(index.size_bytes),
        "size": None if index is None else index.size,
        "dead_tuples": None if table is None else int(table.n_dead_tup),
        "live_tuples": None if table is None else int(table.n_live_tup),
        "last_vacuum": None if table is None else _stamp(table.last_vacuum),
        "built_at": options.get("built_at"),
        "layout": {key: options[key] for key in ("quantize", "rerank_factor", "m", "ef_construction")
                   if key in options},
        "leftovers": leftovers,
        # Another session is rebuilding the index now (its copy is among the leftovers meanwhile).
        "rebuilding": rebuilding,
        "category_indexes": by_category,
    }
    status["hint"] = _hint(status)
    return status


def _hint(status: dict[str, Any]) -> str | None:
    """What to do about the index, if anything."""
    name = status["model"]
    if status.get("rebuilding"):
        return (f"a rebuild is running (building {', '.join(status['leftovers']) or 'its copy'}); check again "
                f"when it ends: manet index status --model {name}")
    if not status["exists"]:
        return f"no index; run: manet index build --model {name}" if status["rows"] else (
            f"no descriptors; run: manet extract --model {name}")
    if not status["valid"]:
        return f"the index is invalid; run: manet index build --model {name}"
    if status["leftovers"]:
        return f"a failed rebuild left {', '.join(status['leftovers'])}; run: manet index rebuild {name}"
    return None


@contextmanager
def _autocommit(db: Database) -> Iterator[Any]:
    """A connection of its own in autocommit (REINDEX CONCURRENTLY refuses a transaction block),
    closed after, so its session settings never reach the pool."""
    import psycopg

    from manet.config import libpq_url

    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        yield conn


def _drop_leftovers(conn: Any, name: str, concurrently: bool) -> list[str]:
    """Drop what failed rebuilds of index ``name`` left behind; their names."""
    leftovers = [row[0] for row in conn.execute(_LEFTOVERS_SQL.format(n="%(n)s"), {"n": name}).fetchall()]
    for leftover in leftovers:
        conn.execute(f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {leftover}")
    return leftovers


def _size(conn: Any, name: str) -> int:
    return int(conn.execute("SELECT pg_relation_size(to_regclass(%s))", [name]).fetchone()[0] or 0)


def _category_indexes(db: Database, model: ModelRecord) -> list[category_indexes.CategoryIndex]:
    with db.begin() as conn:
        return category_indexes.list_for_model(conn, model.id)


def _reindex(db: Database, conn: Any, name: str, rows: int, label: str, concurrently: bool, progress: bool
             ) -> tuple[list[str], float]:
    """REINDEX index ``name`` on an autocommit connection, dropping what failed rebuilds of it left
    before and, on failure, after; (leftovers dropped first, seconds)."""
    dropped = _drop_leftovers(conn, name, concurrently)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    started = time.perf_counter()
    try:
        with index_build_progress(db, pid, rows, label, progress):
            conn.execute(f"REINDEX INDEX {'CONCURRENTLY ' if concurrently else ''}{name}")
    except KeyboardInterrupt:  # psycopg has cancelled the REINDEX: drop its half-built copy too
        _drop_leftovers(conn, name, concurrently)
        raise
    except Exception as exc:
        reason_failed = one_line(exc)
        _drop_leftovers(conn, name, concurrently)
        raise ManetError(f"rebuilding index {name} of model '{label}' failed: {reason_failed}; the "
                         f"index in use is unchanged, fix the cause and run the rebuild again") from None
    return dropped, time.perf_counter() - started


def rebuild_index(db: Database, model: ModelRecord, *, concurrently: bool = True,
                  maintenance_work_mem: str | None = None, progress: bool = False) -> dict[str, Any]:
    """Rebuild ``model``'s HNSW index, then its category indexes, in place (same layout and options)
    and record an ``index.rebuild`` event; ``concurrently`` (default) keeps searches and writes
    running meanwhile.

    Without an index yet it is a ManetError naming ``manet index build``; a rebuild already
    running for the model (another session) is one too. A failed concurrent rebuild leaves the
    index in use unchanged, and its half-built copy is dropped.
    """
    name = model.index_name
    with db.begin() as conn:
        rows = descriptors.count(conn, model.id, gallery=True)
        index = conn.execute(_INDEX_SQL, {"n": name}).first()
    if index is None:
        raise ManetError(f"model '{model.name}' has no index yet; run: manet index build --model {model.name}")
    layout = index_layout(model)
    m = int(model.index_options.get("m", 16))
    memory = maintenance_work_mem or auto_build_memory(rows, layout, m)
    workers, reason = build_workers(db, 2)
    with _autocommit(db) as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (REBUILD_LOCK, model.id)).fetchone()[0]:
            raise ManetError(f"the index of model '{model.name}' is being rebuilt by another session; wait for it "
                             f"to finish, then check: manet index status --model {model.name}")
        # Session settings (REINDEX reads them); this connection is closed afterwards.
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false), "
                     "set_config('max_parallel_maintenance_workers', %s, false)", (memory, str(workers)))
        size_before = _size(conn, name)
        dropped, seconds = _reindex(db, conn, name, int(rows), model.name, concurrently, progress)
        size_after = _size(conn, name)
        # The categories' own graphs (manet.search.category_index) hold the same rows: rebuilt too.
        by_category = _category_indexes(db, model)
        for graph in by_category:
            dropped += _reindex(db, conn, graph.name, graph.rows, model.name, concurrently, progress)[0]
    report = {"model": model.name, "index": name, "rows": int(rows), "concurrently": concurrently,
              "seconds": round(seconds, 3), "size_bytes_before": size_before, "size_bytes_after": size_after,
              "maintenance_work_mem": memory, "parallel_workers": workers, "parallel_reason": reason,
              "dropped_leftovers": dropped, "category_indexes": [graph.name for graph in by_category]}
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE models SET index_options = index_options || jsonb_build_object('built_at', "
                             "now()) WHERE id = :m"), {"m": model.id})
        record_event(conn, "index.rebuild", model_id=model.id,
                     details={key: report[key] for key in ("index", "rows", "concurrently", "seconds",
                                                           "size_bytes_before", "size_bytes_after")})
    return report

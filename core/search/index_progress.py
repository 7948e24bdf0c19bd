"""A progress bar for ``CREATE INDEX``, read from PostgreSQL's ``pg_stat_progress_create_index``.

An HNSW build over a million descriptors runs for minutes inside one SQL statement; the server
reports how many tuples it has loaded, so a second connection polls that view and moves a bar.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from manet.store.database import Database

POLL_SECONDS = 0.5

_PROGRESS_SQL = sa.text(
    "SELECT phase, tuples_done FROM pg_stat_progress_create_index WHERE pid = :pid"
)


@contextmanager
def index_build_progress(db: Database, pid: int, total: int, label: str, enabled: bool) -> Iterator[None]:
    """Show a bar of the tuples backend ``pid`` has put into the index it is building.

    Does nothing when ``enabled`` is false. The bar is best effort: a failed poll stops the bar,
    never the build.
    """
    if not enabled:
        yield
        return
    from tqdm import tqdm

    stop = threading.Event()

    def poll() -> None:
        with tqdm(total=total, desc=f"index {label}", unit="row") as bar:
            try:
                with db.engine.connect() as conn:
                    while not stop.wait(POLL_SECONDS):
                        row = conn.execute(_PROGRESS_SQL, {"pid": pid}).first()
                        conn.commit()  # a fresh snapshot of the statistics view next time
                        if row is not None:
                            bar.set_postfix_str(row.phase, refresh=False)
                            bar.update(max(0, min(total, int(row.tuples_done or 0))) - bar.n)
            except sa.exc.SQLAlchemyError:
                return
            bar.update(total - bar.n)

    watcher = threading.Thread(target=poll, name="index-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()

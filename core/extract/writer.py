"""The writer thread of extraction: finished batches committed in order while the model runs."""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from manet.errors import DatabaseError
from manet.extract.forward import PendingVectors
from manet.store import descriptors
from manet.store.database import Database

RECORD_FAILURE = """
INSERT INTO extraction_work (model_id, image_id, status, attempts, last_error, updated_at)
VALUES (%s, %s, 'failed', 1, %s, now())
ON CONFLICT (model_id, image_id) DO UPDATE
   SET status = 'failed', attempts = extraction_work.attempts + 1,
       last_error = EXCLUDED.last_error, updated_at = now()
"""

#: Finished batches waiting for the writer thread; beyond this the model waits (bounded memory).
WRITER_QUEUE = 2


def write_batch(conn: Any, model_id: int, ids: list[int], gallery: list[bool], vectors: np.ndarray,
                failures: list[tuple[int, str]]) -> None:
    """Binary COPY of one batch's descriptors plus its failures, in one transaction."""
    with conn.cursor() as cur:
        descriptors.copy_rows(cur, model_id, ids, gallery, vectors)
        for image_id, error in failures:
            cur.execute(RECORD_FAILURE, (model_id, image_id, error))
    conn.commit()


_DONE = object()


class BatchWriter:
    """Commits finished batches (:func:`write_batch`) in a background thread, in order.

    At most ``max_pending`` batches wait (bounded memory: past that, :meth:`submit` waits). The
    first error stops the writer and is raised in the submitting thread by the next
    :meth:`submit` or by :meth:`close` as a :class:`DatabaseError`; every batch committed before
    it stays, so the run resumes from there.
    """

    def __init__(self, db: Database, model_id: int, max_pending: int = WRITER_QUEUE) -> None:
        self.db = db
        self.model_id = model_id
        self.committed = 0
        self.failed = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="manet-descriptor-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self.db.raw() as conn:
                while (job := self._queue.get()) is not _DONE:
                    ids, gallery, vectors, failures = job
                    write_batch(conn, self.model_id, ids, gallery, vectors.result(), failures)
                    self.committed += len(ids)
                    self.failed += len(failures)
        except BaseException as exc:  # reported to the submitting thread
            self._error = exc

    def _put(self, job: Any) -> None:
        while True:  # a writer that died must not leave the caller blocked on a full queue
            self.raise_error()
            try:
                self._queue.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def raise_error(self) -> None:
        """Raise the writer's error, if it has stopped on one."""
        exc = self._error
        if exc is not None:
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DatabaseError(
                f"writing descriptors to the database failed ({reason}); the {self.committed} descriptors "
                f"committed before it are kept: fix the cause and run the extraction again to resume"
            ) from exc

    def submit(self, ids: list[int], gallery: list[bool], vectors: PendingVectors,
               failures: list[tuple[int, str]]) -> None:
        """Queue one batch for commit; raises if the writer has failed."""
        self._put((ids, gallery, vectors, failures))

    def close(self, raise_error: bool = True) -> None:
        """Wait until every submitted batch is committed; then raise the writer's error, if any."""
        if self._thread.is_alive():
            try:
                self._put(_DONE)
            except DatabaseError:
                pass
            self._thread.join()
        if raise_error:
            self.raise_error()

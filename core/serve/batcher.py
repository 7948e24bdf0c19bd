"""Dynamic micro-batching: concurrent queries share one forward pass.

Requests arrive one by one on the event loop; a network is fastest on a batch. A
:class:`MicroBatcher` queues each request's item under a key (the model name), and its one
worker thread takes the oldest item together with the others of the same key already waiting,
or arriving within a short window, up to ``max_batch``, and runs them in one call. Under load the
queue fills while a batch runs, so batches grow with the load; a lone request waits at most the
window. torch runs in that thread only: no event-loop stalls, and one model is never run by two
threads at once. ``max_batch=1`` gives every request its own pass (no batching).

Nothing here knows about HTTP or torch, so it is tested on plain functions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

#: ``run(key, items) -> one result per item``, called in the batcher's thread.
RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]
#: ``on_batch(size, seconds)``: told after each batch (for metrics).
OnBatch = Callable[[int, float], None]


@dataclass
class _Job:
    key: Hashable
    item: Any
    future: Future = field(default_factory=Future)
    #: A call to run alone in the thread (loading a model) instead of an item to batch.
    call: Callable[[], Any] | None = None


class MicroBatcher:
    """Groups concurrent items of the same key into one ``run`` call in one dedicated thread.

    >>> batcher = MicroBatcher(lambda key, xs: [x * 2 for x in xs], max_batch=8, wait_ms=2)
    >>> batcher.start(); batcher.submit("m", 21).result(); batcher.close()
    42
    """

    def __init__(self, run: RunBatch, *, max_batch: int, wait_ms: float, on_batch: OnBatch | None = None,
                 name: str = "manet-batcher") -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}; use 1 for no batching")
        if not wait_ms >= 0:
            raise ValueError(f"wait_ms must be >= 0 milliseconds, got {wait_ms!r}")
        self._run, self._on_batch, self._name = run, on_batch, name
        self.max_batch, self.wait = max_batch, wait_ms / 1000.0
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        #: Batches run and items they held (the mean batch size is their ratio).
        self.batches = 0
        self.items = 0

    # -- the caller's side -------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this MicroBatcher is closed; make a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def submit(self, key: Hashable, item: Any) -> Future:
        """Queue ``item`` under ``key``; its future resolves to its result (or ``run``'s error)."""
        return self._put(_Job(key, item))

    def call(self, function: Callable[[], T]) -> Future:
        """Run ``function()`` alone in the batcher's thread, in queue order (e.g. load a model
        where the model will run)."""
        return self._put(_Job(None, None, call=function))

    async def run(self, key: Hashable, item: Any) -> Any:
        """:meth:`submit` for a coroutine: await the result without blocking the event loop
        (cancelling the await drops the item if its batch has not started)."""
        return await asyncio.wrap_future(self.submit(key, item))

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the queued work, then stop the thread (waiting up to ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _put(self, job: _Job) -> Future:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed (the server is shutting down)")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future

    # -- the worker thread -------------------------------------------------------------
    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            # Drop what its caller gave up on (a closed connection) before the work starts.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            if live[0].call is not None:
                _resolve(live[0], live[0].call)
            else:
                self._run_batch(live)

    def _next_batch(self) -> list[_Job] | None:
        """The oldest job and, unless it is a call, up to ``max_batch - 1`` more of its key:
        those waiting, and those arriving within the wait window. None once closed and empty."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            first = self._jobs[0]
            if first.call is not None:
                return [self._jobs.popleft()]
            deadline = time.monotonic() + self.wait
            while not self._closed and self._count(first.key) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._take(first.key)

    def _count(self, key: Hashable) -> int:
        return sum(1 for job in self._jobs if job.call is None and job.key == key)

    def _take(self, key: Hashable) -> list[_Job]:
        """Up to ``max_batch`` jobs of ``key`` out of the queue, the others left in their order."""
        taken: list[_Job] = []
        kept: deque[_Job] = deque()
        for job in self._jobs:
            if len(taken) < self.max_batch and job.call is None and job.key == key:
                taken.append(job)
            else:
                kept.append(job)
        self._jobs = kept
        return taken

    def _run_batch(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            results = list(self._run(jobs[0].key, [job.item for job in jobs]))
            if len(results) != len(jobs):
                raise RuntimeError(f"the batch function returned {len(results)} results for {len(jobs)} items")
        except BaseException as exc:  # every waiting caller hears the error; the thread goes on
            for job in jobs:
                job.future.set_exception(exc)
            return
        finally:
            seconds = time.perf_counter() - started
            self.batches += 1
            self.items += len(jobs)
            if self._on_batch is not None:
                self._on_batch(len(jobs), seconds)
        for job, result in zip(jobs, results):
            job.future.set_result(result)


def _resolve(job: _Job, function: Callable[[], Any]) -> None:
    try:
        job.future.set_result(function())
    except BaseException as exc:
        job.future.set_exception(exc)

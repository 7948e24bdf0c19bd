"""Closed-loop load for ``manet bench serve``: N client threads, a fixed number of requests.

Each client is a thread with a client object of its own: an ``http.client`` keep-alive
connection to the loopback server (:class:`HttpClient`), or the in-process
:meth:`manet.Retriever.search` (:class:`InProcessClient`). The threads open their client, wait
for each other, send a few untimed warm-up requests, wait again, then pull request numbers
from one shared counter until the level's requests are spent and close. So a level is bounded
in count, and every socket has a timeout, so it is bounded in time too; a failed request is
counted, never retried.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

#: Seconds a client waits on the server for one answer (or its threads on each other) before giving up.
REQUEST_TIMEOUT_S = 120.0
#: Scores closer than this are ties: batched and one-at-a-time forward passes may order them differently.
SCORE_TOLERANCE = 1e-4
SEARCH_PATH = "/v1/search"


@dataclass(frozen=True)
class Answer:
    """The top-k of one search: image ids and scores, best first."""

    ids: tuple[int, ...]
    scores: tuple[float, ...]


class SearchClient(Protocol):
    """One client thread's way to search: photo number -> answer."""

    def search(self, photo: int) -> Answer: ...

    def close(self) -> None: ...


class InProcessClient:
    """:meth:`manet.Retriever.search` on the photo file, in this thread (the Retriever is shared)."""

    def __init__(self, retriever: Any, model: str, paths: Sequence[Path], k: int) -> None:
        self.retriever, self.model, self.paths, self.k = retriever, model, paths, k

    def search(self, photo: int) -> Answer:
        hits = self.retriever.search(self.model, image=self.paths[photo], k=self.k)
        return Answer(tuple(hit.image_id for hit in hits), tuple(float(hit.score) for hit in hits))

    def close(self) -> None:
        """Nothing to close: the Retriever outlives the level."""


def search_form(photo: bytes, filename: str, fields: dict[str, str]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with the form ``fields`` and the photo as field ``image``,
    and its content type (built once per photo: encoding is the client's cost, not the server's)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def parse_answer(payload: Any) -> Answer:
    """The top-k of ``POST /v1/search``'s JSON: its ``hits`` (image_id, score), best first."""
    hits = payload["hits"] if isinstance(payload, dict) else payload
    return Answer(tuple(int(hit["image_id"]) for hit in hits), tuple(float(hit["score"]) for hit in hits))


class HttpClient:
    """``POST /v1/search`` over one keep-alive connection (http.client reconnects after a close)."""

    def __init__(self, url: str, forms: Sequence[tuple[bytes, str]], api_key: str | None = None,
                 timeout: float = REQUEST_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the serve benchmark only loads a loopback server, not {url}")
        self.forms = forms
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def _connect(self) -> None:
        """Open the connection with Nagle's algorithm off, as HTTP libraries do: http.client writes
        the headers and a large body in two sends, and the body's last segment could wait on the
        server's delayed ACK (40 ms on Linux)."""
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def search(self, photo: int) -> Answer:
        body, content_type = self.forms[photo]
        try:
            if self.conn.sock is None:
                self._connect()
            self.conn.request("POST", SEARCH_PATH, body=body,
                              headers={**self.headers, "Content-Type": content_type})
            response = self.conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # a fresh connection for the next request
            raise
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200].decode(errors='replace')}")
        return parse_answer(json.loads(data))

    def close(self) -> None:
        self.conn.close()


@dataclass
class LevelRun:
    """What one run of a level measured: each answered request's (sent, answered) times and
    answer, the errors, and the wall times."""

    clients: int
    #: From the start of the timed requests to the last answer.
    seconds: float = 0.0
    #: From the start of the warm-up to the start of the timed requests.
    warmup_seconds: float = 0.0
    #: perf_counter() when the timed requests started.
    started: float = 0.0
    spans: list[tuple[float, float]] = field(default_factory=list)
    answers: list[tuple[int, Answer]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [end - start for start, end in self.spans]

    def steady(self) -> tuple[int, float]:
        """(answers, seconds) in the steady state, when every client has had an answer (the queue
        is filled) and none has stopped yet (until the last request was sent): the start's fill
        and the end's drain, with fewer clients left, are left out. The whole run when that window
        holds no answer (a round of about as many requests as clients)."""
        ends = sorted(end for _, end in self.spans)
        if len(ends) <= self.clients:
            return len(ends), self.seconds
        filled, last_sent = ends[self.clients - 1], max(start for start, _ in self.spans)
        answered = sum(1 for end in ends if filled < end <= last_sent)
        if answered == 0:
            return len(ends), self.seconds
        return answered, last_sent - filled


def _client_thread(make_client: Callable[[], SearchClient], slot: int, run: LevelRun, ready: threading.Barrier,
                   go: threading.Barrier, next_request: Callable[[], int], requests: int, photos: int,
                   warmup: int, ends: list[float]) -> None:
    """One client: open, warm up (untimed), then take request numbers until they are spent."""
    try:
        client = make_client()
    except BaseException as exc:
        run.errors.append(f"client {slot} could not start: {exc}")
        ready.abort()
        return
    try:
        ready.wait()
        for i in range(warmup):
            client.search((slot + i) % photos)
        go.wait()
        while (number := next_request()) < requests:
            photo = number % photos
            started = time.perf_counter()
            try:
                answer = client.search(photo)
            except Exception as exc:  # counted as failed, never retried
                run.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            run.spans.append((started, time.perf_counter()))  # list.append is atomic
            run.answers.append((photo, answer))
        ends.append(time.perf_counter())
    except threading.BrokenBarrierError:
        pass
    except Exception as exc:  # a warm-up failure stops the level
        run.errors.append(f"client {slot} failed while warming up: {exc}")
        go.abort()
    finally:
        client.close()


def run_level(make_client: Callable[[], SearchClient], clients: int, requests: int, photos: int,
              warmup: int = 1) -> LevelRun:
    """``requests`` searches from ``clients`` concurrent threads (closed loop: each sends its next
    request when its answer is back), after ``warmup`` untimed ones per client."""
    run, starts, ends = LevelRun(clients), [], []
    counter, lock = itertools.count(), threading.Lock()

    def next_request() -> int:
        with lock:
            return next(counter)

    ready = threading.Barrier(clients, action=lambda: starts.append(time.perf_counter()),
                              timeout=REQUEST_TIMEOUT_S * (warmup + 1))
    go = threading.Barrier(clients, action=lambda: starts.append(time.perf_counter()),
                           timeout=REQUEST_TIMEOUT_S * (warmup + 1))
    threads = [threading.Thread(target=_client_thread, name=f"bench-client-{slot}", daemon=True,
                                args=(make_client, slot, run, ready, go, next_request, requests, photos, warmup,
                                      ends))
               for slot in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(starts) < 2 or len(ends) < clients:
        raise RuntimeError("; ".join(run.errors[:3]) or "a client thread did not finish")
    run.warmup_seconds, run.seconds, run.started = starts[1] - starts[0], max(ends) - starts[1], starts[1]
    return run


def level_figures(runs: Sequence[LevelRun]) -> dict[str, Any]:
    """The figures of one mode at one level over its rounds: p50/p95/p99 latency (ms) of every
    answered request; requests/s while all clients were busy (:meth:`LevelRun.steady`, summed
    over the rounds) and over the whole wall time; the failures."""
    latencies = [latency for run in runs for latency in run.latencies]
    errors = [error for run in runs for error in run.errors]
    steady = [run.steady() for run in runs]
    steady_answers, steady_seconds = sum(n for n, _ in steady), sum(t for _, t in steady)
    wall = sum(run.seconds for run in runs)
    figures: dict[str, Any] = {"requests": len(latencies) + len(errors), "failed": len(errors)}
    if latencies:
        p50, p95, p99 = np.percentile(np.asarray(latencies), [50, 95, 99]) * 1000.0
        figures.update(p50_ms=round(float(p50), 2), p95_ms=round(float(p95), 2), p99_ms=round(float(p99), 2))
    else:
        figures.update(p50_ms=None, p95_ms=None, p99_ms=None)
    figures["requests_per_s"] = round(steady_answers / steady_seconds, 2) if steady_answers else None
    figures["wall_requests_per_s"] = round(len(latencies) / wall, 2) if latencies and wall > 0 else None
    figures["first_error"] = errors[0] if errors else None
    return figures


def agrees(answer: Answer, reference: Answer, tolerance: float = SCORE_TOLERANCE) -> bool:
    """Whether ``answer`` is ``reference`` up to ties: the same scores rank by rank (within
    ``tolerance``), and the same ids wherever a score is apart from its neighbours."""
    if len(answer.ids) != len(reference.ids):
        return False
    scores = np.asarray(reference.scores)
    if np.any(np.abs(np.asarray(answer.scores) - scores) > tolerance):
        return False
    for rank, (got, expected) in enumerate(zip(answer.ids, reference.ids)):
        tied = np.any(np.abs(np.delete(scores, rank) - scores[rank]) <= tolerance)
        if got != expected and not tied:
            return False
    return True


def agreement(runs: Sequence[LevelRun], references: Sequence[Answer]) -> float | None:
    """The share of the runs' answers that agree with the one-at-a-time reference of their photo."""
    answers = [pair for run in runs for pair in run.answers]
    if not answers:
        return None
    return round(sum(agrees(answer, references[photo]) for photo, answer in answers) / len(answers), 4)

"""What ``manet bench serve`` reads from a ``manet serve`` app: its readiness, and the batch sizes
it formed, from its ``/metrics`` (Prometheus' text format).

The server counts every micro-batch it runs in a histogram of batch sizes. Reading it before
and after a level and subtracting gives that level's batches: their number, the images in them
(so the exact mean size) and, per bucket, how many had at most that many images.
"""

from __future__ import annotations

import http.client
import math
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: The histogram of batch sizes that ``manet serve`` exports.
BATCH_SIZE_METRIC = "manet_batch_size"
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LE = re.compile(r'le="(?P<le>[^"]+)"')


@dataclass
class BatchHistogram:
    """Batches run, images in them, and cumulative batches per upper bound (``le``)."""

    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def __sub__(self, other: BatchHistogram) -> BatchHistogram:
        return BatchHistogram(self.count - other.count, self.total - other.total,
                              {le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    @property
    def mean(self) -> float | None:
        """Mean images per batch (None: no batch)."""
        return round(self.total / self.count, 2) if self.count else None

    @property
    def largest_bound(self) -> float | None:
        """The smallest bucket bound holding every batch: the largest batch is at most this."""
        if not self.count:
            return None
        bound = min((le for le, n in self.buckets.items() if n >= self.count), default=math.inf)
        return None if math.isinf(bound) else bound

    @property
    def over_one(self) -> float:
        """Batches of more than one image."""
        return self.count - self.buckets.get(1.0, 0.0)


def parse_histogram(text: str, name: str = BATCH_SIZE_METRIC) -> BatchHistogram:
    """The histogram ``name`` in a Prometheus text exposition (summed over any other labels)."""
    histogram = BatchHistogram()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match["name"].startswith(name):
            continue
        value, suffix = float(match["value"]), match["name"][len(name):]  # e.g. manet_batch_size_bucket
        if suffix == "_count":
            histogram.count += value
        elif suffix == "_sum":
            histogram.total += value
        elif suffix == "_bucket":
            le = _LE.search(match["labels"] or "")
            if le:
                bound = float(le["le"])  # "+Inf" parses as inf
                histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + value
    return histogram


def _get(url: str, path: str, timeout: float) -> tuple[int, str]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def read_histogram(url: str, timeout: float = 30.0) -> BatchHistogram:
    """GET ``url``/metrics of a loopback server and parse its batch-size histogram."""
    status, body = _get(url, "/metrics", timeout)
    if status != 200:
        raise RuntimeError(f"GET {url}/metrics answered HTTP {status}")
    return parse_histogram(body)


def wait_ready(url: str, timeout: float = 300.0) -> None:
    """Poll ``url``/readyz until the server's database answers and its model is loaded; a
    RuntimeError with its last answer after ``timeout`` seconds."""
    deadline, answer = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status, answer = _get(url, "/readyz", 30.0)
        if status == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the server at {url} was not ready within {timeout:g} s: {answer[:200]}")

"""What ``manet bench serve`` reads from a ``manet serve`` app: its readiness, and the batches it
ran, from its ``/metrics`` (Prometheus' text format).

The server counts every micro-batch in two histograms: its size and its forward pass's time.
Reading them before and after a level and subtracting gives that level's batches: their number,
the images in them (so the exact mean size), per bucket how many had at most that many images,
and the seconds its model thread spent in forward passes.
"""

from __future__ import annotations

import http.client
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: The histograms of batch sizes and of forward-pass seconds that ``manet serve`` exports.
BATCH_SIZE_METRIC = "manet_batch_size"
FORWARD_METRIC = "manet_forward_seconds"
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
_LE = re.compile(r'le="(?P<le>[^"]+)"')


@dataclass
class Histogram:
    """Observations (batches), their sum (images, or seconds) and cumulative counts per upper bound (``le``)."""

    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(self.count - other.count, self.total - other.total,
                         {le: n - other.buckets.get(le, 0.0) for le, n in self.buckets.items()})

    def __add__(self, other: Histogram) -> Histogram:
        bounds = set(self.buckets) | set(other.buckets)
        return Histogram(self.count + other.count, self.total + other.total,
                         {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in bounds})

    @property
    def mean(self) -> float | None:
        """Mean per observation, e.g. images per batch (None: none)."""
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


def parse_histogram(text: str, name: str = BATCH_SIZE_METRIC) -> Histogram:
    """The histogram ``name`` in a Prometheus text exposition (summed over any other labels)."""
    histogram = Histogram()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] not in (f"{name}_count", f"{name}_sum", f"{name}_bucket"):
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


def read_histograms(url: str, timeout: float = 30.0) -> dict[str, Histogram]:
    """GET ``url``/metrics of a loopback server: its batch-size and forward-time histograms by name."""
    status, body = _get(url, "/metrics", timeout)
    if status != 200:
        raise RuntimeError(f"GET {url}/metrics answered HTTP {status}")
    return {name: parse_histogram(body, name) for name in (BATCH_SIZE_METRIC, FORWARD_METRIC)}


def batch_figures(delta: dict[str, Histogram], seconds: float) -> dict[str, Any]:
    """The batches counted in ``delta`` (readings after minus before, summed over rounds that
    lasted ``seconds`` together): how many, their sizes, and the model thread's forward time per
    image and its busy share of those seconds."""
    sizes, forward = delta[BATCH_SIZE_METRIC], delta[FORWARD_METRIC]
    return {
        "batches": int(sizes.count),
        "batches_over_one": int(sizes.over_one),
        "mean_batch": sizes.mean,
        "max_batch_at_most": sizes.largest_bound,
        "forward_ms_per_image": round(1000 * forward.total / sizes.total, 2) if sizes.total else None,
        "model_busy": round(forward.total / seconds, 3) if seconds > 0 else None,
    }


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

"""The service's Prometheus metrics, in a registry of its own (no process-wide state, so two
apps in one process, as in the tests, count apart), and the ASGI middleware that counts requests."""

from __future__ import annotations

import time
from typing import Any

#: Seconds: from a cached thumbnail on loopback to a large batch on a CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts and latencies per route, forward-pass batch sizes and times, errors by kind."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("manet_http_requests", "HTTP requests answered, by route template, method "
                                "and status code.", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("manet_http_request_duration_seconds", "Time to answer a request, by route "
                                 "template.", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("manet_batch_size", "Queries per forward pass (micro-batching).",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.forward_seconds = Histogram("manet_forward_seconds", "Time of one batched forward pass.",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("manet_errors", "Error answers by kind (bad_image, not_found, too_large, "
                              "bad_parameter, unauthorized, database_unavailable, internal).", ["kind"],
                              registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        """:class:`~manet.serve.batcher.MicroBatcher`'s ``on_batch``."""
        self.batch_size.observe(size)
        self.forward_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts each HTTP request by its route template (``/v1/images/{image_id}/thumbnail``, never
    the raw path, so that the label set stays small) and status, and times it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception that escaped everything

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

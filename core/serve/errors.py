"""Errors as the service answers them: one line of JSON, ``{"error": "..."}``, with the status
code that says whose fault it was, and never a stack trace (that goes to the server's log).

=========================================  ======  =====================
what                                       status  ``manet_errors`` kind
=========================================  ======  =====================
an image that cannot be decoded             400    bad_image
no or a wrong API key                       401/403 unauthorized
an unknown model, SKU, image or route       404    not_found
an upload over the cap                      413    too_large
a parameter out of range or unknown         422    bad_parameter
the database unreachable or not migrated    503    database_unavailable
a model's stored state or weights damaged   500    internal
anything else (a bug)                       500    internal
=========================================  ======  =====================
"""

from __future__ import annotations

import logging
from typing import Any

from manet.errors import (
    DamagedModelError,
    DatabaseError,
    ImageError,
    ManetError,
    NotFoundError,
    WeightsError,
    one_line,
)

log = logging.getLogger("manet.serve")

#: Extra bytes a multipart body may have around its photo (boundaries, headers, the other fields).
MULTIPART_OVERHEAD = 64 * 1024
#: Bytes of an over-the-cap body read and discarded before the 413 goes out, so that a client
#: still sending gets the answer instead of a reset connection; past it the connection is closed.
DRAIN_BYTES = 16 * 1024 * 1024

_KINDS = {400: "bad_image", 401: "unauthorized", 403: "unauthorized", 404: "not_found", 405: "bad_method",
          413: "too_large", 422: "bad_parameter", 503: "database_unavailable"}


class UploadTooLarge(Exception):
    """The request body passed the service's byte cap (counted while reading)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is over the cap of {limit} bytes; send a smaller photo (downscale it "
                         f"or re-encode it as JPEG), or start the server with a larger --max-upload-bytes")


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception is answered with."""
    import psycopg
    import sqlalchemy.exc

    if isinstance(exc, UploadTooLarge):
        return 413
    if isinstance(exc, ImageError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, DamagedModelError | WeightsError):  # the operator's to repair; a retry will not help
        return 500
    # Searches run on the driver's connection, so psycopg's own errors arrive unwrapped.
    if isinstance(exc, DatabaseError | sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
                  | psycopg.OperationalError | psycopg.InterfaceError):
        return 503
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return 503
    if isinstance(exc, ManetError):  # a value the caller gave that manet refuses: k, rerank, ...
        return 422
    return 500


def message_of(exc: BaseException, status: int) -> str:
    """What the client is told: manet's own one-line messages as they are; for the database and
    for anything unexpected, a fixed line (the details, URLs and traces, go to the server's log)."""
    if status == 503:
        return "the database is unavailable; try again shortly (the server's log says why)"
    if status == 500:
        return "internal error; the server's log has the details"
    return one_line(exc)


def error_body(message: str) -> dict[str, str]:
    return {"error": " ".join(str(message).split())}


def kind_of(status: int) -> str:
    return _KINDS.get(status, "internal" if status >= 500 else "other")


def install_error_handlers(app: Any, metrics: Any) -> None:
    """Answer every error raised by a route (and FastAPI's own) as one line of JSON."""
    import psycopg
    import sqlalchemy.exc
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        metrics.errors.labels(kind_of(status)).inc()
        return JSONResponse(error_body(message), status_code=status, headers=headers)

    async def on_http(request: Any, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else (
            f"no such endpoint: {request.method} {request.url.path}; see /docs")
        return answer(exc.status_code, str(detail), getattr(exc, "headers", None))

    async def on_validation(request: Any, exc: RequestValidationError) -> JSONResponse:
        return answer(422, validation_message(exc.errors()))

    async def on_error(request: Any, exc: Exception) -> JSONResponse:
        status = status_of(exc)
        if status == 500:  # the server logs the trace itself once this answer is sent
            log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        elif status == 503:
            log.warning("%s %s: database unavailable: %s", request.method, request.url.path, one_line(exc))
        return answer(status, message_of(exc, status))

    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    # The expected kinds by name: Starlette answers these inside the middleware (metrics see the
    # status); the catch-all Exception handler runs outermost, and the server logs the trace.
    for kind in (ManetError, UploadTooLarge, sqlalchemy.exc.SQLAlchemyError, psycopg.Error, Exception):
        app.add_exception_handler(kind, on_error)


def validation_message(errors: Any) -> str:
    """pydantic's errors as one line: ``k: Input should be less than or equal to 1000; ...``."""
    parts = []
    for error in list(errors)[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form"))
        parts.append(f"{where or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) + "; see /docs for the parameters"


class BodyLimitMiddleware:
    """Caps the bytes of every request body, counted as they arrive (a Content-Length can lie,
    a chunked body has none): past ``max_upload_bytes`` and the multipart overhead, the app's reads
    raise :class:`UploadTooLarge`, which the error handlers answer with 413; a declared length over
    it is refused before any read."""

    def __init__(self, app: Any, max_upload_bytes: int, metrics: Any) -> None:
        self.app, self.metrics = app, metrics
        self.cap, self.limit = max_upload_bytes, max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            if declared <= self.limit + DRAIN_BYTES:
                await _drain(receive, DRAIN_BYTES + self.limit)
            await self._refuse(send)
            return
        received, unread = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal received, unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    unread = bool(message.get("more_body", False))
                    raise UploadTooLarge(self.cap)
            return message

        async def drain_then_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and unread:  # read the rest before answering
                await _drain(receive, DRAIN_BYTES)
            await send(message)

        await self.app(scope, counted, drain_then_send)

    async def _refuse(self, send: Any) -> None:
        import json

        self.metrics.errors.labels("too_large").inc()
        body = json.dumps(error_body(str(UploadTooLarge(self.cap)))).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Any, budget: int) -> None:
    """Read and drop the rest of a request body, at most ``budget`` bytes."""
    seen = 0
    while seen <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return

"""The FastAPI app of ``manet serve``: the search API, health and readiness, metrics, the page.

Build it with :func:`create_app` (one per worker process; ``manet serve --workers N`` has uvicorn
call :func:`app_from_environment` in each). The routes are thin: parameters are validated by
pydantic (422 with one-line JSON, and the OpenAPI schema at ``/openapi.json``, the docs at
``/docs``), the work is :class:`~manet.serve.service.SearchService`'s, and every error is one line
of JSON (:mod:`manet.serve.errors`).
"""

from __future__ import annotations

import hmac
import json
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError

from manet import __version__, config
from manet.serve.errors import BodyLimitMiddleware, UploadTooLarge, install_error_handlers
from manet.serve.metrics import Metrics, MetricsMiddleware
from manet.serve.schemas import (
    ERROR_RESPONSES,
    ModelsOut,
    ProductOut,
    SearchOut,
    SearchParams,
    search_request_body,
)
from manet.serve.service import SearchService, ServeOptions
from manet.settings import Settings

_PLACEHOLDER = ("<!doctype html><title>manet</title><h1>manet search service</h1>"
                "<p>API: <a href='/docs'>/docs</a></p>")


def create_app(settings: Settings, *, model: str | None = None, api_key: str | None = None,
               max_batch: int = config.DEFAULT_SERVE_MAX_BATCH,
               batch_wait_ms: float = config.DEFAULT_SERVE_BATCH_WAIT_MS,
               max_upload_bytes: int = config.DEFAULT_SERVE_MAX_UPLOAD_BYTES,
               retriever: Any = None) -> FastAPI:
    """The search service over ``settings``' database: ``model`` answers requests that name
    none; ``api_key`` (when set) guards ``/v1`` and ``/metrics``; up to ``max_batch`` concurrent
    queries share a forward pass, the first waiting ``batch_wait_ms`` for company (1: no
    batching); an upload over ``max_upload_bytes`` (or settings' byte cap) gets 413. A given
    ``retriever`` is used (and left open), else one is made from ``settings`` and closed at exit.
    Nothing connects or loads before the server starts."""
    if not max_upload_bytes >= 1:
        raise ValueError(f"max_upload_bytes must be a positive byte count, got {max_upload_bytes!r}")
    owns = retriever is None
    if retriever is None:
        from manet.api import Retriever

        retriever = Retriever(settings=settings)
    options = ServeOptions(model=model, api_key=api_key or None, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                           max_upload_bytes=min(max_upload_bytes, retriever.limits.max_bytes))
    metrics = Metrics()
    # FastAPIOffline: FastAPI whose /docs and /redoc load their scripts from this server.
    app = FastAPIOffline(title="manet search", version=__version__, lifespan=_lifespan,
                  description="Cross-domain product image retrieval: upload a photo, get the catalogue's "
                              "nearest products. Errors are one line of JSON: {\"error\": \"...\"}.")
    app.state.service = SearchService(retriever, options, metrics, owns_retriever=owns)
    install_error_handlers(app, metrics)
    guard = [Depends(_key_guard(options.api_key))] if options.api_key else []
    _add_routes(app, guard)
    # Outermost first in the list's reverse: metrics see every answer, the 413 of a lying
    # Content-Length too.
    app.add_middleware(BodyLimitMiddleware, max_upload_bytes=options.max_upload_bytes, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(NoSniffMiddleware)
    return app


def app_from_environment() -> FastAPI:
    """uvicorn's app factory in each worker process of ``manet serve --workers N``: the settings
    and serve options that the command put in the environment (:func:`manet.settings.serve_options`)."""
    from manet.settings import serve_options

    options = serve_options()
    return create_app(Settings.from_environment(), **options)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> Any:
    service: SearchService = app.state.service
    service.start()
    try:
        yield
    finally:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(service.close)


class NoSniffMiddleware:
    """``X-Content-Type-Options: nosniff`` on every answer: a browser renders what the content
    type says, never what a thumbnail or error body might look like."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def with_header(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, with_header if scope["type"] == "http" else send)


# -- the API key -------------------------------------------------------------------------

_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
KeyHeader = Annotated[str | None, Security(_KEY_HEADER)]


def _key_guard(api_key: str) -> Any:
    """A dependency that lets a request through only with ``api_key`` (compared in constant time)."""
    expected = api_key.encode()

    async def require_key(bearer: Bearer, header: KeyHeader) -> None:
        given = bearer.credentials if bearer is not None else header
        if not given:
            raise HTTPException(401, "this server needs an API key: send Authorization: Bearer KEY or X-API-Key: KEY",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), expected):
            raise HTTPException(403, "wrong API key; ask the server's operator for the key (MANET_API_KEY)")

    return require_key


# -- routes ------------------------------------------------------------------------------

def _service(request: Request) -> SearchService:
    return request.app.state.service


Service = Annotated[SearchService, Depends(_service)]


def _add_routes(app: FastAPI, guard: list[Any]) -> None:
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False, response_class=HTMLResponse)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["health"])
    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["health"], responses={503: ERROR_RESPONSES[503]})
    app.add_api_route("/metrics", metrics_text, methods=["GET"], tags=["health"], dependencies=guard,
                      response_class=Response)
    v1 = {"dependencies": guard, "tags": ["search"], "responses": ERROR_RESPONSES}
    app.add_api_route("/v1/search", search, methods=["POST"], response_model=SearchOut,
                      openapi_extra={"requestBody": search_request_body()}, **v1)
    app.add_api_route("/v1/products/{sku:path}", product, methods=["GET"], response_model=ProductOut, **v1)
    app.add_api_route("/v1/images/{image_id}/thumbnail", thumbnail, methods=["GET"], response_class=Response,
                      **v1)
    app.add_api_route("/v1/models", models, methods=["GET"], response_model=ModelsOut, **v1)


async def page() -> HTMLResponse:
    """The search page (``manet.serve.page``), or a pointer to the API docs without it."""
    try:
        from manet.serve.page import page_html
    except ImportError:
        return HTMLResponse(_PLACEHOLDER)
    return HTMLResponse(page_html())


async def healthz() -> dict[str, str]:
    """The process is up (it says nothing of the database: see /readyz)."""
    return {"status": "ok"}


async def readyz(service: Service) -> JSONResponse:
    """Ready to search: the database answers and the default model is loaded (503 until then)."""
    ready, checks = await service.readiness()
    if ready:
        return JSONResponse({"status": "ready", **checks})
    failing = checks["database"] if checks["database"] != "ok" else f"model {checks['model']} is not loaded yet"
    return JSONResponse({"error": f"not ready: {failing}", **checks}, status_code=503)


async def metrics_text(service: Service) -> Response:
    """Prometheus text format: requests by route and status, latency, batch sizes, errors."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)


async def search(request: Request, service: Service) -> dict[str, Any]:
    """Top-k catalogue products for an uploaded photo (multipart/form-data: the file in field
    ``image``, parameters as fields) or a stored image (application/json: ``{"image_id": N, ...}``).
    The hits are ``manet search --json``'s, each with its thumbnail's URL."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        data, params = await _read_upload(request, service.options.max_upload_bytes)
        return await service.search_photo(data, params)
    if content_type == "application/json":
        params = _validated(await _read_json(request))
        if params.image_id is None:
            raise _invalid("image_id", "send image_id, or upload a photo as multipart/form-data field image")
        return await service.search_stored(params)
    raise HTTPException(415, "send a photo as multipart/form-data (field image) or a stored image as "
                             "application/json ({\"image_id\": N})")


async def product(sku: Annotated[str, Path(max_length=500)], service: Service) -> dict[str, Any]:
    """A catalogue product: its fields, categories and images (with thumbnail URLs)."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(service.product, sku)


async def thumbnail(request: Request, image_id: Annotated[int, Path(ge=1, le=2**63 - 1)], service: Service,
                    size: Annotated[int, Query(ge=16, le=1024)] = config.DEFAULT_THUMBNAIL_SIZE) -> Response:
    """A JPEG thumbnail of an image the database knows (at most ``size`` px on its long side)."""
    from starlette.concurrency import run_in_threadpool

    data, etag = await run_in_threadpool(service.thumbnail, image_id, size)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


async def models(service: Service) -> dict[str, Any]:
    """The models one can search with, and the default one."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(service.models)


# -- request bodies ----------------------------------------------------------------------

async def _read_upload(request: Request, limit: int) -> tuple[bytes, SearchParams]:
    """The photo (at most ``limit`` bytes) and the parameters of a multipart search."""
    form = await request.form(max_files=1, max_fields=20)
    try:
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise _invalid("image", "send the photo as the multipart file field image")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise UploadTooLarge(limit)
        fields: dict[str, Any] = {key: value for key, value in form.multi_items()
                                  if key != "image" and isinstance(value, str)}
    finally:
        await form.close()
    if "rerank_params" in fields:
        fields["rerank_params"] = _json_field("rerank_params", fields["rerank_params"])
    params = _validated(fields)
    if params.image_id is not None:
        raise _invalid("image_id", "give a photo or an image_id, not both")
    return data, params


async def _read_json(request: Request) -> Any:
    body = await request.body()
    return _json_field("body", body)


def _json_field(name: str, text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(name, f"not valid JSON ({exc})") from None


def _validated(data: Any) -> SearchParams:
    if not isinstance(data, dict):
        raise _invalid("body", "send a JSON object")
    try:
        return SearchParams.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (field,), "msg": message, "type": "value_error"}])

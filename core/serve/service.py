"""What the HTTP routes do, without HTTP: decode a photo, embed it in a micro-batch, search,
look rows up, make thumbnails. One :class:`SearchService` per app (per worker process) holds the
:class:`~manet.Retriever` (its pipelines are built once, in the batcher's thread) and the
:class:`~manet.serve.batcher.MicroBatcher`.

Blocking work (decoding, SQL, PIL) runs in the thread pool, the network in the batcher's one
thread, so the event loop only schedules. The search itself is :meth:`Retriever.search` given the
batched vector, the same code path (filters, re-ranking) as ``manet search``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from manet import config
from manet.errors import ImageError, ManetError, NotFoundError, one_line
from manet.serve.batcher import MicroBatcher

log = logging.getLogger("manet.serve")
#: Seconds a model's record (its input size) is reused before it is read again.
RECORD_SECONDS = 5.0

#: Formats an upload may be, by their first bytes: the decoder would open more (EPS, PSD, ...),
#: but a photo from a phone or a browser is one of these, and fewer decoders, fewer attack paths.
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


@dataclass(frozen=True)
class ServeOptions:
    """The options of ``manet serve`` beyond the global settings."""

    #: Model of the requests that name none (None: the only model, when there is one).
    model: str | None = None
    #: Key clients must send; None: open.
    api_key: str | None = None
    max_batch: int = config.DEFAULT_SERVE_MAX_BATCH
    batch_wait_ms: float = config.DEFAULT_SERVE_BATCH_WAIT_MS
    max_upload_bytes: int = config.DEFAULT_SERVE_MAX_UPLOAD_BYTES


def sniff_format(data: bytes) -> str:
    """The image format ``data`` starts with, from the content (never the client's name or type);
    ImageError when it is none of the accepted ones."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    raise ImageError(f"the upload is not a JPEG, PNG, WebP, GIF, BMP or TIFF image (it starts with {data[:8]!r}); "
                     f"send a photo in one of those formats")


class SearchService:
    """The service's work, for one app: ``start`` before serving, ``close`` after."""

    def __init__(self, retriever: Any, options: ServeOptions, metrics: Any, *, owns_retriever: bool) -> None:
        self.retriever, self.options, self.metrics = retriever, options, metrics
        self._owns_retriever = owns_retriever
        self._db_lock = threading.Lock()
        self._loaded: set[str] = set()
        self._loading: Any = None
        self._records: dict[str, tuple[float, Any]] = {}
        self.batcher = MicroBatcher(self._embed, max_batch=options.max_batch, wait_ms=options.batch_wait_ms,
                                    on_batch=metrics.observe_batch)

    # -- life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start the batcher and begin loading the default model there (readiness says when)."""
        self.batcher.start()
        if self.options.model is not None:
            self._load_default()

    def close(self) -> None:
        self.batcher.close()
        if self._owns_retriever:
            self.retriever.close()

    def database(self) -> Any:
        """The Retriever's database, connected on first use; one thread connects at a time, so a
        burst of first requests makes one engine, and an outage is retried at the next request."""
        with self._db_lock:
            return self.retriever.db

    def _load(self, name: str) -> str:
        self.database()
        self.retriever.pipeline(name)
        self._loaded.add(name)
        return name

    def _load_default(self) -> Any:
        """Load the default model in the batcher's thread, unless that is already under way."""
        if self._loading is None or self._loading.done():
            name = self.options.model
            self._loading = self.batcher.call(lambda: self._load(name))
        return self._loading

    def _embed(self, name: Hashable, tensors: list[Any]) -> list[Any]:
        """The batcher's function: one forward pass of model ``name`` over ``tensors``."""
        from manet.extract.run import embed_tensors

        pipeline = self.retriever.pipeline(name)
        self._loaded.add(str(name))
        vectors = embed_tensors(pipeline, tensors, self.retriever.device, precision=self.retriever.precision)
        return list(vectors)

    # -- readiness -------------------------------------------------------------------
    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks): the database answers, and the default model (if any) is loaded."""
        from manet.serve.errors import message_of, status_of

        checks: dict[str, Any] = {"database": "ok", "model": self.options.model, "model_loaded": None}
        ready = True
        try:
            db = await run_in_threadpool(self.database)
            await run_in_threadpool(db.check_connection)
        except Exception as exc:  # any failure means "not ready", said in one line
            checks["database"], ready = message_of(exc, status_of(exc)), False
        if self.options.model is not None:
            loaded = self.options.model in self._loaded
            checks["model_loaded"] = loaded
            if not loaded:
                ready, previous = False, self._loading
                if previous is not None and previous.done() and previous.exception() is not None:
                    checks["model_error"] = one_line(previous.exception())
                self._load_default()  # again: the database may be back
        return ready, checks

    # -- search ------------------------------------------------------------------------
    async def model_record(self, requested: str | None) -> Any:
        """The record of the model a request names, else the default, else the only one."""
        return await run_in_threadpool(self._model_record, requested)

    def _model_record(self, requested: str | None) -> Any:
        self.database()
        name = requested or self.options.model
        if name is None:
            names = [row["name"] for row in self.retriever.models()]
            if len(names) != 1:
                raise ManetError(f"name a model: model=NAME (known: {', '.join(names) or 'none yet'}), or start "
                                 f"the server with --model NAME")
            name = names[0]
        # Briefly cached: a photo search needs the input size before its search reads the record
        # again, and a lookup per request costs more than the rest of the request's Python.
        cached = self._records.get(name)
        if cached is not None and time.monotonic() - cached[0] < RECORD_SECONDS:
            return cached[1]
        record = self.retriever.model(name)
        self._records[name] = (time.monotonic(), record)
        return record

    async def search_photo(self, data: bytes, params: Any) -> dict[str, Any]:
        """Top-k for an uploaded photo: decoded in the thread pool, embedded in a micro-batch,
        searched like :meth:`Retriever.search` (same filters and re-ranking)."""
        record = await self.model_record(params.model)
        await run_in_threadpool(self._check_rerank, params)  # bad re-ranker parameters fail before any work
        tensor = await run_in_threadpool(self.decode, data, record.config.image_size)
        vector = await self.batcher.run(record.name, tensor)
        hits = await run_in_threadpool(self._search, record.name, params, vector=vector)
        return {"model": record.name, "k": params.k, "hits": hits}

    async def search_stored(self, params: Any) -> dict[str, Any]:
        """Top-k for a stored image's descriptor (``image_id``)."""
        record = await self.model_record(params.model)
        hits = await run_in_threadpool(self._search, record.name, params, image_id=params.image_id)
        return {"model": record.name, "k": params.k, "hits": hits}

    def decode(self, data: bytes, size: int) -> Any:
        """An upload as the (3, size, size) uint8 tensor that ``manet search FILE`` would make of it."""
        from manet.catalog.images import decode_image_tensor

        sniff_format(data)
        return decode_image_tensor(data, size, name="upload", limits=self.retriever.limits)

    def _check_rerank(self, params: Any) -> None:
        if params.rerank is not None:
            from manet.search.shortlist import check_query_reranker

            check_query_reranker(self.retriever.reranker(params.rerank, params.rerank_params), params.k,
                                 params.shortlist)

    def _search(self, name: str, params: Any, **query: Any) -> list[dict[str, Any]]:
        hits = self.retriever.search(name, k=params.k, category=params.category, brand=params.brand,
                                     ef_search=params.ef_search, rerank=params.rerank,
                                     rerank_params=params.rerank_params, shortlist=params.shortlist, **query)
        return [{**hit.as_dict(), "thumbnail_url": thumbnail_url(hit.image_id)} for hit in hits]

    # -- rows and thumbnails -----------------------------------------------------------
    def product(self, sku: str) -> dict[str, Any]:
        self.database()
        product = self.retriever.product(sku)
        for image in product["images"]:
            image["thumbnail_url"] = thumbnail_url(image["id"])
        return product

    def models(self) -> dict[str, Any]:
        self.database()
        return {"default": self.options.model, "models": self.retriever.models()}

    def thumbnail(self, image_id: int, size: int) -> tuple[bytes, str]:
        """A JPEG of stored image ``image_id``, at most ``size`` px on its long side, and its ETag;
        NotFoundError when the database has no such image or its file cannot be read."""
        from PIL import Image

        from manet.catalog.images import load_rgb

        self.database()
        uri, digest = self.retriever.image_file(image_id)
        try:  # the path comes from the database, never from the client; read under the caps
            image = load_rgb(Path(uri), at_least=size, limits=self.retriever.limits)
        except ImageError as exc:
            log.warning("thumbnail of image %s: %s", image_id, one_line(exc))
            raise NotFoundError(f"image {image_id} cannot be read on the server; its file is missing or "
                                f"damaged (the server's log says which)") from None
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85, optimize=True)
        return buffer.getvalue(), f'"{digest or image_id}-{size}"'


def thumbnail_url(image_id: int) -> str:
    """The service's path of an image's thumbnail (relative, so it works behind any proxy)."""
    return f"/v1/images/{int(image_id)}/thumbnail"

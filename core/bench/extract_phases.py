"""The timed phases of ``manet bench extract`` other than end to end (:mod:`manet.bench.extract`):
the model alone on decoded batches, the text detector alone on the same batches, and the
naive one-image loop of pgvector-python's image-search example."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from manet.store.database import Database


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def measure_model_only(forward: Any, batches: list[Any], device: str, min_batches: int,
                       min_seconds: float) -> tuple[float, int]:
    """Images/s of ``forward`` cycling over ``batches`` (on the device) after one warm-up pass
    over each: at least ``min_batches`` passes and ``min_seconds``. ``forward`` returns what it
    started, waited for by its ``result()`` (:class:`manet.extract.forward.PendingVectors`), so that a
    CUDA pipeline queues the next batch meanwhile. Returns (images/s, images)."""
    for batch in batches:
        forward(batch).result()
    _sync(device)
    pending, images, started = [], 0, time.perf_counter()
    while len(pending) < min_batches or time.perf_counter() - started < min_seconds:
        batch = batches[len(pending) % len(batches)]
        pending.append(forward(batch))
        images += len(batch)
    for result in pending:
        result.result()
    _sync(device)
    return images / (time.perf_counter() - started), images


class _Finished:
    """A result computed already, waited for as :func:`measure_model_only` waits for a forward's."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def text_detection(pipeline: Any, batches: list[Any]) -> tuple[Callable[[Any], _Finished], list[Any]]:
    """``pipeline``'s text detector alone as :func:`measure_model_only` times a forward, and its
    inputs for ``batches`` (uint8, on the device): the call of the pipeline's forward pass,
    ``detect(unit, size)``, on the images in [0, 1] (float32, channels_last as
    :func:`manet.extract.forward.start_pipeline` feeds them) at the size of the feature map. That size
    comes from one real forward pass: a size that is not a multiple of the backbone's stride
    rounds up or down depending on the network."""
    import torch

    units = [batch.contiguous(memory_format=torch.channels_last).float().div_(255.0) for batch in batches]
    with torch.inference_mode():
        size = tuple(pipeline.attention_maps(batches[0][:1])["features"].shape[-2:])

    def detect(unit: Any) -> _Finished:
        with torch.inference_mode():  # as in every forward pass (manet.extract.forward.forward_pass)
            return _Finished(pipeline.text.detect(unit, size))

    return detect, units


def measure_naive(db: Database, model_id: int, pipeline: Any, items: list[tuple[int, bool, str]], size: int,
                  device: str) -> tuple[float, int]:
    """Images/s of the one-image loop of pgvector-python's image-search example (see the module
    docstring) over ``items``, after one untimed warm-up image. Returns (images/s, images)."""
    import psycopg
    import torch
    from pgvector.psycopg import register_vector
    from PIL import Image
    from torchvision.transforms import functional as F

    from manet import config
    from manet.store import descriptors

    with psycopg.connect(config.libpq_url(db.url), autocommit=True) as conn:
        register_vector(conn)

        def one(image_id: int, gallery: bool, uri: str) -> None:
            with Image.open(uri) as image:
                pixels = F.pil_to_tensor(F.resize(image.convert("RGB"), [size, size]))
            with torch.inference_mode():
                vector = pipeline(pixels.unsqueeze(0).to(device)).cpu().numpy()[0]
            descriptors.insert_row(conn, model_id, image_id, gallery, vector)

        one(*items[0])
        started = time.perf_counter()
        for item in items[1:]:
            one(*item)
        seconds = time.perf_counter() - started
    return (len(items) - 1) / seconds if seconds > 0 else 0.0, len(items) - 1


def first_images(db: Database, count: int) -> list[tuple[int, bool, str]]:
    """(id, gallery, uri) of the first ``count`` usable images, by id."""
    with db.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, domain = 'catalog' AS gallery, uri FROM images "
                                    "WHERE status = 'ok' ORDER BY id LIMIT :n"), {"n": count}).all()
    return [(row.id, row.gallery, row.uri) for row in rows]

"""The search service's pure parts: micro-batching on plain functions, upload sniffing and the
in-memory decoder (same tensor as the file decoder), the error mapping and the serve options."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from manet.catalog.images import decode_image_tensor, read_image_tensor
from manet.errors import DatabaseError, ImageError, ManetError, NotFoundError, PluginError
from manet.serve.batcher import MicroBatcher
from manet.serve.errors import UploadTooLarge, message_of, status_of, validation_message
from manet.serve.service import sniff_format
from manet.settings import serve_options


class Recorder:
    """A batch function that remembers each call's key and size, and can be slowed down."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.threads: set[str] = set()
        self.delay = delay

    def __call__(self, key, items):
        self.calls.append((key, len(items)))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [(key, item * 2) for item in items]


def test_concurrent_items_share_a_call_and_each_gets_its_own_result() -> None:
    run = Recorder(delay=0.02)
    seen = []
    batcher = MicroBatcher(run, max_batch=8, wait_ms=20, on_batch=lambda size, seconds: seen.append(size))
    batcher.start()
    try:
        futures = [batcher.submit("m", i) for i in range(20)]
        assert [f.result(10) for f in futures] == [("m", i * 2) for i in range(20)]
    finally:
        batcher.close()
    assert sum(size for _, size in run.calls) == 20 and max(size for _, size in run.calls) == 8
    assert len(run.calls) < 20 and seen == [size for _, size in run.calls]
    assert run.threads == {"manet-batcher"}  # one thread runs every batch
    assert (batcher.batches, batcher.items) == (len(run.calls), 20)


def test_max_batch_1_is_one_call_per_item() -> None:
    run = Recorder()
    batcher = MicroBatcher(run, max_batch=1, wait_ms=50)
    batcher.start()
    started = time.perf_counter()
    futures = [batcher.submit("m", i) for i in range(10)]
    assert [f.result(10)[1] for f in futures] == [i * 2 for i in range(10)]
    assert time.perf_counter() - started < 0.4  # no batch waits its window out
    batcher.close()
    assert run.calls == [("m", 1)] * 10


def test_keys_are_never_mixed_and_order_is_kept() -> None:
    run = Recorder()
    gate = threading.Event()
    batcher = MicroBatcher(run, max_batch=16, wait_ms=0)
    batcher.start()
    blocker = batcher.call(gate.wait)  # holds the thread while the queue fills
    futures = [batcher.submit("a" if i % 2 else "b", i) for i in range(12)]
    gate.set()
    results = [f.result(10) for f in futures]
    batcher.close()
    assert blocker.result() is True
    assert results == [("a" if i % 2 else "b", i * 2) for i in range(12)]
    assert run.calls == [("b", 6), ("a", 6)]


def test_a_failing_batch_fails_its_callers_and_the_thread_goes_on() -> None:
    def run(key, items):
        if key == "bad":
            raise ValueError("boom")
        return items

    batcher = MicroBatcher(run, max_batch=4, wait_ms=1)
    batcher.start()
    with pytest.raises(ValueError, match="boom"):
        batcher.submit("bad", 1).result(10)
    assert batcher.submit("good", 7).result(10) == 7
    wrong = MicroBatcher(lambda key, items: [], max_batch=4, wait_ms=0)
    wrong.start()
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        wrong.submit("k", 1).result(10)
    wrong.close()
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("good", 1)


def test_close_finishes_the_queue_and_a_cancelled_item_is_skipped() -> None:
    run = Recorder()
    gate = threading.Event()
    batcher = MicroBatcher(run, max_batch=4, wait_ms=0)
    batcher.start()
    batcher.call(gate.wait)
    dropped, kept = batcher.submit("m", 1), batcher.submit("m", 2)
    assert dropped.cancel()
    gate.set()
    batcher.close()
    assert kept.result(0) == ("m", 4) and run.calls == [("m", 1)]


def test_awaiting_from_an_event_loop() -> None:
    run = Recorder(delay=0.01)
    batcher = MicroBatcher(run, max_batch=32, wait_ms=10)
    batcher.start()

    async def many() -> list:
        return await asyncio.gather(*(batcher.run("m", i) for i in range(16)))

    assert asyncio.run(many()) == [("m", i * 2) for i in range(16)]
    batcher.close()
    assert len(run.calls) < 16


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(Recorder(), max_batch=0, wait_ms=1)
    with pytest.raises(ValueError, match="wait_ms"):
        MicroBatcher(Recorder(), max_batch=1, wait_ms=-1)


def test_uploads_are_sniffed_by_content_and_decode_like_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        path = tmp_path / f"photo.{fmt.lower()}"
        pixels.save(path, fmt)
        data = path.read_bytes()
        assert sniff_format(data) == fmt
        assert np.array_equal(decode_image_tensor(data, 32).numpy(), read_image_tensor(path, 32).numpy())
    for data in (b"", b"%PDF-1.4", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"%!PS-Adobe-3.0 EPSF-3.0"):
        with pytest.raises(ImageError, match="not a JPEG, PNG"):
            sniff_format(data)
    jpeg = (tmp_path / "photo.jpeg").read_bytes()
    with pytest.raises(ImageError, match="truncated"):
        decode_image_tensor(jpeg[: len(jpeg) // 2], 32)
    from manet.safe_files import ReadLimits

    with pytest.raises(ImageError, match="pixels, over the cap"):
        decode_image_tensor(jpeg, 32, limits=ReadLimits(max_pixels=1000))
    with pytest.raises(ImageError, match="over the cap of 100 bytes"):
        decode_image_tensor(jpeg, 32, limits=ReadLimits(max_bytes=100))


def test_errors_map_to_statuses_and_hide_details() -> None:
    import psycopg
    import sqlalchemy.exc

    assert status_of(ImageError("x")) == 400
    assert status_of(NotFoundError("x")) == 404
    assert status_of(UploadTooLarge(10)) == 413
    assert status_of(PluginError("x")) == 422 and status_of(ManetError("x")) == 422
    down = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("host db.internal:5432 refused"))
    for exc in (DatabaseError("cannot connect to postgresql://u:pw@db.internal/x"), down,
                psycopg.OperationalError("server closed the connection")):
        assert status_of(exc) == 503
        assert "db.internal" not in message_of(exc, 503) and "pw" not in message_of(exc, 503)
    assert status_of(KeyError("secret")) == 500 and "secret" not in message_of(KeyError("secret"), 500)
    assert validation_message([{"loc": ("body", "k"), "msg": "Input should be less than or equal to 1000"}]) \
        .startswith("k: Input should be less than or equal to 1000")


def test_serve_options_from_the_environment() -> None:
    env = {"MANET_SERVE_MODEL": "tiny", "MANET_API_KEY": "k", "MANET_SERVE_MAX_BATCH": "4",
           "MANET_SERVE_BATCH_WAIT_MS": "2.5", "MANET_SERVE_MAX_UPLOAD_BYTES": "1000", "MANET_SERVE_PORT": "9"}
    assert serve_options(env) == {"model": "tiny", "api_key": "k", "max_batch": 4, "batch_wait_ms": 2.5,
                                  "max_upload_bytes": 1000}
    assert serve_options({}) == {}
    with pytest.raises(ManetError, match="MANET_SERVE_MAX_BATCH"):
        serve_options({"MANET_SERVE_MAX_BATCH": "many"})

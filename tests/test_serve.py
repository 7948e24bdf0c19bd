"""``manet serve``: the real server (:class:`ServerThread`) on a loopback port, real files, the real
database and a tiny random model; every endpoint, every error status, the command itself, and 8
clients x 200 searches while a worker extracts, each equal to ``Retriever.search``."""

from __future__ import annotations

import http.client
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from helpers import TINY_MODEL
from manet.serve.app import create_app
from manet.serve.runner import ServerThread
from manet.settings import Settings
from serve_client import (
    assert_error,
    assert_same_hits,
    call,
    free_port,
    multipart,
    search_json,
    search_photo,
    wait_ready,
)

API_KEY = "s3cret-key"
STRICT_UPLOAD_BYTES, STRICT_PIXELS = 20_000, 5_000  # the strict server's caps; a 96 px photo: ~4 KB, 9,216 px


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photos(small_catalogue: Path) -> list[Path]:
    return sorted((small_catalogue.parent / "query").glob("*.jpg"))


@pytest.fixture(scope="module")
def server(populated) -> Iterator[ServerThread]:
    """The service on the module's database, model ``tiny`` by default, its own Retriever."""
    app = create_app(populated.settings, model="tiny")
    with ServerThread(app) as running:
        wait_ready(running.url)
        yield running


@pytest.fixture(scope="module")
def strict(populated) -> Iterator[ServerThread]:
    """A server with an API key, a 20,000-byte upload cap and a 5,000-pixel cap."""
    settings = populated.settings.with_options(max_pixels=STRICT_PIXELS)
    app = create_app(settings, model="tiny", api_key=API_KEY, max_upload_bytes=STRICT_UPLOAD_BYTES)
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real PNG of 200 x 200 random pixels: about 120 KB, 40,000 pixels."""
    path = tmp_path_factory.mktemp("noise") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


# -- the endpoints -------------------------------------------------------------------------

def test_health_readiness_models_schema_docs_and_page(server, populated) -> None:
    assert call(server.url, "GET", "/healthz").json() == {"status": "ok"}
    ready = wait_ready(server.url)
    assert ready["status"] == "ready" and ready["database"] == "ok" and ready["model_loaded"] is True
    models = call(server.url, "GET", "/v1/models").json()
    assert models["default"] == "tiny"
    assert [m["name"] for m in models["models"]] == [m["name"] for m in populated.models()]
    schema = call(server.url, "GET", "/openapi.json").json()
    assert {"/v1/search", "/v1/products/{sku}", "/v1/images/{image_id}/thumbnail", "/v1/models", "/healthz",
            "/readyz", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    docs = call(server.url, "GET", "/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower()
    # The docs page loads Swagger UI from this server, not a CDN: it works offline.
    scripts = re.findall(rb'<script src="([^"]+)"', docs.body)
    assert scripts and all(src.startswith(b"/") for src in scripts), scripts
    for src in scripts:
        asset = call(server.url, "GET", src.decode())
        assert asset.status == 200 and len(asset.body) > 100_000
    page = call(server.url, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"


def test_search_with_a_photo_equals_retriever_search(server, populated, photos) -> None:
    for photo in photos[:4]:
        reply = search_photo(server.url, photo.read_bytes(), k=5)
        assert reply.status == 200, reply.body
        result = reply.json()
        assert result["model"] == "tiny" and result["k"] == 5
        assert_same_hits(result["hits"], populated.search("tiny", image=photo, k=5))


def test_search_with_a_stored_image_and_every_parameter(server, populated, photos) -> None:
    with populated.db.begin() as conn:
        image_id, brand, category = conn.execute(sa.text(
            "SELECT i.id, p.brand, c.name FROM images i JOIN products p ON p.id = i.product_id "
            "JOIN product_categories pc ON pc.product_id = p.id JOIN categories c ON c.id = pc.category_id "
            "WHERE i.domain = 'query' ORDER BY i.id LIMIT 1")).one()
    reply = search_json(server.url, {"image_id": image_id, "k": 3, "model": "tiny"})
    assert reply.status == 200, reply.body
    assert_same_hits(reply.json()["hits"], populated.search("tiny", image_id=image_id, k=3))
    filtered = search_json(server.url, {"image_id": image_id, "brand": brand, "category": category, "ef_search": 100})
    assert filtered.status == 200 and filtered.json()["hits"]
    assert {hit["brand"] for hit in filtered.json()["hits"]} == {brand}
    assert_same_hits(filtered.json()["hits"], populated.search("tiny", image_id=image_id, brand=brand,
                                                               category=category, ef_search=100))
    reranked = search_photo(server.url, photos[0].read_bytes(), k=4, rerank="aqe", shortlist=8,
                            rerank_params=json.dumps({"top_n": 2}))
    assert reranked.status == 200, reranked.body
    assert_same_hits(reranked.json()["hits"], populated.search("tiny", image=photos[0], k=4, rerank="aqe",
                                                               shortlist=8, rerank_params={"top_n": 2}))


def test_product_and_thumbnail(server, populated) -> None:
    hit = populated.search("tiny", image_id=1, k=1)[0]
    product = call(server.url, "GET", f"/v1/products/{hit.sku}").json()
    assert product["sku"] == hit.sku and product["title"] == hit.title and product["brand"] == hit.brand
    assert product["categories"] and hit.image_id in [image["id"] for image in product["images"]]
    reply = call(server.url, "GET", product["images"][0]["thumbnail_url"])
    assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
    assert reply.headers["x-content-type-options"] == "nosniff" and "max-age" in reply.headers["cache-control"]
    thumb = Image.open(io.BytesIO(reply.body))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    small = call(server.url, "GET", f"/v1/images/{hit.image_id}/thumbnail?size=32")
    assert max(Image.open(io.BytesIO(small.body)).size) <= 32
    again = call(server.url, "GET", product["images"][0]["thumbnail_url"],
                 headers={"If-None-Match": reply.headers["etag"]})
    assert again.status == 304 and again.body == b""


def test_a_thumbnail_comes_only_from_a_file_the_database_names(server, populated, tmp_path) -> None:
    for path in ("/v1/images/999999/thumbnail", "/v1/images/..%2F..%2Fetc%2Fpasswd/thumbnail",
                 "/v1/images/%2Fetc%2Fpasswd/thumbnail"):
        reply = call(server.url, "GET", path)
        assert reply.status in (404, 422), (path, reply.status)
        assert_error(reply, reply.status)
    # A row whose file is gone: 404, and the path is not told to the client.
    missing = tmp_path / "gone.jpg"
    with populated.db.begin() as conn:
        image_id = conn.execute(sa.text("INSERT INTO images (uri, domain, status) VALUES (:u, 'query', 'failed') "
                                        "RETURNING id"), {"u": str(missing)}).scalar()
    try:
        message = assert_error(call(server.url, "GET", f"/v1/images/{image_id}/thumbnail"), 404, "cannot be read")
        assert str(tmp_path) not in message
    finally:
        with populated.db.begin() as conn:
            conn.execute(sa.text("DELETE FROM images WHERE id = :i"), {"i": image_id})


# -- every error status --------------------------------------------------------------------

def test_bad_images_are_400(server, photos, tmp_path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("these are not pixels\n" * 20)
    assert_error(search_photo(server.url, text.read_bytes()), 400, "not a JPEG, PNG")
    truncated = photos[0].read_bytes()[: len(photos[0].read_bytes()) // 2]
    assert_error(search_photo(server.url, truncated), 400, "truncated")
    damaged = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    assert_error(search_photo(server.url, damaged), 400, "upload")
    assert_error(search_photo(server.url, b""), 400, "not a JPEG")


def test_unknown_things_are_404(server) -> None:
    assert_error(search_photo(server.url, b"\xff\xd8\xff", model="no-such-model"), 404, "no-such-model")
    assert_error(search_json(server.url, {"image_id": 987654}), 404, "987654")
    assert_error(call(server.url, "GET", "/v1/products/NO-SUCH-SKU"), 404, "NO-SUCH-SKU")
    assert_error(call(server.url, "GET", "/v1/products/NO%2FSUCH"), 404, "'NO/SUCH'")  # a SKU may hold a /
    assert_error(call(server.url, "GET", "/v1/nothing-here"), 404, "/v1/nothing-here")


def test_bad_parameters_are_422(server, photos) -> None:
    photo = photos[0].read_bytes()
    for fields in ({"k": 0}, {"k": 1001}, {"k": "seven"}, {"ef_search": 0}, {"colour": "red"},
                   {"rerank": "no-such-reranker"}, {"rerank": "aqe", "rerank_params": "{not json"},
                   {"image_id": 1}):
        reply = search_photo(server.url, photo, **fields)
        assert_error(reply, 422)
    assert "k" in assert_error(search_photo(server.url, photo, k=1001), 422, "1000")
    assert_error(search_json(server.url, {"k": 3}), 422, "image_id")
    assert_error(search_json(server.url, b"{broken"), 422, "JSON")
    assert_error(search_json(server.url, [1, 2]), 422, "object")
    assert_error(call(server.url, "GET", "/v1/images/1/thumbnail?size=5"), 422, "size")
    body, headers = multipart(photo)
    no_image = body.replace(b'name="image"', b'name="picture"')
    assert_error(call(server.url, "POST", "/v1/search", no_image, headers), 422, "image")
    assert_error(call(server.url, "POST", "/v1/search", b"k=3", {"Content-Type": "text/plain"}), 415)


def test_uploads_over_the_caps_are_413_or_400(strict, noise_png, photos) -> None:
    key = {"X-API-Key": API_KEY}
    assert len(noise_png) > 3 * STRICT_UPLOAD_BYTES
    assert_error(search_photo(strict.url, noise_png, headers=key), 413, str(STRICT_UPLOAD_BYTES))
    # Chunked: no Content-Length to go by, the bytes are counted as they arrive.
    body, headers = multipart(noise_png)
    chunks = (body[i:i + 8192] for i in range(0, len(body), 8192))
    reply = call(strict.url, "POST", "/v1/search", chunks, {**headers, **key}, encode_chunked=True)
    assert_error(reply, 413, "--max-upload-bytes")
    # A declared length far over the cap is refused before anything is read.
    conn = http.client.HTTPConnection(urlsplit(strict.url).hostname, urlsplit(strict.url).port, timeout=30)
    conn.putrequest("POST", "/v1/search")
    for name, value in {**headers, **key, "Content-Length": str(10**12)}.items():
        conn.putheader(name, value)
    conn.endheaders(b"--x\r\n")
    response = conn.getresponse()
    assert response.status == 413 and "over the cap" in json.loads(response.read())["error"]
    conn.close()
    # Under the byte cap, over the pixel cap (96 x 96 > 5,000): refused from its header.
    assert_error(search_photo(strict.url, photos[0].read_bytes(), headers=key), 400, "pixels")


def test_api_key(strict) -> None:
    assert call(strict.url, "GET", "/healthz").status == 200  # the orchestrator's probe needs no key
    missing = call(strict.url, "GET", "/v1/models")
    assert_error(missing, 401, "API key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(call(strict.url, "GET", "/v1/models", headers={"X-API-Key": "wrong"}), 403, "wrong API key")
    assert_error(call(strict.url, "GET", "/metrics", headers={"Authorization": "Bearer wrong"}), 403)
    assert_error(search_json(strict.url, {"image_id": 1}), 401)
    assert call(strict.url, "GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status == 200
    assert call(strict.url, "GET", "/v1/models", headers={"X-API-Key": API_KEY}).status == 200
    assert call(strict.url, "GET", "/metrics", headers={"X-API-Key": API_KEY}).status == 200


def test_an_unreachable_database_is_503_and_the_process_stays_healthy(photos) -> None:
    settings = Settings(database_url="postgresql://manet@127.0.0.1:1/manet", device="cpu")
    with ServerThread(create_app(settings, model="tiny")) as down:
        assert call(down.url, "GET", "/healthz").status == 200
        ready = call(down.url, "GET", "/readyz")
        message = assert_error(ready, 503, "not ready", "database")
        assert "127.0.0.1:1" not in message and "postgresql://" not in message
        for reply in (call(down.url, "GET", "/v1/models"), search_json(down.url, {"image_id": 1}),
                      search_photo(down.url, photos[0].read_bytes()),
                      call(down.url, "GET", "/v1/products/syn00000"), call(down.url, "GET", "/v1/images/1/thumbnail")):
            assert "port 1" not in assert_error(reply, 503, "database is unavailable")


def test_a_model_damaged_in_the_database_is_500_not_the_callers_fault(server, populated) -> None:
    """Index options or settings edited in the database are the operator's to repair: 500 with the
    fixed line (the one-line reason goes to the server's log), never 422 or 503."""
    populated.create_model("broken", pooling="mac", **TINY_MODEL)
    populated.extract("broken")
    populated.build_index("broken")
    try:
        for column, damaged in (("index_options", '{"quantize": 5}'), ("config", "[]")):
            with populated.db.begin() as conn:
                good = conn.execute(sa.text(f"SELECT {column}::text FROM models WHERE name = 'broken'")).scalar()
                conn.execute(sa.text(f"UPDATE models SET {column} = CAST(:v AS jsonb) WHERE name = 'broken'"),
                             {"v": damaged})
            assert_error(search_json(server.url, {"image_id": 1, "model": "broken"}), 500, "internal error")
            assert search_json(server.url, {"image_id": 1}).status == 200  # the other models still answer
            with populated.db.begin() as conn:
                conn.execute(sa.text(f"UPDATE models SET {column} = CAST(:v AS jsonb) WHERE name = 'broken'"),
                             {"v": good})
        assert search_json(server.url, {"image_id": 1, "model": "broken"}).status == 200
    finally:
        populated.delete_model("broken")


def test_a_read_only_role_serves_every_endpoint(populated, database_url, photos) -> None:
    populated.db.grant_reader("serve_reader")
    reader = Settings(database_url=database_url.replace("postgres:@", "serve_reader@", 1), device="cpu")
    with ServerThread(create_app(reader, model="tiny")) as running:
        wait_ready(running.url)
        reply = search_photo(running.url, photos[1].read_bytes(), k=3)
        assert reply.status == 200, reply.body
        assert_same_hits(reply.json()["hits"], populated.search("tiny", image=photos[1], k=3))
        assert search_json(running.url, {"image_id": 1, "rerank": "aqe"}).status == 200
        sku = reply.json()["hits"][0]["sku"]
        assert call(running.url, "GET", f"/v1/products/{sku}").status == 200
        assert call(running.url, "GET", reply.json()["hits"][0]["thumbnail_url"]).status == 200
        assert call(running.url, "GET", "/v1/models").status == 200


# -- the command ---------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_manet_serve_command(populated, database_url, workers) -> None:
    """``manet serve`` in its own process, options from the command line and the environment;
    with 2 workers each process builds the app from the settings the command passed down."""
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_DEVICE": "cpu", "MANET_API_KEY": API_KEY,
           "MANET_SERVE_WORKERS": workers, "MANET_SERVE_MAX_UPLOAD_BYTES": "30000"}
    process = subprocess.Popen([sys.executable, "-m", "manet.cli", "serve", "--port", str(port), "--model", "tiny",
                                "--max-batch", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if call(url, "GET", "/readyz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "manet serve did not become ready"
            time.sleep(0.2)
        key = {"X-API-Key": API_KEY}
        reply = search_json(url, {"image_id": 1, "k": 3}, headers=key)
        assert reply.status == 200, reply.body
        assert_same_hits(reply.json()["hits"], populated.search("tiny", image_id=1, k=3))
        assert search_json(url, {"image_id": 1}).status == 401
        assert_error(search_photo(url, b"\xff\xd8\xff" + b"0" * 40_000, headers=key), 413, "30000")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            output = process.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
    assert process.returncode == 0, output
    assert f"serving on http://127.0.0.1:{port}" in output and "Traceback" not in output


# -- load: micro-batching under concurrency, beside an extraction --------------------------

#: The load test's model: the tiny one at 32 px, so that 1,600 searches stay a few seconds of CPU.
SWIFT_MODEL = {**TINY_MODEL, "image_size": 32, "pooling": "mac"}


def _background_workers(database_url: str, populated: Any, stop: threading.Event, report: dict[str, Any]) -> None:
    """``manet worker --until-empty`` processes, one after another, each extracting a new model,
    until ``stop``; one OpenMP thread each, as a worker beside a server would be given."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    while not stop.is_set():
        name = f"background{len(report['models'])}"
        populated.create_model(name, **TINY_MODEL)
        report["models"].append(name)
        done = subprocess.run([sys.executable, "-m", "manet.cli", "-q", "worker", "--model", name, "--until-empty",
                               "--batch-size", "4", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report["extracted"] += json.loads(done.stdout)["extracted"]


def _client(url: str, photos: list[Path], payloads: dict[Path, bytes], expected: dict[Path, list[Any]],
            offset: int, searches: int) -> int:
    """``searches`` photo searches on one keep-alive connection; returns how many succeeded, after
    checking each against Retriever.search."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    done = 0
    try:
        for i in range(searches):
            photo = photos[(offset + i) % len(photos)]
            body, headers = multipart(payloads[photo], k=5, model="swift")
            reply = call(url, "POST", "/v1/search", body, headers, conn=conn)
            assert reply.status == 200, reply.body
            assert_same_hits(reply.json()["hits"], expected[photo])
            done += 1
    finally:
        conn.close()
    return done


def test_load_8_clients_x_200_searches_while_a_worker_extracts(server, populated, photos, database_url) -> None:
    clients, searches = 8, 200
    populated.create_model("swift", **SWIFT_MODEL)
    populated.extract("swift")
    populated.build_index("swift")
    expected = {photo: populated.search("swift", image=photo, k=5) for photo in photos}
    payloads = {photo: photo.read_bytes() for photo in photos}
    service = server.app.state.service
    batches_before, items_before = service.batcher.batches, service.batcher.items
    stop, report = threading.Event(), {"models": [], "extracted": 0}
    worker = threading.Thread(target=_background_workers, args=(database_url, populated, stop, report))
    worker.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(clients) as pool:
            done = list(pool.map(lambda n: _client(server.url, photos, payloads, expected, n * 7, searches),
                                 range(clients)))
    finally:
        stop.set()
        worker.join(300)
    seconds = time.perf_counter() - started
    assert done == [searches] * clients  # every search answered 200 with Retriever.search's hits
    assert report["extracted"] > 0, "the worker extracted nothing during the load"
    items = service.batcher.items - items_before
    batches = service.batcher.batches - batches_before
    assert items == clients * searches
    assert batches < items, "no two concurrent queries shared a forward pass"
    print(f"\n{items} searches in {seconds:.1f} s ({items / seconds:.0f}/s), {batches} forward passes "
          f"(mean batch {items / batches:.2f}); workers extracted {report['extracted']} images "
          f"for {len(report['models'])} models")
    metrics = call(server.url, "GET", "/metrics").body.decode()
    assert 'manet_http_requests_total{method="POST",route="/v1/search",status="200"}' in metrics
    assert "manet_batch_size_bucket" in metrics and "manet_http_request_duration_seconds_bucket" in metrics
    for name in report["models"]:
        populated.delete_model(name)


def test_metrics_count_requests_batches_and_errors(server, photos) -> None:
    search_photo(server.url, b"not an image at all")
    assert search_photo(server.url, photos[0].read_bytes()).status == 200
    text = call(server.url, "GET", "/metrics").body.decode()
    assert 'manet_errors_total{kind="bad_image"}' in text
    assert 'route="/v1/images/{image_id}/thumbnail"' in text  # the template, never the raw path
    assert 'manet_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    count = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("manet_batch_size_count"))
    assert count >= 1

"""A small HTTP client for the search service's tests (the standard library's http.client):
requests, multipart photo uploads, and the checks every answer gets."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         conn: http.client.HTTPConnection | None = None, **options: Any) -> Reply:
    """One request; a fresh connection unless ``conn`` (keep-alive) is given."""
    own = conn is None
    if own:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {}, **options)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        if own:
            conn.close()


def multipart(data: bytes, filename: str = "photo.jpg", **fields: Any) -> tuple[bytes, dict[str, str]]:
    boundary = "manet-" + uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def search_photo(url: str, data: bytes, headers: dict[str, str] | None = None, **fields: Any) -> Reply:
    body, content_type = multipart(data, **fields)
    return call(url, "POST", "/v1/search", body, {**content_type, **(headers or {})})


def search_json(url: str, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return call(url, "POST", "/v1/search", body, {"Content-Type": "application/json", **(headers or {})})


def assert_error(reply: Reply, status: int, *words: str) -> str:
    """A one-line JSON error with ``status`` whose message has ``words``, and no trace in it."""
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("application/json")
    text = reply.body.decode()
    assert "\n" not in text.strip() and "Traceback" not in text and 'File "' not in text, text
    message = reply.json()["error"]
    assert message and "\n" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def assert_same_hits(got: list[dict[str, Any]], expected: list[Any]) -> None:
    """The hits of ``Retriever.search``: same images in the same order with the same fields;
    scores to float32 precision (a batch's forward pass may round differently), so two images
    whose scores tie at that precision may trade places."""
    assert len(got) == len(expected)
    for hit, want in zip(got, expected):
        assert hit["score"] == pytest.approx(want.score, abs=1e-4)
        if hit["image_id"] != want.image_id:
            assert any(h["image_id"] == want.image_id and h["score"] == pytest.approx(want.score, abs=1e-4)
                       for h in got), (hit, want)
            continue
        assert {k: v for k, v in hit.items() if k not in ("score", "thumbnail_url")} == \
               {k: v for k, v in want.as_dict().items() if k != "score"}
        assert hit["thumbnail_url"] == f"/v1/images/{want.image_id}/thumbnail"


def wait_ready(url: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = call(url, "GET", "/readyz")
        if reply.status == 200 or time.monotonic() > deadline:
            assert reply.status == 200, reply.body
            return reply.json()
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

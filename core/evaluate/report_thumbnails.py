"""The thumbnails embedded in a page: base64 JPEG, one per distinct image, read with manet's
safe decoder; an image that cannot be read yields the reason instead, never an exception."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from manet.catalog.images import load_rgb
from manet.errors import one_line
from manet.evaluate.report_items import Item
from manet.safe_files import ReadLimits

#: Long side of an embedded thumbnail, pixels.
THUMB_SIZE = 128
#: JPEG quality of the embedded thumbnails.
THUMB_QUALITY = 80


def _thumbnail(path: Path, size: int, quality: int, limits: ReadLimits | None = None) -> str:
    """Base64 JPEG of ``path`` at most ``size`` px on its long side (manet's safe decoder)."""
    image = load_rgb(path, at_least=size, limits=limits)  # a large JPEG decodes at a reduced DCT scale
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _encode(uri: str | None, size: int, quality: int, limits: ReadLimits | None = None
            ) -> tuple[str | None, str | None]:
    """(base64 JPEG, None) or (None, the reason the image cannot be shown)."""
    if uri is None:
        return None, "image no longer in the database"
    try:
        return _thumbnail(Path(uri), size, quality, limits), None
    # A page must not fail on one bad file: whatever goes wrong becomes its placeholder's text.
    except Exception as exc:  # noqa: BLE001
        return None, one_line(exc)


def encode_thumbnails(items: Iterable[Item], size: int = THUMB_SIZE, quality: int = THUMB_QUALITY,
                      limits: ReadLimits | None = None) -> dict[str, tuple[str | None, str | None]]:
    """Thumbnail (or the error) of each distinct image in ``items``, keyed by :attr:`Item.key`;
    each file is read under ``limits`` (a pipe, a device or a stuck file becomes its error)."""
    uris: dict[str, str | None] = {}
    for item in items:
        uris.setdefault(item.key, item.uri)
    # PIL releases the GIL while decoding and encoding, so threads decode in parallel.
    workers = max(1, min(8, os.cpu_count() or 1, len(uris)))
    with ThreadPoolExecutor(workers) as pool:
        encoded = pool.map(lambda uri: _encode(uri, size, quality, limits), uris.values())
        return dict(zip(uris, encoded, strict=True))

"""A corpus of bad and unusual files through ingest and extract: every file ends as a
descriptor or a recorded error, and nothing crashes."""

from __future__ import annotations

import io
import os

import numpy as np
import sqlalchemy as sa
from PIL import Image

from conftest import TINY_MODEL


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def build_corpus(root) -> dict[str, bool]:
    """Write one product folder per kind; return kind -> whether it should get a descriptor."""
    rng = np.random.default_rng(7)

    def rgb(w=40, h=30):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    def put(kind: str, name: str, data: bytes) -> None:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)

    def save(kind: str, name: str, image: Image.Image, fmt: str, **kwargs) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        put(kind, name, buffer.getvalue())

    expected = {}
    save("good-jpeg", "a.jpg", rgb(), "JPEG")
    expected["good-jpeg"] = True
    save("good-png", "a.png", rgb(), "PNG")
    expected["good-png"] = True
    save("png-named-jpg", "a.jpg", rgb(), "PNG")
    expected["png-named-jpg"] = True
    save("cmyk-jpeg", "a.jpg", rgb().convert("CMYK"), "JPEG")
    expected["cmyk-jpeg"] = True
    sixteen = Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16))
    save("16-bit-png", "a.png", sixteen, "PNG")
    expected["16-bit-png"] = True
    save("grayscale", "a.png", rgb().convert("L"), "PNG")
    expected["grayscale"] = True
    save("palette", "a.png", rgb().convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0)
    expected["palette"] = True
    rgba = rgb().convert("RGBA")
    rgba.putalpha(128)
    save("alpha", "a.png", rgba, "PNG")
    expected["alpha"] = True
    frames = [rgb(), rgb()]
    save("animated-gif", "a.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    expected["animated-gif"] = True
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif-rotated", "a.jpg", _jpeg(rgb(60, 20), exif=exif))
    expected["exif-rotated"] = True
    save("webp", "a.webp", rgb(), "WEBP")
    expected["webp"] = True
    save("bmp", "a.bmp", rgb(), "BMP")
    expected["bmp"] = True
    save("tiff", "a.tiff", rgb(), "TIFF")
    expected["tiff"] = True
    save("one-pixel", "a.png", rgb(1, 1), "PNG")
    expected["one-pixel"] = True
    put("zero-bytes", "a.jpg", b"")
    expected["zero-bytes"] = False
    put("text-named-jpg", "a.jpg", b"just some text, not an image\n")
    expected["text-named-jpg"] = False
    whole = _jpeg(rgb(200, 150))
    put("truncated-jpeg", "a.jpg", whole[: len(whole) // 2])
    expected["truncated-jpeg"] = False
    put("garbage-with-jpeg-magic", "a.jpg", b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 255, 500, dtype=np.uint8)))
    expected["garbage-with-jpeg-magic"] = False
    save("bomb", "a.png", Image.new("L", (2000, 1500)), "PNG")  # cap: 1e6 pixels
    expected["bomb"] = False
    loop = root / "symlink-loop"
    loop.mkdir()
    os.symlink(loop / "b.jpg", loop / "a.jpg")
    os.symlink(loop / "a.jpg", loop / "b.jpg")
    expected["symlink-loop"] = False
    save("non-utf8-name", "placeholder", rgb(), "PNG")
    os.rename(os.fsencode(root / "non-utf8-name" / "placeholder"), os.fsencode(root / "non-utf8-name") + b"/caf\xe9.png")
    expected["non-utf8-name"] = False
    return expected


def test_corpus_through_ingest_and_extract(retriever, tmp_path):
    expected = build_corpus(tmp_path / "corpus")
    assert len(expected) >= 15
    report = retriever.ingest("folder", tmp_path / "corpus", max_pixels=1_000_000)
    retriever.create_model("tiny", pooling="srmac", **TINY_MODEL)
    retriever.extract("tiny")
    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text(
            """SELECT p.sku, i.status, i.error, d.image_id IS NOT NULL AS described, w.last_error
                 FROM products p JOIN images i ON i.product_id = p.id
                 LEFT JOIN descriptors d ON d.image_id = i.id
                 LEFT JOIN extraction_work w ON w.image_id = i.id AND w.status = 'failed'""")).all()
    outcome = {}
    for row in rows:
        error = row.error or row.last_error
        assert row.described or error, row  # a descriptor or a recorded error, never neither
        outcome.setdefault(row.sku, []).append(bool(row.described))
    for kind, should_work in expected.items():
        assert kind in outcome, f"{kind} was not recorded at all: {report.as_dict()}"
        assert all(outcome[kind]) == should_work, (kind, outcome[kind])

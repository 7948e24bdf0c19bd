"""Extraction's moving parts on real files and a real database: keyset pages, the writer thread,
batched JPEG decoding (run on the CPU here: the same code as on CUDA with device="cpu"), and the
pure rules for batch size, decode workers and out-of-memory back-off."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from PIL import Image

from helpers import TINY_MODEL
from manet.catalog.batch_decode import on_device, read_batch
from manet.catalog.images import decode_jpeg_batch, jpeg_for_batch_decode, read_image_tensor
from manet.errors import DatabaseError, ImageError, ManetError
from manet.extract.forward import auto_batch_size, oom_backoff
from manet.extract.run import (
    default_workers,
    device_decode_enabled,
    extract,
)
from manet.nn.device import cpu_flags, use_bf16
from manet.settings import Settings

SIZE = 64


def _jpeg(pixels: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _photo(seed: int, height: int = 150, width: int = 200) -> np.ndarray:
    """A smooth, photo-like image (JPEG-friendly, unlike white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _corrupt_huffman_table(data: bytes) -> bytes:
    """A JPEG whose header still reads but whose first Huffman table is impossible: PIL and
    libjpeg/nvjpeg both fail only when decoding the pixels."""
    bad = bytearray(data)
    table = data.index(b"\xff\xc4")
    bad[table + 5 : table + 21] = b"\xff" * 16
    return bytes(bad)


# -- pure rules ---------------------------------------------------------------------------------
def test_auto_batch_size_rule():
    mib, gib = 2**20, 2**30
    assert auto_batch_size(8 * gib, 50 * mib) == 64  # 0.5 * 8192 / 50 = 81.9 -> 64
    assert auto_batch_size(80 * gib, 20 * mib) == 256  # 2048 fit, capped at 256
    assert auto_batch_size(80 * gib, 20 * mib, largest=1000) == 512  # largest power of two <= 1000
    assert auto_batch_size(1000, 100, fraction=1.0) == 8  # 10 fit -> 8
    assert auto_batch_size(100 * mib, 300 * mib) == 1  # nothing fits: still one image
    assert oom_backoff(64) == 32 and oom_backoff(3) == 1
    with pytest.raises(ManetError, match="even for one image"):
        oom_backoff(1)


def test_decode_workers_and_device_decode_rules():
    assert default_workers(64, 32, "cpu", cpu_count=16) == 0  # a handful: no worker start-up
    assert default_workers(65, 32, "cpu", cpu_count=2) == 0  # the model takes both cores
    assert default_workers(65, 32, "cpu", cpu_count=4) == 1
    assert default_workers(1000, 32, "cpu", cpu_count=16) == 2  # one per 8 cores
    assert default_workers(1000, 32, "cuda", cpu_count=4) == 3  # all but one core
    assert default_workers(1000, 32, "cuda:1", cpu_count=64) == 8
    assert device_decode_enabled("auto", "cuda:0") and not device_decode_enabled("auto", "cpu")
    assert device_decode_enabled("on", "cpu") and not device_decode_enabled("off", "cuda")
    with pytest.raises(ManetError, match="auto, on, off"):
        device_decode_enabled("yes", "cpu")


def test_forward_chunks_and_pads_like_one_pass(retriever):
    from manet.extract.forward import Forward, prepare_pipeline, run_pipeline

    record = retriever.create_model("chunks", pooling="gem", **TINY_MODEL)
    pipeline = prepare_pipeline(retriever.pipeline("chunks"), "cpu")
    images = torch.randint(0, 256, (7, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = run_pipeline(pipeline, images, "cpu")
    forward = Forward(pipeline, "cpu", chunk=3, dim=record.dim)
    assert np.allclose(forward(images).result(), whole, atol=1e-5)  # chunks of 3, 3, 1
    forward.pad = True  # what a torch.compile-d pipeline gets: the last chunk padded to 3, cut back to 1
    padded = forward(images).result()
    assert padded.shape == (7, record.dim) and np.allclose(padded, whole, atol=1e-5)
    assert forward(None).result().shape == (0, record.dim)


# -- batched JPEG decoding ----------------------------------------------------------------------
def test_batch_decode_equals_the_pil_path(tmp_path):
    files = []
    for i, (h, w) in enumerate([(150, 200), (64, 64), (400, 300), (90, 500)]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(_jpeg(_photo(i, h, w)))
        files.append(path)
    gray = tmp_path / "gray.jpg"
    gray.write_bytes(_jpeg(_photo(9)[..., 0]))
    files.append(gray)

    jpegs = [torch.frombuffer(bytearray(jpeg_for_batch_decode(path)), dtype=torch.uint8) for path in files]
    batched = decode_jpeg_batch(jpegs, SIZE, "cpu")
    reference = torch.stack([read_image_tensor(path, SIZE) for path in files])
    assert batched.shape == reference.shape == (len(files), 3, SIZE, SIZE)
    assert batched.dtype == reference.dtype == torch.uint8
    difference = (batched.float() - reference.float()).abs().mean(dim=(1, 2, 3))
    assert difference.max() < 1.0, difference  # grey levels out of 255: resampling differs slightly


def test_only_plain_complete_jpegs_go_to_the_batch_decoder(tmp_path):
    pixels = _photo(1)
    cases = {
        "png.jpg": (lambda p: Image.fromarray(pixels).save(p, format="PNG")),
        "cmyk.jpg": (lambda p: Image.fromarray(pixels).convert("CMYK").save(p, format="JPEG")),
        "truncated.jpg": (lambda p: p.write_bytes(_jpeg(pixels)[:-200])),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the batch decoder would ignore it
    cases["rotated.jpg"] = lambda p: p.write_bytes(_jpeg(pixels, exif=exif))
    for name, write in cases.items():
        write(tmp_path / name)
        assert jpeg_for_batch_decode(tmp_path / name) is None, name
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_jpeg(pixels))
    assert jpeg_for_batch_decode(plain) == plain.read_bytes()
    # The same errors as the PIL path for what no decoder may touch.
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="is empty"):
        jpeg_for_batch_decode(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="over the cap"):
        jpeg_for_batch_decode(plain, max_pixels=100)


def test_a_corrupt_file_in_a_device_batch_fails_alone(tmp_path):
    items = []
    for i in range(4):
        data = _jpeg(_photo(i))
        if i == 2:
            data = _corrupt_huffman_table(data)
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(data)
        items.append((100 + i, i % 2 == 0, str(path)))
    batch = read_batch(items, SIZE, None, batch_decode=True)
    assert len(batch.jpegs()) == 4 and batch.pixels is None  # all four passed the header check

    ready = on_device(batch, SIZE, "cpu")
    assert ready.ids == [100, 101, 103] and ready.gallery == [True, False, False]
    assert ready.pixels.shape == (3, 3, SIZE, SIZE) and ready.pixels.dtype == torch.uint8
    [(bad_id, error)] = ready.failures
    with pytest.raises(ImageError) as cpu_error:
        read_image_tensor(Path(items[2][2]), SIZE)
    assert bad_id == 102 and error == str(cpu_error.value)  # the CPU path's own message
    assert "corrupt image data" in error
    for row, (_, _, uri) in zip(ready.pixels, [items[0], items[1], items[3]]):
        assert (row.float() - read_image_tensor(Path(uri), SIZE).float()).abs().mean() < 1.0


def test_precision_rule(monkeypatch):
    monkeypatch.delenv("MANET_PRECISION", raising=False)
    # auto: bf16 on CUDA, and on CPUs that multiply bf16 natively
    assert use_bf16("cuda:1") and use_bf16("cpu", native_cpu=True) and not use_bf16("cpu", native_cpu=False)
    assert not use_bf16("mps")
    assert not use_bf16("cuda", "fp32") and use_bf16("cpu", "bf16", native_cpu=False)
    monkeypatch.setenv("MANET_PRECISION", "fp32")
    assert not use_bf16("cuda", Settings.from_environment().precision)  # the environment variable is the default
    with pytest.raises(ManetError, match="unknown precision 'fp16'"):
        use_bf16("cpu", "fp16")
    with pytest.raises(ManetError, match="use --precision fp32"):
        use_bf16("mps", "bf16")


def test_cpu_flags_from_cpuinfo():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\nbugs\t\t: spectre\nflags\t: other\n"
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert cpu_flags("processor: 0\n") == set()


# -- extraction on the database -----------------------------------------------------------------
@pytest.fixture(scope="module")
def catalogue(retriever, small_catalogue):
    retriever.ingest("manifest", small_catalogue)
    with retriever.db.begin() as conn:
        return conn.execute(sa.text("SELECT id FROM images WHERE status = 'ok' ORDER BY id")).scalars().all()


def _described(retriever, model: str) -> list[int]:
    with retriever.db.begin() as conn:
        return conn.execute(sa.text(
            "SELECT d.image_id FROM descriptors d JOIN models m ON m.id = d.model_id "
            "WHERE m.name = :n ORDER BY d.image_id"), {"n": model}).scalars().all()


def _min_cosine(retriever, first: str, second: str) -> float:
    """The smallest cosine between two models' descriptors of the same image."""
    with retriever.db.begin() as conn:
        return conn.execute(sa.text(
            "SELECT min(1 - (a.embedding <=> b.embedding)) FROM descriptors a JOIN descriptors b USING (image_id) "
            "WHERE a.model_id = (SELECT id FROM models WHERE name = :a) "
            "AND b.model_id = (SELECT id FROM models WHERE name = :b)"), {"a": first, "b": second}).scalar()


def test_pages_smaller_than_the_run_extract_every_image_once(retriever, catalogue):
    record = retriever.create_model("paged", pooling="srmac", **TINY_MODEL)
    report = extract(retriever.db, record, retriever.pipeline("paged"), device="cpu", batch_size=4,
                     num_workers=1, page_size=7, device_decode="on")
    assert report.extracted == len(catalogue) and report.failed == 0
    assert _described(retriever, "paged") == catalogue  # each image once (the primary key forbids twice)
    again = extract(retriever.db, record, retriever.pipeline("paged"), device="cpu", batch_size=4, page_size=7)
    assert again.extracted == 0


def test_device_decode_extracts_like_the_cpu_path(retriever, catalogue):
    for name, mode in (("cpu-decode", "off"), ("batch-decode", "on")):
        retriever.create_model(name, pooling="mac", **TINY_MODEL)
        assert retriever.extract(name, batch_size=8, device_decode=mode).extracted == len(catalogue)
    assert _min_cosine(retriever, "cpu-decode", "batch-decode") > 0.99


def test_bf16_extracts_close_to_fp32(retriever, catalogue):
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        record = retriever.create_model(name, pooling="srmac", **TINY_MODEL)
        report = extract(retriever.db, record, retriever.pipeline(name), device="cpu", batch_size=8,
                         precision=precision)
        assert report.extracted == len(catalogue) and report.precision == precision
    assert _min_cosine(retriever, "fp32", "bf16") > 0.99


def test_a_writer_error_stops_the_run_and_keeps_earlier_batches(retriever, catalogue):
    record = retriever.create_model("writer-fails", pooling="mac", **TINY_MODEL)
    poisoned = catalogue[13]  # in the 4th batch of 4
    with retriever.db.begin() as conn:  # a real server-side failure in the middle of the run
        conn.execute(sa.text(
            "CREATE FUNCTION test_refuse_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no space left for image %', NEW.image_id; END $$"))
        conn.execute(sa.text(
            f"CREATE TRIGGER test_refuse BEFORE INSERT ON descriptors FOR EACH ROW "
            f"WHEN (NEW.image_id = {int(poisoned)} AND NEW.model_id = {int(record.id)}) "
            f"EXECUTE FUNCTION test_refuse_row()"))
    try:
        with pytest.raises(DatabaseError, match=r"writing descriptors to the database failed \(no space left "
                                                r"for image \d+\); the 12 descriptors committed before it are kept"):
            extract(retriever.db, record, retriever.pipeline("writer-fails"), device="cpu", batch_size=4,
                    num_workers=0)
        assert _described(retriever, "writer-fails") == catalogue[:12]  # the three batches before it
    finally:
        with retriever.db.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER test_refuse ON descriptors"))
            conn.execute(sa.text("DROP FUNCTION test_refuse_row()"))
    resumed = extract(retriever.db, record, retriever.pipeline("writer-fails"), device="cpu", batch_size=4)
    assert resumed.extracted == len(catalogue) - 12
    assert _described(retriever, "writer-fails") == catalogue


def test_a_file_corrupted_after_ingest_fails_alone_in_a_device_decoded_run(retriever, catalogue, small_catalogue):
    record = retriever.create_model("corrupted", pooling="mac", **TINY_MODEL)
    with retriever.db.begin() as conn:
        uri = conn.execute(sa.text("SELECT uri FROM images WHERE id = :i"), {"i": catalogue[5]}).scalar_one()
    path = Path(uri)
    original = path.read_bytes()
    path.write_bytes(_corrupt_huffman_table(original))
    try:
        report = extract(retriever.db, record, retriever.pipeline("corrupted"), device="cpu", batch_size=8,
                         device_decode="on")
    finally:
        path.write_bytes(original)
    assert (report.extracted, report.failed) == (len(catalogue) - 1, 1)
    with retriever.db.begin() as conn:
        error = conn.execute(sa.text("SELECT last_error FROM extraction_work WHERE model_id = :m AND status = 'failed'"),
                             {"m": record.id}).scalar_one()
    assert error.startswith(f"image {path} has corrupt image data")

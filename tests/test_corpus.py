"""A corpus of bad and unusual files, and of every kind of path that is not a plain file,
through ingest, extract, search, explain, the report and retry: every good file ends as a
descriptor, every bad path as a one-line error naming it; nothing blocks or reads without end."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from PIL import Image

from helpers import TINY_MODEL, make_odd_paths, run_manet
from manet.api import Retriever
from manet.safe_files import ReadLimits
from manet.store import embedded

#: Caps the corpus runs under: the "bomb" is over the pixel cap, "over-byte-cap" over the byte cap.
MAX_PIXELS = 1_000_000
MAX_BYTES = 2_000_000
#: The issue's bound on the ingest process's peak resident memory.
MAX_RSS = 2 * 1024**3


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


def build_corpus(root: Path, seed: int = 7) -> tuple[dict[str, bool], dict[str, Path]]:
    """Write one product folder per kind; return kind -> whether it should get a descriptor, and
    the bad paths a folder listing cannot show (kind -> path: only a manifest can name them)."""
    rng = np.random.default_rng(seed)

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
    # Regular files over the byte cap: one by its size, one sparse (300 MB that take no disk space).
    save("over-byte-cap", "a.png", rgb(1000, 900), "PNG")
    expected["over-byte-cap"] = False
    (root / "sparse-300mb").mkdir()
    with (root / "sparse-300mb" / "a.jpg").open("wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0")
        handle.truncate(300 * 1024 * 1024)
    expected["sparse-300mb"] = False
    # A /proc file says 0 bytes and then delivers text: only the read itself finds out.
    (root / "symlink-to-proc-file").mkdir()
    os.symlink("/proc/self/smaps", root / "symlink-to-proc-file" / "a.jpg")
    expected["symlink-to-proc-file"] = False
    # Symlinks to regular files are followed (symlink farms are normal).
    save(".targets", "good.png", rgb(), "PNG")
    (root / "symlink-to-good-file").mkdir()
    os.symlink(root / ".targets" / "good.png", root / "symlink-to-good-file" / "a.jpg")
    expected["symlink-to-good-file"] = True
    odd = make_odd_paths(lambda kind: root / kind / "a.jpg", root / ".targets")
    expected.update({kind: False for kind, entry in odd.items() if entry.listed})
    return expected, {kind: entry.path for kind, entry in odd.items() if not entry.listed}


def test_corpus_through_ingest_and_extract(database_url, tmp_path):
    expected, _ = build_corpus(tmp_path / "corpus")
    assert len(expected) >= 35
    with Retriever(database_url, device="cpu", auto_upgrade=True, limits=ReadLimits(max_bytes=MAX_BYTES)) as r:
        report = r.ingest("folder", tmp_path / "corpus", max_pixels=MAX_PIXELS)
        r.create_model("tiny", pooling="srmac", **TINY_MODEL)
        r.extract("tiny")
        with r.db.begin() as conn:
            rows = conn.execute(sa.text(
                """SELECT p.sku, i.status, i.error, d.image_id IS NOT NULL AS described, w.last_error
                     FROM products p JOIN images i ON i.product_id = p.id
                     LEFT JOIN descriptors d ON d.image_id = i.id
                     LEFT JOIN extraction_work w ON w.image_id = i.id AND w.status = 'failed'
                    WHERE i.uri LIKE :root""").bindparams(root=f"{tmp_path}/%")).all()
    outcome = {}
    for row in rows:
        error = row.error or row.last_error
        assert row.described or error, row  # a descriptor or a recorded error, never neither
        outcome.setdefault(row.sku, []).append(bool(row.described))
    for kind, should_work in expected.items():
        assert kind in outcome, f"{kind} was not recorded at all: {report.as_dict()}"
        assert all(outcome[kind]) == should_work, (kind, outcome[kind])


def _manifest(root: Path, unlisted: dict[str, Path]) -> tuple[Path, dict[str, str]]:
    """A manifest naming every path of the corpus (kind = sku); returns it and uri -> kind."""
    rows, kinds = ["image,sku"], {}
    paths = [(folder.name, folder / name) for folder in sorted(root.iterdir()) if not folder.name.startswith(".")
             for name in sorted(os.listdir(folder)) if folder.name != "non-utf8-name"]  # a CSV is UTF-8
    paths += [(kind, path) for kind, path in unlisted.items() if not path.exists()]
    for kind, path in paths:
        rows.append(f"{os.path.relpath(path, root)},{kind}")
        kinds[str(path)] = kind
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, kinds


def _one_line_error(result, path: Path) -> str:
    """The failed command's error: exit 1, one line on stderr that names ``path``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, (result.args, result.returncode, result.stderr)
    assert lines[0].startswith("Error: ") and str(path) in lines[0], lines
    return lines[0]


def test_corpus_through_the_cli_never_blocks(pg_home, tmp_path, capsys):
    """Every command as a user runs it, each in its own process under a 60 s limit: ingest,
    extract, search (and its HTML page), explain and retry, with the peak memory of each."""
    url = embedded.start(pg_home, "t_corpus_cli", recreate=True)
    with Retriever(url, device="cpu", auto_upgrade=True) as retriever:
        retriever.create_model("corpus", pooling="mac", **TINY_MODEL)
    root = tmp_path / "corpus"
    expected, unlisted = build_corpus(root, seed=11)
    expected.update(dict.fromkeys(unlisted, False))
    manifest, kinds = _manifest(root, unlisted)
    env = {**os.environ, "MANET_DATABASE_URL": url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    caps = ("-q", "--max-pixels", str(MAX_PIXELS), "--max-bytes", str(MAX_BYTES))
    peak: dict[str, int] = {}

    # Ingest: the good files stored, every bad path one recorded line naming it.
    ingest = run_manet(*caps, "ingest", "manifest", str(manifest), "--batch-size", "8", "--json", env=env)
    assert ingest.returncode == 0, ingest.stderr
    peak["ingest"] = ingest.max_rss_bytes
    assert ingest.max_rss_bytes < MAX_RSS, f"ingest peak RSS {ingest.max_rss_bytes / 2**20:.0f} MiB"
    report = json.loads(ingest.stdout)
    failures = {failure["image"]: failure["error"] for failure in report["failures"]}
    for uri, kind in kinds.items():
        if expected[kind]:
            assert uri not in failures, (kind, failures.get(uri))
        else:
            assert uri in failures, f"{kind}: {uri} was not recorded as failed"
            assert "\n" not in failures[uri] and uri in failures[uri], failures[uri]
    good = sorted(uri for uri, kind in kinds.items() if expected[kind])
    assert report["images_added"] == len(good) and report["failed"] == len(kinds) - len(good)

    # Extract: two stored files have since become a pipe and an endless device.
    became_fifo, became_zero = root / "good-png" / "a.png", root / "good-jpeg" / "a.jpg"
    became_fifo.unlink()
    os.mkfifo(became_fifo)
    became_zero.unlink()
    os.symlink("/dev/zero", became_zero)
    extract = run_manet(*caps, "extract", "--model", "corpus", "--json", env=env)
    assert extract.returncode == 0, extract.stderr
    peak["extract"] = extract.max_rss_bytes
    assert json.loads(extract.stdout)["extracted"] == len(good) - 2
    with Retriever(url, device="cpu") as retriever, retriever.db.begin() as conn:
        errors = dict(conn.execute(sa.text(
            "SELECT i.uri, w.last_error FROM extraction_work w JOIN images i ON i.id = w.image_id "
            "WHERE w.status = 'failed'")).all())
        described = conn.execute(sa.text("SELECT count(*) FROM descriptors")).scalar()
    assert described == len(good) - 2
    assert "named pipe (FIFO)" in errors[str(became_fifo)] and "character device" in errors[str(became_zero)]

    # Search with a good file, its page's thumbnails meeting a described file that became a pipe.
    query, became_pipe_later = root / "webp" / "a.webp", root / "bmp" / "a.bmp"
    became_pipe_later.unlink()
    os.mkfifo(became_pipe_later)
    page = tmp_path / "page.html"
    search = run_manet(*caps, "search", str(query), "--model", "corpus", "-k", "100", "--json",
                       "--html", str(page), env=env)
    assert search.returncode == 0, search.stderr
    peak["search --html"] = search.max_rss_bytes
    assert len(json.loads(search.stdout)) == len(good) - 2
    assert f"image {became_pipe_later} is a named pipe (FIFO)" in page.read_text()

    # Search and explain with every bad path as the query: one line, exit 1, no model loaded.
    bad = sorted({*(uri for uri, kind in kinds.items() if not expected[kind]),
                  str(became_fifo), str(became_zero), str(became_pipe_later)})
    for uri in bad:
        result = run_manet(*caps, "search", uri, "--model", "corpus", env=env)
        _one_line_error(result, Path(uri))
        peak["search BAD"] = max(peak.get("search BAD", 0), result.max_rss_bytes)
        result = run_manet(*caps, "explain", uri, "--model", "corpus", "--out", str(tmp_path / "x.png"), env=env)
        _one_line_error(result, Path(uri))
        peak["explain BAD"] = max(peak.get("explain BAD", 0), result.max_rss_bytes)
    explain = run_manet(*caps, "explain", str(query), "--model", "corpus", "--out", str(tmp_path / "x.png"),
                        env=env)
    assert explain.returncode == 0 and (tmp_path / "x.png").stat().st_size > 0, explain.stderr
    peak["explain"] = explain.max_rss_bytes

    # Retry re-checks every failed ingest: still refused, none blocks.
    retry = run_manet(*caps, "retry", "--failed", "--json", env=env)
    assert retry.returncode == 0, retry.stderr
    peak["retry"] = retry.max_rss_bytes
    assert json.loads(retry.stdout)["ingest_still_failed"] == len(kinds) - len(good)

    with capsys.disabled():
        print("\npeak RSS (MiB): " + ", ".join(f"{name} {value / 2**20:.0f}" for name, value in peak.items()))

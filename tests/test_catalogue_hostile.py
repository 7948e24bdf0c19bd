"""Hostile input to the living-catalogue commands (issue 15): SKU files and arguments, image ids,
manifests with NUL characters, files at stored paths that turned into something unreadable, and
an index whose rebuild is running or was interrupted. Each refusal is one line with a non-zero
exit, and nothing stored is lost."""

from __future__ import annotations

import csv
import json
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from helpers import indexed_catalogue

#: Products of the module's catalogue, by test (each test changes its own products only).
BULK_DELETED, REINGESTED, NUL_MANIFEST = "syn00000", "syn00001", "syn00002"


@pytest.fixture(scope="module")
def catalogue(retriever, tmp_path_factory):
    """8 products (a catalogue image and a shopper photo each, 64 px) ingested; model ``tiny``
    extracted and indexed. Returns the manifest."""
    return indexed_catalogue(retriever, tmp_path_factory.mktemp("hostile"), products=8, seed=7)


def _counts(retriever) -> tuple[int, int, int]:
    with retriever.db.begin() as conn:
        return tuple(conn.execute(sa.text("SELECT (SELECT count(*) FROM products), (SELECT count(*) FROM images), "
                                          "(SELECT count(*) FROM descriptors)")).one())


def _refused(result, *, code: int = 1) -> str:
    """The one line a refused command printed (asserting it is one line, no traceback)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_hostile_sku_files_and_arguments_are_refused_in_one_line(catalogue, retriever, run, tmp_path,
                                                                 monkeypatch):
    before = _counts(retriever)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"syn00003\nsyn\x0000004\n")
    assert "holds a NUL byte on line 2" in _refused(run("products", "delete", "--from-file", str(nul), "--yes"))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("syn00003\n", encoding="utf-16")
    assert "not UTF-8" in _refused(run("products", "delete", "--from-file", str(utf16), "--yes"))
    monkeypatch.setattr("manet.catalog.removal.MAX_SKU_FILE_BYTES", 16)
    big = tmp_path / "big.txt"
    big.write_text("syn00003\n" * 10)
    too_big = _refused(run("products", "delete", "--from-file", str(big), "--yes"))
    assert "split it into files" in too_big and "--max-bytes" not in too_big  # --max-bytes is the image cap
    assert "an empty SKU ('')" in _refused(run("products", "delete", "syn00003", "", "--yes"))
    assert "an empty SKU ('  ')" in _refused(run("products", "delete", "  ", "--yes"))
    padded = _refused(run("products", "delete", "syn00003 ", "--yes"))
    assert "unknown SKU 'syn00003 '" in padded  # the trailing space shows
    long = _refused(run("products", "delete", "x" * 5000, "--yes"))
    assert "(5000 characters)" in long and len(long) < 400
    assert _counts(retriever) == before


def test_more_skus_than_a_statement_has_parameters(catalogue, retriever, run, tmp_path):
    """70,000 SKUs (an IN list of one parameter each would pass PostgreSQL's 65,535) in one call,
    in about the time of a few thousand: no quadratic step."""
    skus = tmp_path / "skus.txt"
    skus.write_text("".join(f"gone-{i:06d}\n" for i in range(70_000)) + f"{BULK_DELETED}\n")
    started = time.perf_counter()
    done = run("products", "delete", "--from-file", str(skus), "--ignore-missing", "--yes", "--json")
    seconds = time.perf_counter() - started
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["products_deleted"], report["images_deleted"], len(report["missing"])) == (1, 2, 70_000)
    assert seconds < 30, f"{seconds:.1f} s for 70,000 SKUs"
    unknown = _refused(run("products", "delete", "--from-file", str(skus), "--yes"))
    assert "unknown SKU gone-000000" in unknown and "and 69996 more" in unknown  # 70,001 unknown now


def test_image_ids_out_of_range_are_refused(catalogue, retriever, run):
    before = _counts(retriever)
    for image_id in ("99999999999999999999999", "-1", "0", "9223372036854775808"):
        line = _refused(run("images", "delete", "--yes", "--", image_id))
        assert f"image id {image_id} is out of range" in line
    assert "not in the range" in run("events", "--image-id", "99999999999999999999").output
    assert _counts(retriever) == before


def _write(manifest: Path, rows: list[dict], fields: list[str]) -> None:
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_manifest_cells_with_nul_are_refused_before_anything_is_stored(catalogue, retriever, run, tmp_path):
    from manet.errors import DatasetError

    with catalogue.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["sku"] == NUL_MANIFEST]
    for row in rows:
        row["image"] = str(catalogue.parent / row["image"])
    before = _counts(retriever)
    bad = tmp_path / "nul.csv"
    _write(bad, [{**rows[0], "title": "bad\x00title"}], list(rows[0]))
    line = _refused(run("ingest", "manifest", str(bad), "--allow-outside-root"))
    assert "nul.csv:2: title holds a NUL byte" in line
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_text(json.dumps({**rows[0], "extra": {"deep": "a\x00b"}}) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"nul\.jsonl:1: an attribute .* holds a NUL character"):
        retriever.ingest("manifest", jsonl, allow_outside_root=True)
    assert _counts(retriever) == before


def test_a_stored_file_that_became_unreadable_is_reported_and_kept(catalogue, retriever, tmp_path):
    """A re-ingest that finds a directory or nothing at a stored image's path reports it as failed
    (it used to count it as already present) and keeps the image and its descriptors."""
    with catalogue.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["sku"] == REINGESTED]
    paths = [catalogue.parent / row["image"] for row in rows]
    moved = [path.rename(tmp_path / path.name) for path in paths]
    paths[0].mkdir()  # a directory where the catalogue image was; the photo is simply gone
    manifest = catalogue.parent / "reingest.csv"
    _write(manifest, rows, list(rows[0]))
    before = _counts(retriever)
    try:
        report = retriever.ingest("manifest", manifest)
    finally:
        paths[0].rmdir()
        for path, old in zip(paths, moved, strict=True):
            old.rename(path)
    assert (report.failed, report.already_present, report.images_replaced) == (2, 0, 0)
    errors = dict(report.failures)
    assert "is a directory" in errors[str(paths[0])] and "does not exist" in errors[str(paths[1])]
    assert _counts(retriever) == before
    assert retriever.ingest("manifest", manifest).already_present == 2  # back: unchanged


@contextmanager
def _other_session(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def test_index_status_tells_a_running_rebuild_from_a_leftover(catalogue, retriever, database_url):
    from manet.search.index_upkeep import REBUILD_LOCK

    model = retriever.model("tiny")
    leftover = f"{model.index_name}_ccnew"
    with _other_session(database_url) as conn:
        conn.execute(f"CREATE INDEX {leftover} ON descriptors (image_id)")  # what an aborted REINDEX leaves
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (REBUILD_LOCK, model.id))  # a rebuild running now
        running = retriever.index_status("tiny")[0]
        assert running["rebuilding"] and running["leftovers"] == [leftover]
        assert running["hint"].startswith("a rebuild is running")
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (REBUILD_LOCK, model.id))
        failed = retriever.index_status("tiny")[0]
        assert not failed["rebuilding"] and "a failed rebuild left" in failed["hint"]
        conn.execute(f"DROP INDEX {leftover}")


def test_an_interrupted_rebuild_drops_its_half_built_copy(catalogue, retriever, database_url, monkeypatch):
    """Ctrl-C during REINDEX CONCURRENTLY (psycopg cancels it) leaves no ``_ccnew`` copy behind."""
    model = retriever.model("tiny")
    leftover = f"{model.index_name}_ccnew"

    @contextmanager
    def interrupted(*args, **kwargs):
        with _other_session(database_url) as conn:  # the copy the cancelled REINDEX had started
            conn.execute(f"CREATE INDEX {leftover} ON descriptors (image_id)")
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr("manet.search.index_upkeep.index_build_progress", interrupted)
    with pytest.raises(KeyboardInterrupt):
        retriever.rebuild_index("tiny")
    status = retriever.index_status("tiny")[0]
    assert status["leftovers"] == [] and status["valid"] and status["hint"] is None

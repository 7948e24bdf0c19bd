"""Catalogue changes on a real PostgreSQL (issue 15): a re-ingest updates changed products and
replaces changed files; `manet products delete` / `manet images delete`; `manet ingest --sync`
(dry run first); the history of every change; and searches running while products are deleted
never return a deleted product once its delete has committed."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from helpers import indexed_catalogue

#: Products of the module's catalogue, by role (the tests share one database, so each test
#: changes its own products only).
UPDATED, REPLACED, CLI_DELETED, FILE_DELETED, IMAGES_DELETED = (f"syn{i:05d}" for i in range(5))
CONCURRENTLY_DELETED = [f"syn{i:05d}" for i in range(5, 11)]
KEPT = "syn00011"


@pytest.fixture(scope="module")
def catalogue(retriever, tmp_path_factory):
    """12 products (a catalogue image and a shopper photo each, 64 px) ingested; model ``tiny``
    extracted and indexed. Returns the manifest."""
    return indexed_catalogue(retriever, tmp_path_factory.mktemp("changes"), products=12, seed=5)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(manifest: Path, rows: list[dict[str, str]]) -> None:
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _scalar(retriever, sql: str, **params):
    with retriever.db.begin() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def _image_ids(retriever, sku: str) -> list[int]:
    with retriever.db.begin() as conn:
        return list(conn.execute(sa.text("SELECT i.id FROM images i JOIN products p ON p.id = i.product_id "
                                         "WHERE p.sku = :s ORDER BY i.id"), {"s": sku}).scalars())


def _descriptor_count(retriever, image_ids: list[int]) -> int:
    return _scalar(retriever, "SELECT count(*) FROM descriptors WHERE image_id = ANY(:ids)", ids=image_ids)


def _sql_hits(retriever, sql: str, **params) -> set[tuple[int, int | None]]:
    with retriever.db.begin() as conn:
        return {(row.image_id, row.product_id) for row in conn.execute(sa.text(sql), params)}


def test_reingest_updates_changed_products_and_records_them(catalogue, retriever):
    rows = _rows(catalogue)
    for row in rows:
        if row["sku"] == UPDATED:
            row.update(title="New title", brand="New brand")
    _write(catalogue, rows)
    report = retriever.ingest("manifest", catalogue)
    assert (report.products_updated, report.images_added, report.images_replaced) == (1, 0, 0)
    assert report.already_present == len(rows) and report.as_dict()["products_updated"] == 1
    assert retriever.product(UPDATED)["title"] == "New title"
    events = retriever.history(sku=UPDATED, action="product.update")
    assert len(events) == 1 and "@" in events[0]["actor"]
    changes = events[0]["details"]["changes"]
    assert changes["title"]["new"] == "New title" and changes["brand"]["new"] == "New brand"
    assert changes["title"]["old"] != "New title"
    assert retriever.ingest("manifest", catalogue).products_updated == 0  # nothing changed since


def test_a_changed_file_replaces_its_image_and_old_descriptors_stop_being_served(catalogue, retriever):
    from PIL import Image

    old_id = _image_ids(retriever, REPLACED)[0]  # the catalogue image comes first
    old_vector = retriever.search("tiny", image_id=old_id, k=1)  # served before the change
    assert old_vector[0].image_id == old_id
    path = Path(_scalar(retriever, "SELECT uri FROM images WHERE id = :i", i=old_id))
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG")

    report = retriever.ingest("manifest", catalogue)
    assert (report.images_replaced, report.images_added, report.products_updated) == (1, 0, 0)
    assert _scalar(retriever, "SELECT count(*) FROM images WHERE id = :i", i=old_id) == 0
    assert _descriptor_count(retriever, [old_id]) == 0
    new_id = _scalar(retriever, "SELECT id FROM images WHERE uri = :u", u=str(path))
    assert new_id != old_id
    replaced = retriever.history(image_id=old_id)
    assert [event["action"] for event in replaced] == ["image.replace"]
    assert replaced[0]["image_id"] == new_id and replaced[0]["details"]["old_image_id"] == old_id

    retriever.extract("tiny")  # the new file gets its descriptor
    for hit_list in (retriever.search("tiny", image_id=new_id, k=50),
                     retriever.search("tiny", image_id=new_id, k=12, rerank="aqe", shortlist=20)):
        assert old_id not in {hit.image_id for hit in hit_list}
    assert old_id not in {i for i, _ in _sql_hits(retriever, "SELECT * FROM manet_similar('tiny', :i, 50)",
                                                   i=new_id)}


def test_products_delete_asks_refuses_unknown_skus_and_deletes_with_descriptors(catalogue, retriever, run,
                                                                                tmp_path):
    doomed = _image_ids(retriever, CLI_DELETED) + _image_ids(retriever, FILE_DELETED)
    assert _descriptor_count(retriever, doomed) == 4
    asked = run("products", "delete", CLI_DELETED)  # no terminal answers the question
    assert asked.exit_code == 1 and "nothing was changed" in asked.output
    unknown = run("products", "delete", CLI_DELETED, "no-such-sku", "--yes")
    assert unknown.exit_code == 1 and "unknown SKU no-such-sku; nothing was deleted" in unknown.output
    assert _descriptor_count(retriever, doomed) == 4

    skus = tmp_path / "skus.txt"
    skus.write_text(f"# retired products\n\n  {FILE_DELETED}  \nno-such-sku\n")
    done = run("products", "delete", CLI_DELETED, "--from-file", str(skus), "--ignore-missing", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["products_deleted"], report["images_deleted"], report["missing"]) == (2, 4, ["no-such-sku"])
    assert _descriptor_count(retriever, doomed) == 0
    assert _scalar(retriever, "SELECT count(*) FROM products WHERE sku IN (:a, :b)", a=CLI_DELETED,
                   b=FILE_DELETED) == 0
    query_id = _image_ids(retriever, KEPT)[0]
    vector = retriever.search("tiny", image_id=query_id, k=1)  # noqa: F841 (the query works)
    hits = _sql_hits(retriever, "SELECT * FROM manet_similar('tiny', :i, 50)", i=query_id)
    hits |= _sql_hits(retriever, "SELECT s.* FROM descriptors d, manet_search('tiny', d.embedding, 50) s "
                                 "WHERE d.image_id = :i", i=query_id)
    assert hits and not {i for i, _ in hits} & set(doomed)

    history = json.loads(run("products", "history", FILE_DELETED, "--json").output)
    assert [event["action"] for event in history][-1] == "product.delete"
    assert history[-1]["details"]["reason"] == "delete" and history[-1]["details"]["images"] == 2
    assert "product.delete" in run("products", "history", CLI_DELETED).output
    missing = run("products", "delete", "--from-file", str(tmp_path / "absent.txt"), "--yes")
    assert missing.exit_code == 1 and "absent.txt" in missing.output


def test_images_delete_keeps_the_product(catalogue, retriever, run):
    catalog_id, photo_id = _image_ids(retriever, IMAGES_DELETED)
    unknown = run("images", "delete", str(photo_id), "999999", "--yes")
    assert unknown.exit_code == 1 and "unknown image id 999999" in unknown.output
    assert run("images", "delete", str(photo_id)).exit_code == 1  # asks; nothing answers
    done = run("images", "delete", str(photo_id), "--yes", "--json")
    assert done.exit_code == 0 and json.loads(done.output)["images_deleted"] == 1
    assert _image_ids(retriever, IMAGES_DELETED) == [catalog_id]
    assert _descriptor_count(retriever, [photo_id]) == 0
    events = json.loads(run("events", "--image-id", str(photo_id), "--json").output)
    assert [(event["action"], event["sku"]) for event in events] == [("image.delete", IMAGES_DELETED)]


def _folder_dataset(root: Path, skus: list[str], seed: int) -> Path:
    """A manifest with one random 48 px image per SKU under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for sku in skus:
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / f"{sku}.png")
        rows.append({"sku": sku, "image": f"{sku}.png", "title": f"title {sku}"})
    _write(root / "manifest.csv", rows)
    return root / "manifest.csv"


def test_sync_dry_run_changes_nothing_then_removes_only_what_the_folder_no_longer_lists(retriever, run, tmp_path):
    mine = _folder_dataset(tmp_path / "mine", ["S1", "S2", "S3"], seed=1)
    other = _folder_dataset(tmp_path / "mine-other", ["O1"], seed=2)  # a sibling folder: not in the scope
    for manifest in (mine, other):
        assert run("ingest", "manifest", str(manifest)).exit_code == 0
    before = _scalar(retriever, "SELECT count(*) FROM images")
    _write(mine, [row for row in _rows(mine) if row["sku"] != "S2"])

    dry = run("ingest", "manifest", str(mine), "--sync", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would delete 1 products and 1 images" in dry.output and "product S2" in dry.output
    assert _scalar(retriever, "SELECT count(*) FROM images") == before
    assert run("ingest", "manifest", str(mine), "--dry-run").exit_code == 2  # --dry-run needs --sync
    assert run("ingest", "manifest", str(mine), "--sync").exit_code == 1  # asks first

    done = run("ingest", "manifest", str(mine), "--sync", "--yes", "--json")
    assert done.exit_code == 0, done.output
    removed = json.loads(done.output)["removed"]
    assert [p["sku"] for p in removed["products"]] == ["S2"] and removed["images_deleted"] == 1
    assert _scalar(retriever, "SELECT count(*) FROM images") == before - 1
    assert _scalar(retriever, "SELECT count(*) FROM products WHERE sku IN ('S1', 'S3', 'O1')") == 3
    assert retriever.history(sku="S2", action="product.delete")[0]["details"]["reason"] == "sync"
    mine.write_text("sku,image\n")  # an empty listing is refused rather than emptying the folder's share
    refused = run("ingest", "manifest", str(mine), "--sync", "--yes")
    assert refused.exit_code == 1 and "refusing to sync" in refused.output


def test_an_image_listed_under_another_sku_moves_to_that_product(retriever, tmp_path):
    manifest = _folder_dataset(tmp_path / "moves", ["M1"], seed=4)
    retriever.ingest("manifest", manifest)
    _write(manifest, [{"sku": "M2", "image": "M1.png", "title": "title M2"}])
    report = retriever.ingest("manifest", manifest)
    assert (report.images_moved, report.products_added, report.images_added) == (1, 1, 0)
    assert [image["uri"] for image in retriever.product("M2")["images"]] == [str(tmp_path / "moves" / "M1.png")]
    [moved] = retriever.history(sku="M2", action="image.move")
    assert moved["details"]["old_product_id"] == retriever.product("M1")["id"]


def _searcher(retriever, url: str, vectors: list[np.ndarray], query_id: int, stop: threading.Event,
              log: list, errors: list, which: int) -> None:
    """Search in a loop, one kind of search per thread; log (start time, hit image ids, product ids)."""
    conn = psycopg.connect(url, autocommit=True)
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                vector = vectors[len(log) % len(vectors)]
                if which % 4 == 0:
                    hits = [(h.image_id, h.product_id) for h in retriever.search("tiny", vector=vector, k=50)]
                elif which % 4 == 1:
                    hits = [(h.image_id, h.product_id) for h in
                            retriever.search("tiny", vector=vector, k=10, rerank="aqe", shortlist=50)]
                elif which % 4 == 2:
                    text = "[" + ",".join(map(str, vector.tolist())) + "]"
                    hits = conn.execute("SELECT image_id, product_id FROM manet_search('tiny', %s::vector, 50)",
                                        (text,)).fetchall()
                else:
                    hits = conn.execute("SELECT image_id, product_id FROM manet_similar('tiny', %s, 50)",
                                        (query_id,)).fetchall()
                log.append((started, {i for i, _ in hits}, {p for _, p in hits}))
            except Exception as exc:  # noqa: BLE001 (every failure is a finding)
                errors.append(repr(exc))
    finally:
        conn.close()


def test_eight_threads_searching_while_products_are_deleted(catalogue, retriever, database_url):
    from manet.search.query import stored_descriptor

    model = retriever.model("tiny")
    kept_ids = _image_ids(retriever, KEPT) + _image_ids(retriever, UPDATED)
    vectors = [stored_descriptor(retriever.db, model, i) for i in kept_ids]
    doomed = {sku: (_scalar(retriever, "SELECT id FROM products WHERE sku = :s", s=sku), _image_ids(retriever, sku))
              for sku in CONCURRENTLY_DELETED}
    stop, errors = threading.Event(), []
    logs: list[list] = [[] for _ in range(8)]
    threads = [threading.Thread(target=_searcher, args=(retriever, database_url, vectors, kept_ids[0], stop,
                                                        logs[n], errors, n)) for n in range(8)]
    for thread in threads:
        thread.start()
    committed: dict[str, float] = {}
    try:
        time.sleep(0.3)
        for sku in CONCURRENTLY_DELETED:
            retriever.delete_products([sku])
            committed[sku] = time.monotonic()  # the delete has returned: its transaction committed
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[:3]
    assert all(len(log) > 5 for log in logs), [len(log) for log in logs]
    checked = 0
    for log in logs:
        for started, image_ids, product_ids in log:
            for sku, (product_id, image_ids_of) in doomed.items():
                if started > committed[sku]:
                    checked += 1
                    assert product_id not in product_ids and not image_ids & set(image_ids_of), (sku, started)
    assert checked > 100
    # Searches that began before the first delete saw those products: the check had something to find.
    assert any(doomed[CONCURRENTLY_DELETED[-1]][0] in product_ids for log in logs for _, _, product_ids in log)

"""The CLI on a real database, and every bad-input case: a one-line error, a non-zero exit,
and nothing already stored is lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa


def counts(retriever) -> dict[str, int]:
    with retriever.db.begin() as conn:
        return {table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
                for table in ("products", "images", "descriptors", "models")}


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- the happy path through the CLI ----------------------------------------------------------
def test_models_list_json(populated, run):
    result = run("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["name"] == "tiny" and rows[0]["descriptors"] == 30 and rows[0]["dim"] == 512


def test_search_json_and_filters(populated, run, small_catalogue):
    photo = small_catalogue.parent / "query" / "syn00001_0.jpg"
    result = run("search", str(photo), "--model", "tiny", "-k", "7", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert len(hits) == 7 and [h["rank"] for h in hits] == list(range(1, 8))
    assert hits[0]["score"] >= hits[-1]["score"]
    brand = hits[0]["brand"]
    result = run("search", str(photo), "--model", "tiny", "--brand", brand, "--json")
    assert [h["brand"] for h in json.loads(result.output)] == [brand]


def test_eval_json_keys(populated, run):
    result = run("eval", "--model", "tiny", "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"map@7", "map", "recall@1", "recall@5", "recall@7", "queries"} <= set(data)
    assert data["queries"] == 20 and data["normaliser"] == "min"


def test_no_schema_drift_with_model_indexes(populated):
    assert populated.db.schema_drift() == []


def test_models_delete(populated, run):
    assert run("models", "create", "doomed", "--backbone", "resnet18", "--weights", "none",
               "--pooling", "mac").exit_code == 0
    assert run("models", "delete", "doomed", "--yes").exit_code == 0
    assert "doomed" not in run("models", "list").output
    one_line_error(run("models", "delete", "doomed", "--yes"), "model 'doomed' does not exist")


def test_ingest_twice_adds_nothing(populated, run, small_catalogue):
    before = counts(populated)
    result = run("ingest", "manifest", str(small_catalogue), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images_added"] == 0 and report["already_present"] == 30
    assert counts(populated) == before


def test_migrations_round_trip(tmp_path, pg_home):
    from manet.store import embedded
    from manet.store.database import Database

    db = Database(embedded.start(pg_home, "t_roundtrip", recreate=True))
    db.upgrade()
    assert db.current_revision() == db.head_revision()
    db.downgrade("base")
    assert db.current_revision() is None
    with db.begin() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('descriptors')")).scalar() is None
    db.upgrade()
    assert db.current_revision() == db.head_revision()
    assert db.schema_drift() == []  # manet.store.schema describes what the migrations build
    db.dispose()


# -- bad input ---------------------------------------------------------------------------------
def test_unknown_dataset_kind(populated, run, small_catalogue):
    before = counts(populated)
    result = run("ingest", "nope", str(small_catalogue))
    one_line_error(result, "unknown dataset 'nope'", "folder", "grocery-store", "manifest")
    assert counts(populated) == before


def test_unknown_pooling(populated, run):
    before = counts(populated)
    result = run("models", "create", "x", "--backbone", "resnet18", "--weights", "none", "--pooling", "nope")
    one_line_error(result, "unknown pooling 'nope'", "srmac")
    assert counts(populated) == before


@pytest.mark.parametrize(("args", "message"), [
    (("ingest", "folder", ".", "--max-outage", "nan"), "'--max-outage': 'nan' is not a finite number"),
    (("worker", "--model", "tiny", "--lease-seconds", "inf"), "'--lease-seconds': 'inf' is not a finite number"),
    (("worker", "--model", "tiny", "--lease-seconds", "0"), "0.0 is not in the range x>0"),
    (("models", "create", "x", "--pooling", "gem", "-p", "p=nan"), "parameter p='nan' should be a finite float"),
])
def test_nan_and_inf_options_are_refused(populated, run, args, message):
    # nan passes every bound check (nan < 0 is False) and reached sleeps, SQL intervals and tensors.
    before = counts(populated)
    result = run(*args)
    assert result.exit_code in (1, 2) and message in result.output and "Traceback" not in result.output
    assert counts(populated) == before


@pytest.mark.parametrize(("args", "message"), [
    (("ingest", "folder", ".", "--batch-size", "0"), "'--batch-size': 0 is not in the range 1<=x<=100000"),
    (("models", "create", "x", "--image-size", "0"), "'--image-size': 0 is not in the range 32<=x<=4096"),
    (("extract", "--model", "tiny", "--workers", "1000000000000"), "'--workers': 1000000000000 is not in the range"),
    (("extract", "--model", "tiny", "--decode-workers", "-1"), "'--decode-workers': -1 is not in the range 0<=x<=64"),
    (("worker", "--model", "tiny", "--batch-size", "0"), "'--batch-size': 0 is not in the range 1<=x<=100000"),
    (("worker", "--model", "tiny", "--max-attempts", "0"), "'--max-attempts': 0 is not in the range 1<=x<=1000"),
    (("train", "--name", "x", "--seed", "-1"), "'--seed': -1 is not in the range 0<=x<=4294967295"),
    (("train", "--name", "x", "--workers", "9999"), "'--workers': 9999 is not in the range 0<=x<=64"),
    (("index", "build", "--model", "tiny", "--category-m", "0"), "'--category-m': 0 is not in the range 2<=x<=100"),
    (("serve", "--model", "tiny", "--workers", "100000"), "100000 is not in the range 1<=x<=64"),  # a network each
])
def test_counts_out_of_range_are_refused(populated, run, args, message):
    # Before: a batch of 0 was a traceback (ingest) or a worker looping forever, -1 ingested nothing and said
    # done, --image-size 0 made a 224 px model, and 10^12 --workers started processes until PostgreSQL refused.
    before = counts(populated)
    result = run(*args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert counts(populated) == before


def test_counts_out_of_range_through_the_api(populated):
    from manet.catalog.ingest import ingest_records
    from manet.errors import ManetError

    with pytest.raises(ManetError, match="batch size 0 is out of range"):
        ingest_records(populated.db, [], batch_size=0)
    with pytest.raises(ManetError, match="batch size 0 and max attempts 3 must be at least 1"):
        populated.work("tiny", batch_size=0, until_empty=True)
    with pytest.raises(ManetError, match="-1 decode workers is out of range"):
        populated.extract("tiny", num_workers=-1)


def test_missing_dataset_path(populated, run, tmp_path):
    before = counts(populated)
    result = run("ingest", "folder", str(tmp_path / "missing"))
    one_line_error(result, "does not exist", "missing")
    assert counts(populated) == before


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bad.csv", "sku,image,domain\nA1,a.jpg,catalog\nA2,b.jpg,shop\n", "bad.csv:3"),
        ("bad.jsonl", '{"sku": "A1", "image": "a.jpg"}\n{"sku": "A2", "image": \n', "bad.jsonl:2"),
    ],
)
def test_malformed_manifest_row(populated, run, tmp_path, name, content, expected):
    before = counts(populated)
    manifest = tmp_path / name
    manifest.write_text(content)
    result = run("ingest", "manifest", str(manifest))
    one_line_error(result, expected)
    assert counts(populated) == before


def test_bad_images_recorded_and_batch_continues(populated, run, tmp_path, small_catalogue):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image")
    jpeg = (small_catalogue.parent / "catalog" / "syn00000.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    manifest = tmp_path / "m.csv"
    manifest.write_text("sku,image\nBAD1,empty.jpg\nBAD2,text.jpg\nBAD3,truncated.jpg\nGOOD,good.png\n")
    before = counts(populated)
    result = run("ingest", "manifest", str(manifest), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images_added"] == 1 and report["failed"] == 3
    errors = " ".join(f["error"] for f in report["failures"])
    assert "empty" in errors and "truncated" in errors.lower()
    with populated.db.begin() as conn:
        failed = conn.execute(sa.text("SELECT count(*) FROM images WHERE status = 'failed' AND error <> ''")).scalar()
    assert failed == 3
    after = counts(populated)
    assert after["images"] == before["images"] + 4 and after["descriptors"] == before["descriptors"]
    extract = run("extract", "--model", "tiny", "--json")
    assert json.loads(extract.output)["extracted"] == 1


def test_query_image_that_cannot_be_decoded(populated, run, tmp_path):
    bad = tmp_path / "query.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 garbage")
    before = counts(populated)
    result = run("search", str(bad), "--model", "tiny")
    one_line_error(result, "query.jpg")
    assert counts(populated) == before


def test_unknown_model(populated, run):
    result = run("extract", "--model", "does-not-exist")
    one_line_error(result, "model 'does-not-exist' does not exist", "tiny", "manet models create")


def test_imagenet_weights_offline(populated, run, tmp_path, monkeypatch):
    # An empty cache and an unreachable proxy make the download fail the way it does offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "")
    assert run("models", "create", "offline", "--backbone", "resnet18", "--weights", "imagenet",
               "--image-size", "64", "--pooling", "mac").exit_code == 0
    before = counts(populated)
    result = run("extract", "--model", "offline")
    one_line_error(result, "ImageNet weights for resnet18", "--backbone efficientnet-lite0", "--weights none")
    assert counts(populated) == before

    # The default model is pretrained offline: EfficientNet-Lite0's weights came with manet.
    assert run("models", "create", "x").exit_code == 0
    record = populated.model("x")
    assert (record.config.backbone, record.config.weights, record.dim) == ("efficientnet-lite0", "imagenet", 1280)
    result = run("extract", "--model", "x")
    assert result.exit_code == 0, result.output
    assert "random" not in result.output.lower()
    assert counts(populated)["descriptors"] > before["descriptors"]


@pytest.mark.slow  # a Python process importing manet
def test_database_unreachable(tmp_path):
    url = "postgresql://manet@127.0.0.1:9/manet"
    result = subprocess.run(
        [sys.executable, "-m", "manet.cli", "models", "list"],
        env={"MANET_DATABASE_URL": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0] and "MANET_DATABASE_URL" in lines[0], result.stderr


def test_extract_with_local_worker_processes(populated, run):
    assert run("models", "create", "via-workers", "--backbone", "resnet18", "--weights", "none",
               "--image-size", "64", "--pooling", "mac").exit_code == 0
    result = run("extract", "--model", "via-workers", "--workers", "2", "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.output
    totals = json.loads(result.output)
    assert totals["exit_codes"] == [0, 0] and totals["failed"] == 0
    with populated.db.begin() as conn:
        ok_images = conn.execute(sa.text("SELECT count(*) FROM images WHERE status = 'ok'")).scalar()
    assert totals["extracted"] == ok_images

"""Failed images: recorded with their error, listed by `status --failed`, requeued by `retry`."""

from __future__ import annotations

import json

from click.testing import CliRunner
from PIL import Image

from helpers import TINY_MODEL
from manet.cli.main import cli


def test_status_failed_and_retry(retriever, database_url, tmp_path):
    assert retriever.db  # migrates the module's database (the CLI leaves external ones alone)
    def manet(*args: str):
        result = CliRunner().invoke(cli, ["--quiet", "--device", "cpu", "--database-url", database_url, *args])
        assert result.exit_code == 0, result.output
        return result.output

    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)]):
        Image.new("RGB", (48, 40), colour).save(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "m.csv").write_text("sku,image\nA,ok0.png\nB,ok1.png\nC,ok2.png\nD,broken.jpg\n")
    manet("ingest", "manifest", str(tmp_path / "m.csv"))
    retriever.create_model("tiny", pooling="mac", **TINY_MODEL)
    # A file that decoded at ingest but is damaged before extraction: a poison file for the worker.
    (tmp_path / "ok2.png").write_bytes(b"garbage")
    extracted = json.loads(manet("extract", "--model", "tiny", "--json"))
    assert extracted["extracted"] == 2 and extracted["failed"] == 1

    status = json.loads(manet("status", "--model", "tiny", "--json"))
    assert (status["done"], status["pending"], status["failed"], status["ingest_failed"]) == (2, 0, 1, 1)
    failed = json.loads(manet("status", "--model", "tiny", "--failed", "--json"))
    assert sorted(row["stage"] for row in failed) == ["extract", "ingest"]
    assert all(row["error"] for row in failed)
    # Extraction does not retry a failed image on its own.
    assert json.loads(manet("extract", "--model", "tiny", "--json"))["extracted"] == 0

    Image.new("RGB", (48, 40), (0, 0, 200)).save(tmp_path / "ok2.png")
    Image.new("RGB", (48, 40), (90, 90, 90)).save(tmp_path / "broken.jpg", format="JPEG")
    report = json.loads(manet("retry", "--failed", "--json"))
    assert report == {"requeued": 1, "ingest_recovered": 1, "ingest_still_failed": 0}
    assert json.loads(manet("extract", "--model", "tiny", "--json"))["extracted"] == 2
    status = json.loads(manet("status", "--model", "tiny", "--json"))
    assert (status["done"], status["pending"], status["failed"], status["ingest_failed"]) == (4, 0, 0, 0)

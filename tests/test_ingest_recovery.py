"""Nothing good is lost: a manifest of 1,000 good photos with bad paths spread through it is
stored and extracted in one run each, and an ingest killed with SIGKILL mid-run loses at most the
batch in flight; running it again completes it, with every row stored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import sqlalchemy as sa

from helpers import TINY_MODEL, mixed_manifest, run_manet
from manet.api import Retriever
from manet.store import embedded

BATCH = 10


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return mixed_manifest(tmp_path_factory.mktemp("mixed"))


def _fresh_database(pg_home, name: str) -> tuple[str, dict[str, str]]:
    url = embedded.start(pg_home, name, recreate=True)
    with Retriever(url, device="cpu", auto_upgrade=True) as retriever:
        retriever.create_model("tiny", pooling="mac", **TINY_MODEL)
    return url, {**os.environ, "MANET_DATABASE_URL": url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def _rows(url: str) -> dict[str, tuple[int, str]]:
    """uri -> (number of rows with it, status of the first)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT uri, count(*), min(status) FROM images GROUP BY uri").fetchall()
    return {uri: (count, status) for uri, count, status in rows}


def _check_complete(url: str, manifest) -> None:
    rows = _rows(url)
    assert len(rows) == manifest.rows and all(count == 1 for count, _ in rows.values())
    assert all(rows[uri][1] == "ok" for uri in manifest.good)
    assert all(rows[uri][1] == "failed" for uri in manifest.bad)


def test_every_good_row_is_stored_and_extracted_in_one_run(pg_home, manifest):
    assert len(manifest.good) == 1000 and len(manifest.bad) >= 30
    url, env = _fresh_database(pg_home, "t_recovery_one_run")
    ingest = run_manet("-q", "ingest", "manifest", str(manifest.path), "--json", env=env, timeout=300)
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(ingest.stdout)
    assert report["images_added"] == 1000 and report["failed"] == len(manifest.bad)
    assert {failure["image"] for failure in report["failures"]} == set(manifest.bad)
    _check_complete(url, manifest)
    extract = run_manet("-q", "extract", "--model", "tiny", "--json", env=env, timeout=600)
    assert extract.returncode == 0, extract.stderr
    assert json.loads(extract.stdout)["extracted"] == 1000
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(DISTINCT image_id) FROM descriptors").fetchone()[0] == 1000


def test_an_ingest_killed_mid_run_loses_at_most_the_batch_in_flight(pg_home, manifest):
    url, env = _fresh_database(pg_home, "t_recovery_sigkill")
    process = subprocess.Popen([sys.executable, "-m", "manet.cli", "-q", "ingest", "manifest", str(manifest.path),
                                "--batch-size", str(BATCH)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while sum(count for count, _ in _rows(url).values()) < 10 * BATCH:  # well into the run
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    stored = sum(count for count, _ in _rows(url).values())
    assert stored < manifest.rows, "the ingest finished before it was killed; nothing was tested"
    assert stored % BATCH == 0, f"{stored} rows: a batch was half committed"

    again = run_manet("-q", "ingest", "manifest", str(manifest.path), "--batch-size", str(BATCH), "--json",
                      env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["already_present"] == stored
    assert report["images_added"] + report["failed"] == manifest.rows - stored
    _check_complete(url, manifest)


def test_the_caps_from_options_and_environment_fail_files_not_the_run(retriever, run, tmp_path, monkeypatch):
    """A file over the time budget (--file-timeout) or the byte cap (MANET_MAX_BYTES) is recorded as
    failed with the reason and the run goes on; `manet retry` under the default caps recovers it."""
    import numpy as np
    from PIL import Image

    assert retriever.db is not None  # the module's database, migrated before the CLI uses it
    rng = np.random.default_rng(9)
    lines = ["sku,image"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"C{i},{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")

    slow = json.loads(run("--file-timeout", "0.000001", "ingest", "manifest", str(tmp_path / "m.csv"),
                          "--json").output)
    assert slow["failed"] == 6 and slow["images_added"] == 0
    assert all("took longer than 1e-06 s to read and decode" in f["error"] and f["image"] in f["error"]
               for f in slow["failures"])
    monkeypatch.setenv("MANET_MAX_BYTES", "100")
    capped = json.loads(run("retry", "--failed", "--json").output)
    assert capped["ingest_recovered"] == 0 and capped["ingest_still_failed"] == 6
    with retriever.db.begin() as conn:
        errors = list(conn.execute(sa.text("SELECT error FROM images WHERE status = 'failed'")).scalars())
    assert len(errors) == 6 and all("over the cap of 100 bytes" in error for error in errors)
    monkeypatch.delenv("MANET_MAX_BYTES")
    assert json.loads(run("retry", "--failed", "--json").output)["ingest_recovered"] == 6

"""The embedded PostgreSQL stops in the middle of a worker run, or of an ingest, and comes back:
the command waits, reconnects and finishes with nothing lost or duplicated."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import psycopg
import sqlalchemy as sa
from PIL import Image

from helpers import TINY_MODEL, mixed_manifest
from manet.api import Retriever
from manet.store import embedded

IMAGES = 300

#: The session server's fast shutdown ends with a checkpoint of every test module's writes: on a
#: loaded 2-core machine (CI observed it beside a 1M-row benchmark) that took longer than the
#: 30 s default.
STOP_TIMEOUT = 180.0


def test_worker_survives_a_database_restart(retriever, database_url, pg_home, tmp_path):
    rng = np.random.default_rng(3)
    lines = ["sku,image"]
    for i in range(IMAGES):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"P{i % 20},{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    retriever.ingest("manifest", tmp_path / "m.csv")
    retriever.create_model("tiny", pooling="mac", **TINY_MODEL)
    retriever.close()  # our own pooled connections would die with the server too

    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "manet.cli", "-q", "worker", "--model", "tiny", "--until-empty",
                               "--batch-size", "8", "--max-outage", "120"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:  # wait until the worker is well into the run
        with psycopg.connect(database_url) as conn:
            done = conn.execute("SELECT count(*) FROM descriptors").fetchone()[0]
        if done >= 40:
            break
        assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read().decode()
        time.sleep(0.05)
    assert embedded.stop(pg_home, timeout=STOP_TIMEOUT)
    time.sleep(3)  # the worker keeps running against a dead server
    assert worker.poll() is None
    embedded.start(pg_home)

    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err.decode()
    assert "database unavailable" in err.decode()  # it did notice the outage
    with retriever.db.begin() as conn:
        total, distinct = conn.execute(sa.text("SELECT count(*), count(DISTINCT image_id) FROM descriptors")).one()
        failed = conn.execute(sa.text("SELECT count(*) FROM extraction_work WHERE status <> 'done'")).scalar()
    assert total == distinct == IMAGES and failed == 0


def test_ingest_survives_a_database_restart(pg_home, tmp_path):
    manifest = mixed_manifest(tmp_path / "mixed")
    url = embedded.start(pg_home, "t_outage_ingest", recreate=True)
    Retriever(url, auto_upgrade=True).db.dispose()  # the schema, then no connection of ours left open
    env = {**os.environ, "MANET_DATABASE_URL": url, "OMP_NUM_THREADS": "1"}
    ingest = subprocess.Popen([sys.executable, "-m", "manet.cli", "-q", "ingest", "manifest", str(manifest.path),
                               "--batch-size", "10", "--max-outage", "120"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def stored() -> int:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]

    deadline = time.monotonic() + 300
    while stored() < 100:  # wait until the ingest is well into the run
        assert ingest.poll() is None and time.monotonic() < deadline, ingest.stderr.read().decode()
        time.sleep(0.01)
    assert embedded.stop(pg_home, timeout=STOP_TIMEOUT)
    time.sleep(3)  # the ingest keeps running against a dead server
    assert ingest.poll() is None, "the ingest gave up (or finished) during the outage"
    embedded.start(pg_home)

    out, err = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, err.decode()
    assert "database unavailable" in err.decode()  # it did notice the outage
    with psycopg.connect(url) as conn:
        rows = dict(conn.execute("SELECT uri, count(*) FROM images GROUP BY uri").fetchall())
        ok = {uri for (uri,) in conn.execute("SELECT uri FROM images WHERE status = 'ok'")}
    assert len(rows) == manifest.rows and set(rows.values()) == {1}  # every row stored, once
    assert ok == set(manifest.good)

"""Many real worker processes on one database: a SIGKILLed worker loses nothing, every image
gets exactly one descriptor, poison files end up failed and block nobody."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import sqlalchemy as sa
from PIL import Image

from helpers import TINY_MODEL

IMAGES = 1000
POISON = 3


def test_four_workers_one_killed(retriever, database_url, tmp_path):
    rng = np.random.default_rng(0)
    lines = ["sku,image"]
    for i in range(IMAGES + POISON):
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        lines.append(f"P{i % 50},{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    report = retriever.ingest("manifest", tmp_path / "m.csv")
    assert report.images_added == IMAGES + POISON
    retriever.create_model("tiny", pooling="mac", **TINY_MODEL)
    poison = [tmp_path / f"{i}.png" for i in range(0, IMAGES + POISON, (IMAGES + POISON) // POISON)][:POISON]
    for path in poison:  # decoded fine at ingest, broken by the time a worker reads it
        path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "manet.cli", "-q", "worker", "--model", "tiny", "--until-empty",
               "--batch-size", "16", "--lease-seconds", "5", "--max-attempts", "3", "--json"]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for _ in range(4)]
    victim = workers[0]
    deadline = time.monotonic() + 300
    with retriever.db.engine.connect() as conn:
        while True:  # kill the victim while it holds a lease: mid-batch
            held = conn.execute(sa.text(
                "SELECT count(*) FROM extraction_work WHERE status = 'leased' AND lease_owner LIKE :p"),
                {"p": f"%:{victim.pid}:%"}).scalar()
            conn.commit()
            done = conn.execute(sa.text("SELECT count(*) FROM descriptors")).scalar()
            conn.commit()
            if held and done > 0:
                break
            assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read().decode()
            time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()

    reports = []
    for process in workers[1:]:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()
        reports.append(json.loads(out))
    assert sum(r["extracted"] for r in reports) > 0

    with retriever.db.begin() as conn:
        per_image = conn.execute(sa.text(
            "SELECT i.uri, count(d.image_id) AS n FROM images i "
            "LEFT JOIN descriptors d ON d.image_id = i.id GROUP BY i.uri")).all()
        failed = conn.execute(sa.text(
            "SELECT i.uri FROM extraction_work w JOIN images i ON i.id = w.image_id WHERE w.status = 'failed'"
        )).scalars().all()
        leftover = conn.execute(sa.text(
            "SELECT count(*) FROM extraction_work WHERE status IN ('pending', 'leased')")).scalar()
    counts = {uri: n for uri, n in per_image}
    assert sorted(failed) == sorted(str(p) for p in poison)
    assert all(counts[str(p)] == 0 for p in poison)
    assert sum(1 for uri, n in counts.items() if n == 1) == IMAGES
    assert max(counts.values()) == 1 and leftover == 0
    status = retriever.status("tiny")
    assert (status["done"], status["failed"], status["pending"], status["leased"]) == (IMAGES, POISON, 0, 0)
    assert status["rate_per_second"] > 0 and status["eta_seconds"] == 0


def test_heartbeat_keeps_a_slow_batch_leased(retriever, tmp_path):
    from manet.extract.worker import claim, enqueue, heartbeat

    model = retriever.model("tiny")
    with retriever.db.begin() as conn:  # requeue a few images for this check
        conn.execute(sa.text("DELETE FROM descriptors WHERE image_id IN (SELECT id FROM images ORDER BY id LIMIT 4)"))
        conn.execute(sa.text("DELETE FROM extraction_work WHERE image_id IN (SELECT id FROM images ORDER BY id LIMIT 4)"))
    enqueue(retriever.db, model)
    batch = claim(retriever.db, model, "slow-worker", 4, lease_seconds=1.0, max_attempts=3)
    assert len(batch) == 4
    with heartbeat(retriever.db, model, "slow-worker", lease_seconds=1.0):
        time.sleep(2.5)  # well past the 1 s lease: only the heartbeat keeps it
        assert claim(retriever.db, model, "thief", 4, lease_seconds=1.0, max_attempts=3) == []
    time.sleep(1.5)  # no heartbeat any more: the lease expires and another worker may take it
    assert len(claim(retriever.db, model, "thief", 4, lease_seconds=1.0, max_attempts=3)) == 4

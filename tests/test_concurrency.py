"""Many clients searching while a worker writes descriptors and the index is rebuilt."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import sqlalchemy as sa
from PIL import Image

from helpers import TINY_MODEL
from manet.store.database import as_array

THREADS = 8
SEARCHES = 200


def test_searches_during_extraction_and_index_build(retriever, database_url, small_catalogue, tmp_path):
    retriever.ingest("manifest", small_catalogue)
    retriever.create_model("tiny", pooling="mac", **TINY_MODEL)
    retriever.extract("tiny")
    retriever.build_index("tiny")
    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT image_id, gallery, embedding FROM descriptors ORDER BY image_id")).all()
    ids = np.array([r.image_id for r in rows])
    gallery = np.array([r.gallery for r in rows])
    vectors = np.stack([as_array(r.embedding) for r in rows])
    queries = vectors[~gallery]
    expected = [ids[gallery][np.argsort(-(vectors[gallery] @ q), kind="stable")[:7]].tolist() for q in queries]

    # More images and a second model, extracted by a worker process while we search.
    rng = np.random.default_rng(1)
    lines = ["sku,image"]
    for i in range(400):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"X{i},{i}.png")
    (tmp_path / "more.csv").write_text("\n".join(lines) + "\n")
    retriever.ingest("manifest", tmp_path / "more.csv")
    retriever.create_model("other", pooling="gem", **TINY_MODEL)
    env = {**os.environ, "MANET_DATABASE_URL": database_url, "MANET_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "manet.cli", "-q", "worker", "--model", "other",
                               "--until-empty", "--batch-size", "8"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def rebuild_index() -> int:
        builds = 0
        while not stop.is_set():
            retriever.build_index("tiny")
            builds += 1
        return builds

    def client(seed: int) -> list[str]:
        problems = []
        order = np.random.default_rng(seed).integers(0, len(queries), SEARCHES)
        for n in order:
            try:
                got = [hit.image_id for hit in retriever.search("tiny", vector=queries[n], k=7)]
            except Exception as exc:  # any error is a failure of the test
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            if got != expected[n]:
                problems.append(f"query {n}: {got} != {expected[n]}")
        return problems

    with ThreadPoolExecutor(THREADS + 1) as pool:
        builder = pool.submit(rebuild_index)
        results = list(pool.map(client, range(THREADS)))
        stop.set()
        assert builder.result() >= 1
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err.decode()
    problems = [p for r in results for p in r]
    assert problems == [], problems[:5]
    with retriever.db.begin() as conn:
        other = conn.execute(sa.text(
            "SELECT count(*) FROM descriptors d JOIN models m ON m.id = d.model_id WHERE m.name = 'other'")).scalar()
    assert other == 30 + 400

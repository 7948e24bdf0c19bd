"""docs/SCALING.md, run: its SQL blocks (LIST partitions by category) execute on the embedded
PostgreSQL and manet keeps working on the partitioned table; a streaming read replica made with
the PostgreSQL binaries that pgserver ships serves manet's searches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from manet.cli.main import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "SCALING.md"


def doc_sql(name: str) -> str:
    """The ```sql block that follows ``<!-- sql: NAME -->`` in docs/SCALING.md."""
    match = re.search(rf"<!-- sql: {re.escape(name)} -->\s*```sql\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"docs/SCALING.md has no SQL block '{name}'"
    return match.group(1)


def _hits(retriever, **query) -> list[int]:
    return [hit.image_id for hit in retriever.search("tiny", k=7, **query)]


def _plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += _plan_nodes(child)
    return nodes


def test_list_partitions_by_category(populated, database_url):
    """The doc's SQL, in order, on a database with model 1 ('tiny', 512 dims) indexed."""
    retriever = populated
    assert retriever.model("tiny").id == 1 and retriever.model("tiny").dim == 512  # what the doc's SQL names
    unfiltered, in_category = _hits(retriever, image_id=1), _hits(retriever, image_id=1, category="box")

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(doc_sql("partition-by-category"))
        counts = conn.execute("SELECT (SELECT count(*) FROM descriptors), "
                              "(SELECT count(*) FROM descriptors_unpartitioned)").fetchone()
        assert counts[0] == counts[1] > 0
        misplaced = conn.execute(
            "SELECT count(*) FROM descriptors WHERE category_id <> manet_primary_category(image_id) "
            "OR tableoid::regclass::text <> 'descriptors_category_' || category_id").fetchone()[0]
        assert misplaced == 0
        categories = conn.execute("SELECT count(*) FROM categories").fetchone()[0]

        conn.execute(doc_sql("partition-index"))
        per_partition = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'descriptors_%' AND indexdef LIKE '%USING hnsw%' "
            "AND indexdef LIKE '%WHERE ((model_id = 1) AND gallery)%'").fetchone()[0]
        assert per_partition == categories + 1  # every category partition + the uncategorised one

        # The category-filtered query prunes to one partition and uses that partition's HNSW index
        # (sorting and sequential scans off: on 10 rows the planner would rather sort them).
        query = doc_sql("partition-query")
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off; "
                         "SET LOCAL hnsw.iterative_scan = strict_order")
            plan = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()[0][0]["Plan"]
            scanned = {(n.get("Relation Name"), n.get("Index Name")) for n in _plan_nodes(plan)
                       if n.get("Alias", "").split("_")[0] == "d" and n.get("Relation Name")}
            assert scanned == {("descriptors_category_2", "descriptors_category_2_embedding_idx")}
            rows = [row[0] for row in conn.execute(query)]
        stored = conn.execute("SELECT image_id, embedding::text FROM descriptors "
                              "WHERE model_id = 1 AND gallery AND category_id = 2").fetchall()
        query_vector = np.array(json.loads(conn.execute(
            "SELECT embedding::text FROM descriptors WHERE model_id = 1 AND image_id = 1").fetchone()[0]))
        exact = sorted(stored, key=lambda r: -float(np.dot(json.loads(r[1]), query_vector)))
        assert rows == [image_id for image_id, _ in exact][:7] and rows

    # manet itself, unchanged, on the partitioned table.
    assert _hits(retriever, image_id=1) == unfiltered
    assert _hits(retriever, image_id=1, category="box") == in_category
    retriever.build_index("tiny")
    assert _hits(retriever, image_id=1) == unfiltered
    with psycopg.connect(database_url) as conn:
        assert [r[0] for r in conn.execute("SELECT image_id FROM manet_similar('tiny', 1, 7)")] == unfiltered
    assert retriever.evaluate("tiny").queries > 0
    assert retriever.db.schema_drift()  # `manet db check` reports the layout manet's migrations do not know

    # New descriptors (both writers: extract and the worker queue) land uncategorised until moved.
    retriever.create_model("tiny-mac", pooling="mac", backbone="resnet18", weights="none", image_size=64)
    retriever.create_model("tiny-gem", pooling="gem", backbone="resnet18", weights="none", image_size=64)
    assert retriever.extract("tiny-mac", num_workers=0).extracted > 0
    assert retriever.work("tiny-gem", until_empty=True, batch_size=64).extracted > 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        landed = conn.execute("SELECT count(*) FROM descriptors_uncategorised WHERE model_id > 1").fetchone()[0]
        assert landed == 2 * counts[0]  # every image of both new models
        conn.execute(doc_sql("partition-maintenance"))
        assert conn.execute("SELECT count(*) FROM descriptors_uncategorised").fetchone()[0] == 0
        misplaced = conn.execute(
            "SELECT count(*) FROM descriptors WHERE tableoid::regclass::text <> 'descriptors_category_' || category_id"
        ).fetchone()[0]
        assert misplaced == 0


# -- a streaming read replica --------------------------------------------------------------------
@pytest.fixture(scope="module")
def standby(populated, database_url):
    """A hot standby of the test server: pg_basebackup -R -X stream -C -S, then pg_ctl start on
    another port, with the PostgreSQL binaries pgserver ships. Yields (standby URL, primary)."""
    pgserver = pytest.importorskip("pgserver")
    if not all(hasattr(pgserver, tool) for tool in ("pg_basebackup", "pg_ctl")):
        pytest.skip("pgserver ships no pg_basebackup / pg_ctl here")
    primary = psycopg.conninfo.conninfo_to_dict(database_url)
    # The embedded server runs as its own 'pgserver' user when started by root (see pgserver).
    as_user = "pgserver" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="manet-standby-"))  # short: its Unix socket lives here
    if as_user:
        shutil.chown(data, as_user)
    port = int(primary.get("port") or 5432) + 1
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(doc_sql("replication-role"))
    try:
        pgserver.pg_basebackup(["-d", f"host={primary['host']} port={primary.get('port') or 5432} "
                                f"user=manet_replicator", "-D", str(data), "-R", "-X", "stream",
                                "-C", "-S", "manet_replica_1", "--checkpoint=fast"], user=as_user, timeout=120)
        pgserver.pg_ctl(["-o", f"-p {port} -k {data} -h ''", "-l", str(data / "standby.log"), "-w", "start"],
                        pgdata=data, user=as_user, timeout=120)
        yield f"postgresql://postgres@/{primary['dbname']}?host={data}&port={port}", primary
    finally:
        try:
            pgserver.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=data, user=as_user, timeout=120)
        except subprocess.CalledProcessError:  # it never started
            pass
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = 'manet_replica_1'")
            conn.execute("DROP ROLE IF EXISTS manet_replicator")
        shutil.rmtree(data, ignore_errors=True)


def test_read_replica_serves_searches(populated, standby, database_url):
    from manet.api import Retriever

    standby_url, primary = standby
    # A write on the primary streams to the standby.
    populated.create_model("written-after-backup", backbone="resnet18", weights="none", image_size=64)
    with psycopg.connect(standby_url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        deadline = time.monotonic() + 30
        while not conn.execute("SELECT 1 FROM models WHERE name = 'written-after-backup'").fetchone():
            assert time.monotonic() < deadline, "the standby did not replay the primary's write"
            conn.rollback()
            time.sleep(0.1)

    with Retriever(standby_url, device="cpu", auto_upgrade=False) as replica:
        on_replica = replica.search("tiny", image_id=3, k=5)
    on_primary = populated.search("tiny", image_id=3, k=5)
    assert [(h.image_id, round(h.score, 5)) for h in on_replica] == [(h.image_id, round(h.score, 5)) for h in on_primary]

    # Several hosts in one URL: libpq picks the standby.
    hosts = f"{primary['host']},{standby_url.split('host=')[1].split('&')[0]}"
    ports = f"{primary.get('port') or 5432},{standby_url.rsplit('port=', 1)[1]}"
    any_standby = f"postgresql://postgres@/{primary['dbname']}?host={hosts}&port={ports}&target_session_attrs=standby"
    with Retriever(any_standby, auto_upgrade=False) as picked, picked.db.raw() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]

    # A command that writes, pointed at the standby: one line that names the fix, exit 1.
    result = CliRunner().invoke(cli, ["--database-url", standby_url, "-q", "eval", "--model", "tiny"])
    assert result.exit_code == 1 and "read-only" in result.output and "primary" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1

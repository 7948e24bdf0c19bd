"""Index upkeep on a real database: `manet index status` (rows, size, dead tuples, last build,
leftovers of a failed rebuild) and `manet index rebuild --concurrently` with searches running
meanwhile (no error, no deleted row, the exact top-7 after)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from manet.bench.search import DescriptorGenerator, load_gallery
from manet.errors import ManetError, NotFoundError
from manet.store.events import read_events
from manet.store.models import create_vector_model

N, DIM = 4000, 48


@pytest.fixture(scope="module")
def vec(retriever):
    """Model 'vec': N generated gallery descriptors (image ids 1..N), indexed; the vectors."""
    generator = DescriptorGenerator(DIM, 12, seed=7)
    model = create_vector_model(retriever.db, "vec", DIM, {})
    loaded = load_gallery(retriever.db, model, generator.gallery(N), generator.queries(8), n=N, selectivities=(0.25,),
                          keep_vectors=True)
    retriever.build_index("vec")
    return retriever, loaded.vectors, generator.queries(40)


def _status(run, model: str) -> dict:
    result = run("index", "status", "--model", model, "--json")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    return row


def test_status_reports_rows_size_and_last_build(vec, run):
    retriever, _, _ = vec
    row = _status(run, "vec")
    assert row["exists"] and row["valid"] and row["rows"] == N and row["index_tuples"] == N
    assert row["size_bytes"] > N * DIM * 4 and row["size"].endswith(("kB", "MB"))
    assert row["layout"] == {"quantize": "none", "rerank_factor": 1, "m": 16, "ef_construction": 64}
    assert row["built_at"] and row["leftovers"] == [] and row["hint"] is None
    assert isinstance(row["dead_tuples"], int) and isinstance(row["live_tuples"], int)
    assert row["index"] == retriever.model("vec").index_name
    text = run("index", "status").output
    assert "vec" in text and "valid" in text and "dead of" in text


def test_status_and_rebuild_of_a_model_without_an_index(vec, run):
    retriever, _, _ = vec
    create_vector_model(retriever.db, "bare", DIM, {})
    row = _status(run, "bare")
    assert not row["exists"] and row["size_bytes"] is None and row["hint"] == (
        "no descriptors; run: manet extract --model bare")
    result = run("index", "rebuild", "bare")
    assert result.exit_code == 1 and result.output.strip().endswith(
        "model 'bare' has no index yet; run: manet index build --model bare")
    with pytest.raises(NotFoundError, match="model 'nope' does not exist"):
        retriever.rebuild_index("nope")


def _dead_tuples(run, at_least: int) -> int:
    """The status's dead tuples once the statistics show ``at_least`` (they lag a commit by ~1 s)."""
    deadline = time.monotonic() + 15
    while True:
        dead = _status(run, "vec")["dead_tuples"]
        if dead >= at_least or time.monotonic() > deadline:
            return dead
        time.sleep(0.3)


def _searcher(retriever, url: str, queries: np.ndarray, stop: threading.Event, log: list, errors: list,
              sql: bool) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                query = queries[i % len(queries)]
                i += 1
                if sql:
                    ids = [r[0] for r in conn.execute("SELECT image_id FROM manet_search('vec', %s::vector, 7)",
                                                      [str(query.tolist())]).fetchall()]
                else:
                    ids = [h.image_id for h in retriever.search("vec", vector=query, k=7)]
                log.append((time.monotonic(), ids))
    except Exception as exc:  # counted: the test requires none
        errors.append(repr(exc))


def _exact(vectors: np.ndarray, alive: np.ndarray, query: np.ndarray) -> list[int]:
    ids = np.flatnonzero(alive) + 1
    return ids[np.argsort(-(vectors[alive] @ query), kind="stable")[:7]].tolist()


def test_damaged_index_options_are_one_line_and_a_build_replaces_them(vec, run):
    """Index options edited in the database: search and rebuild refuse them in one line, and the
    build that line names replaces them."""
    retriever, _, _ = vec
    for damaged, shown in (({"quantize": 5}, "quantize=5"), ({"quantize": "none", "rerank_factor": "abc"},
                                                                 "rerank_factor='abc'"),
                           ({"quantize": "binary", "rerank_factor": 10**9}, "rerank_factor=1000000000"),
                           ({"quantize": "none", "m": "x"}, "m='x'"), ([], "invalid=[]"), ("s", "invalid='s'")):
        with retriever.db.begin() as conn:
            conn.execute(sa.text("UPDATE models SET index_options = CAST(:o AS jsonb) WHERE name = 'vec'"),
                         {"o": json.dumps(damaged)})
        for args in (("search", "--model", "vec", "--image-id", "1"), ("index", "rebuild", "vec"),
                     ("index", "build", "--model", "vec")):
            result = run(*args)
            assert result.exit_code == 1, (damaged, args, result.output)
            assert f"model 'vec' has damaged index options in the database ({shown})" in result.output
            assert "manet index build --model vec --quantize none" in result.output and "Traceback" not in result.output
        assert run("index", "build", "--model", "vec", "--quantize", "none").exit_code == 0
        assert _status(run, "vec")["layout"] == {"quantize": "none", "rerank_factor": 1, "m": 16, "ef_construction": 64}
        assert run("search", "--model", "vec", "--image-id", "1").exit_code == 0


def test_rebuild_concurrently_while_searching_after_deleting_a_fifth(vec, run, database_url):
    retriever, vectors, queries = vec
    with retriever.db.begin() as conn:  # a fifth of the catalogue goes (descriptors cascade)
        deleted = conn.execute(sa.text("DELETE FROM images WHERE id % 5 = 0")).rowcount
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))  # else up to 10 s idle before it counts
    alive = np.arange(1, N + 1) % 5 != 0
    assert deleted == N // 5
    assert _dead_tuples(run, deleted) >= deleted
    before = _status(run, "vec")
    stop, log, errors = threading.Event(), [], []
    threads = [threading.Thread(target=_searcher, args=(retriever, database_url, queries, stop, log, errors,
                                                        n % 2 == 1)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        result = run("index", "rebuild", "vec", "--concurrently", "--json")
        finished = time.monotonic()
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert errors == []
    assert report["concurrently"] and report["rows"] == N - deleted and report["parallel_workers"] == 0
    assert report["size_bytes_before"] == before["size_bytes"] and report["size_bytes_after"] > 0
    during = [ids for at, ids in log if started < at < finished]
    assert during, "no search ran while the index was rebuilt"
    assert all(len(ids) == 7 and all(i % 5 for i in ids) for _, ids in log)  # never a deleted row
    after = _status(run, "vec")
    assert after["valid"] and after["built_at"] > before["built_at"] and after["index_tuples"] == N - deleted
    for query in queries[:10]:
        hits = retriever.search("vec", vector=query, k=7, ef_search=400)
        assert [h.image_id for h in hits] == _exact(vectors, alive, query)
    with retriever.db.begin() as conn:
        [event] = read_events(conn, action="index.rebuild", limit=1)
    assert event["model_id"] == retriever.model("vec").id and event["details"]["concurrently"] is True


def test_rebuild_drops_what_a_failed_concurrent_build_left(vec, run, database_url):
    retriever, _, _ = vec
    record = retriever.model("vec")
    leftover = f"{record.index_name}_ccnew"
    with psycopg.connect(database_url, autocommit=True) as conn:  # fails on duplicates, leaves it INVALID
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {leftover} ON descriptors ((1)) "
                         f"WHERE model_id = {record.id}")
    row = _status(run, "vec")
    assert row["leftovers"] == [leftover]
    assert row["hint"] == f"a failed rebuild left {leftover}; run: manet index rebuild vec"
    report = retriever.rebuild_index("vec", concurrently=False)
    assert report["dropped_leftovers"] == [leftover] and not report["concurrently"]
    assert _status(run, "vec")["leftovers"] == []


def test_a_second_rebuild_at_the_same_time_is_refused(vec, database_url):
    from manet.search.index_upkeep import REBUILD_LOCK

    retriever, _, _ = vec
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (REBUILD_LOCK, retriever.model("vec").id))
        with pytest.raises(ManetError, match="is being rebuilt by another session"):
            retriever.rebuild_index("vec")


# -- the benchmark, small ---------------------------------------------------------------------
@pytest.fixture
def bench_url(pg_home, monkeypatch):
    """An empty database of its own (benchmarks refuse one that holds a catalogue)."""
    from manet.store import embedded

    url = embedded.start(pg_home, "t_index_upkeep_bench", recreate=True)
    monkeypatch.setenv("MANET_DATABASE_URL", url)
    return url


def test_bench_index_upkeep_small(bench_url):
    from click.testing import CliRunner

    from manet.cli.main import cli

    args = ["--quiet", "bench", "index-upkeep", "--n", "2000", "--dim", "32", "--intrinsic-dim", "8",
            "--queries", "60", "--delete-fraction", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [p["phase"] for p in report["phases"]] == ["built", "deleted", "rebuilt"]
    assert [p["rows"] for p in report["phases"]] == [2000, 1600, 1600] and report["deleted"] == 400
    for phase in report["phases"]:
        assert 0.5 < phase["recall_at_7"] <= 1.0 and phase["rows_min"] == 7 and phase["p50_ms"] > 0
    assert report["phases"][1]["dead_tuples"] >= 400
    assert report["rebuild_s"] > 0 and report["index_size_after_rebuild"] > 0
    assert report["rebuild_parallel_workers"] == 0  # the embedded pgvector 0.8.1 (CVE-2026-3172)
    assert set(report["ratios"]) == {"p50_deleted_over_built", "p50_rebuilt_over_deleted", "size_rebuilt_over_deleted"}
    with psycopg.connect(bench_url) as conn:  # the scratch database is left empty
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0
    table = CliRunner().invoke(cli, [*args, "--queries", "10"], catch_exceptions=False)
    assert table.exit_code == 0 and "REINDEX CONCURRENTLY" in table.output and "rebuilt" in table.output

"""`manet bench search`: the data generator, exact ground truth and recall (pure), and the
command end to end on the real database with small data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from manet.bench.search_data import CHUNK_ROWS, DescriptorGenerator
from manet.bench.search_timing import timed_series
from manet.bench.search_truth import RunningTopK, category_members, filtered_rows, merge_top_k, recall_at_k
from manet.cli.main import cli
from manet.config import sqlalchemy_url
from manet.search.index import hnsw_build_memory_mb

SMALL = ["--n", "3000", "--dim", "32", "--intrinsic-dim", "8", "--queries", "60", "--ef-search", "10,40",
         "--no-faiss"]


# -- pure functions against hand-computed examples ---------------------------------------------
def test_merge_top_k_keeps_the_best_of_both_sets():
    scores, ids = merge_top_k(np.array([[0.9, 0.5]]), np.array([[1, 2]]),
                              np.array([[0.7, 0.95, 0.1]]), np.array([3, 4, 5]), k=2)
    assert scores.tolist() == [[0.95, 0.9]] and ids.tolist() == [[4, 1]]


def test_recall_at_k_counts_shared_ids_and_missing_rows():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k([[3, 2, 1], [4, 5, 9]], truth, k=3) == pytest.approx((1 + 2 / 3) / 2)
    assert recall_at_k([[1], [4, 5, 6]], truth, k=3) == pytest.approx((1 / 3 + 1) / 2)


def test_category_members_are_an_evenly_spaced_fraction():
    assert np.flatnonzero(category_members(np.arange(1, 9), 0.25)).tolist() == [3, 7]  # ids 4 and 8
    assert category_members(np.arange(1, 1001), 0.05).sum() == 50
    # 10 rows = products 1..3 (4, 4, 2 images); at 0.5 products 2 (4 images) is in.
    assert filtered_rows(10, 0.5) == 4 and filtered_rows(12, 0.5) == 4 and filtered_rows(16, 0.5) == 8


def test_timed_series_rotates_runners_block_by_block():
    calls = []

    def runner(name):
        def run(q):
            calls.append((name, int(q[0])))
            return [int(q[0])]
        return run

    queries = np.arange(5, dtype=np.float32)[:, None]
    timed = timed_series({"a": runner("a"), "b": runner("b")}, queries, block=2)
    timed_calls = calls[-10:]  # after the untimed warm-up of every query through both
    assert calls[:-10] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3),
                           ("a", 4), ("b", 4)]
    assert timed_calls == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("b", 3), ("a", 2), ("a", 3),
                           ("a", 4), ("b", 4)]
    assert timed["a"][1] == [[0], [1], [2], [3], [4]] == timed["b"][1]
    assert len(timed["a"][0]) == len(timed["b"][0]) == 5


def test_hnsw_build_memory_estimate():
    # 1M x 512 float32, m=16: (2048 + 8 + 2*16*16 + 128) bytes * 1.25 = 3213.9 MiB
    assert hnsw_build_memory_mb(1_000_000, 512, "none", 16) == 3214
    # binary: 512 bits = 64 bytes + 8 + 512 + 128 = 712 bytes * 1.25 * 1M = 848.8 MiB
    assert hnsw_build_memory_mb(1_000_000, 512, "binary", 16) == 849
    assert hnsw_build_memory_mb(10, 512, "none", 16) == 64  # floor


def test_running_top_k_equals_a_full_sort():
    rng = np.random.default_rng(0)
    rows, queries = rng.standard_normal((500, 8)), rng.standard_normal((6, 8))
    running = RunningTopK(queries, k=7)
    for start in range(0, 500, 64):
        running.add(rows[start:start + 64], np.arange(start, min(start + 64, 500)) + 1)
    expected = np.argsort(-(queries @ rows.T), axis=1)[:, :7] + 1
    assert running.ids.tolist() == expected.tolist()


# -- the generator --------------------------------------------------------------------------
def _gallery(generator: DescriptorGenerator, n: int) -> np.ndarray:
    return np.concatenate(list(generator.gallery(n)))


def test_generator_is_deterministic_per_seed_and_prefix_stable():
    a = DescriptorGenerator(32, 8, seed=1)
    assert np.array_equal(_gallery(a, 100), _gallery(DescriptorGenerator(32, 8, seed=1), 100))
    assert np.array_equal(_gallery(a, CHUNK_ROWS + 10)[:100], _gallery(a, 100))
    assert np.array_equal(a.queries(5), DescriptorGenerator(32, 8, seed=1).queries(5))
    assert not np.allclose(_gallery(a, 100), _gallery(DescriptorGenerator(32, 8, seed=2), 100))


def test_generated_rows_are_unit_vectors_near_the_subspace():
    generator = DescriptorGenerator(64, 8, seed=0)
    rows = np.concatenate([_gallery(generator, 2000), generator.queries(200)])
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    residual = rows - (rows @ generator.basis.T) @ generator.basis
    # noise 0.1 against a subspace part of 1 + spread^2: ~0.8 % of the energy lies off the subspace
    assert (residual**2).sum(axis=1).mean() < 0.02
    assert np.median(np.linalg.norm(residual, axis=1)) < 0.15


def test_queries_are_fresh_draws_not_stored_rows_or_copies():
    generator = DescriptorGenerator(32, 8, seed=0)
    gallery, queries = _gallery(generator, 3000), generator.queries(200)
    query_nearest = (queries @ gallery.T).max(axis=1)
    # Held-out gallery rows show how close a fresh draw's nearest neighbour is.
    held, rest = gallery[:200], gallery[200:]
    fresh_nearest = (held @ rest.T).max(axis=1)
    assert query_nearest.max() < 0.9999  # no query is a stored row
    assert abs(np.median(query_nearest) - np.median(fresh_nearest)) < 0.02  # nor a perturbed copy


def test_intrinsic_dim_above_dim_is_refused():
    from manet.errors import ManetError

    with pytest.raises(ManetError, match="--intrinsic-dim 64 must be between 1 and --dim 32"):
        DescriptorGenerator(32)


# -- the command ------------------------------------------------------------------------------
@pytest.fixture
def manet(database_url, monkeypatch):
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--quiet", *args], catch_exceptions=False)

    return invoke


def _images(database_url: str) -> int:
    engine = sa.create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM images")).scalar()
    finally:
        engine.dispose()


def test_bench_search_json(manet, database_url):
    result = manet("bench", "search", *SMALL, "--filter-selectivity", "0.01,0.5", "--filter-queries", "20",
                   "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("n", "dim", "build_s", "p50_ms", "p99_ms", "qps", "recall_at_7", "sweep", "ef_at_recall_95",
                "p50_ms_at_recall_95", "p99_ms_at_recall_95", "raw_p50_ms_at_recall_95", "exact_p50_ms",
                "filtered_rows_min", "filtered_recall_at_7", "filtered_ef_search", "filters", "filter_exact_threshold",
                "filtered_over_unfiltered_max", "data", "versions", "ratios", "warmup"):
        assert key in report, key
    assert report["n"] == 3000 and report["dim"] == 32 and report["ef_search"] == 40
    assert report["data"]["source"] == "generator" and report["data"]["intrinsic_dim"] == 8
    assert [row["ef_search"] for row in report["sweep"]] == [10, 40]
    for row in report["sweep"]:
        assert set(row) >= {"p50_ms", "p99_ms", "qps", "recall_at_7", "raw_p50_ms", "raw_recall_at_7"}
        assert 0.0 <= row["recall_at_7"] <= 1.0
    # One row per selectivity: 28 and 1500 of the 3000 rows match. The 1500 are past the category
    # index's 1,000 rows: that category gets its own graph, which the planner walks.
    assert [(row["selectivity"], row["matching_rows"]) for row in report["filters"]] == [(0.01, 28), (0.5, 1500)]
    assert [(c["category"], c["rows"]) for c in report["category_indexes"]] == [("bench-filter-0.5", 1500)]
    for row in report["filters"]:
        for series in ("planner", "hnsw", "exact", "raw"):
            assert {f"{series}_p50_ms", f"{series}_p99_ms", f"{series}_recall_at_7"} <= set(row), series
        assert row["exact_recall_at_7"] == 1.0 and row["exact_rows_min"] == 7
    small, large = report["filters"]
    assert small["planner_path"] == "exact" and small["planner_recall_at_7"] == 1.0
    assert large["planner_path"] == "category-index" and large["planner_ef_search"] == 32  # 27 x 1.5 ** 0.45
    assert large["planner_recall_at_7"] >= 0.9
    assert report["filtered_rows_min"] == 7
    assert report["exact_recall_at_7"] == 1.0
    assert report["index"]["parallel_workers"] == 0  # the embedded pgvector 0.8.1 (CVE-2026-3172)
    assert _images(database_url) == 0  # the scratch database is left empty


def test_bench_search_table_from_a_vectors_file(manet, tmp_path):
    vectors = DescriptorGenerator(16, 4, seed=3)
    np.save(tmp_path / "v.npy", _gallery(vectors, 1500))
    result = manet("bench", "search", "--vectors", str(tmp_path / "v.npy"), "--queries", "20",
                   "--ef-search", "40", "--no-faiss")
    assert result.exit_code == 0, result.output
    assert "1480 x 16 descriptors from" in result.output and "v.npy" in result.output
    assert "exact scan" in result.output


@pytest.mark.parametrize("array, extra, message", [
    (np.zeros(10, dtype=np.float32), [], "expected a 2-D float array"),
    (np.ones((100, 16), dtype=np.float32), ["--dim", "32"], "has 16 dimensions, not --dim 32"),
    (np.ones((100, 16), dtype=np.int64), [], "expected float32 descriptors"),
    (np.ones((100, 16), dtype=np.float32), ["--queries-file", "q8.npy"], "--queries-file has 8 dimensions"),
])
def test_bad_vectors_file_is_a_one_line_error(manet, tmp_path, monkeypatch, array, extra, message):
    monkeypatch.chdir(tmp_path)
    np.save("v.npy", array)
    np.save("q8.npy", np.ones((5, 8), dtype=np.float32))
    result = manet("bench", "search", "--vectors", "v.npy", "--queries", "5", *extra)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and message in lines[0], result.output


def test_missing_vectors_file_is_a_one_line_error(manet, tmp_path):
    result = manet("bench", "search", "--vectors", str(tmp_path / "nope.npy"))
    assert result.exit_code == 1 and "cannot read --vectors" in result.output

"""Index layouts recorded in models.index_options: binary (Hamming + exact re-rank) and halfvec
indexes are used by search and manet_search, and their results are the brute-force top-7."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from helpers import search_plan
from manet.bench.search import DescriptorGenerator, load_gallery
from manet.errors import ManetError
from manet.search.query import search_query
from manet.store.models import create_vector_model

N, DIM = 400, 64


@pytest.fixture(scope="module")
def vectors(retriever):
    """A model 'vec' with N generated gallery descriptors (centred data, as binary codes need)."""
    generator = DescriptorGenerator(DIM, 16, clusters=20, seed=5)
    queries = generator.queries(20)
    model = create_vector_model(retriever.db, "vec", DIM, {})
    loaded = load_gallery(retriever.db, model, generator.gallery(N), queries, n=N, selectivities=(0.25,),
                          keep_vectors=True)
    return queries, loaded


def _brute_force(loaded, query) -> list[int]:
    return (np.argsort(-(loaded.vectors @ query), kind="stable")[:7] + 1).tolist()


@pytest.mark.parametrize("quantize, factor", [("binary", 30), ("halfvec", 4), ("none", 1)])
def test_quantized_search_returns_the_brute_force_top_7_through_the_index(retriever, vectors, quantize, factor):
    queries, loaded = vectors
    report = retriever.build_index("vec", quantize=quantize, rerank_factor=factor)
    assert (report.quantize, report.rerank_factor) == (quantize, factor)
    plan = search_plan(retriever, "vec")
    assert ("binary_quantize" in plan) == (quantize == "binary") and ("halfvec" in plan) == (quantize == "halfvec")
    search_plan(retriever, "vec", category="bench-filter-0.25")
    for query in queries:
        hits = retriever.search("vec", vector=query, k=7)
        assert [h.image_id for h in hits] == _brute_force(loaded, query)
        assert hits[0].score == pytest.approx(float(loaded.vectors[hits[0].image_id - 1] @ query), abs=1e-5)
        with retriever.db.begin() as conn:
            sql_ids = conn.execute(sa.text("SELECT image_id FROM manet_search('vec', CAST(:q AS vector), 7) "
                                           "ORDER BY rank"), {"q": str(query.tolist())}).scalars().all()
        assert sql_ids == _brute_force(loaded, query)


def test_binary_filtered_search_returns_k_rows_of_the_category(retriever, vectors):
    queries, loaded = vectors
    retriever.build_index("vec", quantize="binary", rerank_factor=30)
    with retriever.db.begin() as conn:
        members = set(conn.execute(sa.text(
            "SELECT i.id FROM images i JOIN product_categories pc ON pc.product_id = i.product_id")).scalars())
    hits = retriever.search("vec", vector=queries[0], k=7, category="bench-filter-0.25", ef_search=10,
                              path="hnsw")
    assert len(hits) == 7 and {h.image_id for h in hits} <= members
    expected = [i for i in np.argsort(-(loaded.vectors @ queries[0]), kind="stable") + 1 if i in members][:7]
    assert [h.image_id for h in hits] == expected


def test_index_options_survive_a_round_trip(retriever, vectors, monkeypatch, database_url):
    from manet.cli.main import cli

    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["--quiet", "index", "build", "--model", "vec", "--quantize", "binary",
                                      "--rerank-factor", "12", "--m", "8", "--ef-construction", "32", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["quantize"] == "binary"
    expected = {"quantize": "binary", "rerank_factor": 12, "m": 8, "ef_construction": 32}
    # built_at: when it was built (manet index status), not part of the layout.
    assert retriever.model("vec").index_options.keys() - expected.keys() == {"built_at"}
    assert {key: retriever.model("vec").index_options[key] for key in expected} == expected
    listed = {row["name"]: row for row in retriever.models()}
    assert {key: listed["vec"]["index_options"][key] for key in expected} == expected
    # A rebuild without --quantize keeps the recorded layout (and its re-rank factor).
    report = retriever.build_index("vec")
    assert (report.quantize, report.rerank_factor) == ("binary", 12)
    assert retriever.model("vec").index_options["m"] == 16


def test_layout_limits_are_one_line_errors(retriever):
    create_vector_model(retriever.db, "wide", 2048, {})
    with pytest.raises(ManetError, match="at most 2000 dimensions.*use --quantize halfvec or binary"):
        retriever.build_index("wide", quantize="none")
    with pytest.raises(ManetError, match="rerank factor 0 is out of range"):
        retriever.build_index("vec", rerank_factor=0)


@pytest.mark.parametrize("quantize", ["binary", "halfvec"])
def test_manet_search_scans_the_models_index(retriever, vectors, quantize):
    """The SQL function writes its ORDER BY from index_options: the index is scanned."""
    queries, _ = vectors
    retriever.build_index("vec", quantize=quantize, rerank_factor=30)
    index = retriever.model("vec").index_name

    def scans() -> int:
        with retriever.db.begin() as conn:
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            return conn.execute(sa.text("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = :n"),
                                {"n": index}).scalar()

    before = scans()
    with retriever.db.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # tiny tables favour a sort
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        rows = conn.execute(sa.text("SELECT image_id FROM manet_search('vec', CAST(:q AS vector), 7)"),
                            {"q": str(queries[0].tolist())}).all()
        conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
    assert len(rows) == 7
    assert scans() > before


def test_exact_search_sql_ignores_the_quantised_index(retriever, vectors):
    queries, loaded = vectors
    retriever.build_index("vec", quantize="binary", rerank_factor=2)
    sql, params = search_query(retriever.model("vec"), queries[1], k=7, exact=True)
    assert "binary_quantize" not in sql
    with retriever.db.begin() as conn:
        ids = conn.execute(sa.text(sql), params).scalars().all()
    assert ids == _brute_force(loaded, queries[1])

"""Category indexes (manet.search.category_index) on a real PostgreSQL: a category past the exact
threshold gets its own partial HNSW index, the planner walks it (EXPLAIN names it), results equal
numpy brute force, and the triggers of revision 0009 keep its rows right as the catalogue changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from manet.bench.search import DescriptorGenerator, load_gallery
from manet.bench.search_load import category_name
from manet.bench.search_truth import IMAGES_PER_PRODUCT, category_members
from manet.errors import ManetError
from manet.search.query import run_search, search_query
from manet.store import category_indexes
from manet.store.models import create_vector_model

N, DIM = 800, 32
SMALL, LARGE = 0.05, 0.5  # 40 and 400 catalogue images
THRESHOLD = 100


@pytest.fixture(scope="module")
def cat(retriever):
    """Model 'cat': N generated gallery descriptors (4 per product, brand 'brand <product % 50>'),
    a small and a large category, the model's index and the large category's own index."""
    generator = DescriptorGenerator(DIM, 8, seed=5)
    model = create_vector_model(retriever.db, "cat", DIM, {})
    loaded = load_gallery(retriever.db, model, generator.gallery(N), generator.queries(4), n=N,
                          selectivities=(SMALL, LARGE), keep_vectors=True)
    retriever.build_index("cat")
    reports = retriever.build_category_indexes("cat", min_rows=THRESHOLD)
    return retriever, loaded.vectors, generator.queries(10), reports


def _members(selectivity: float, brand: int | None = None) -> np.ndarray:
    products = (np.arange(1, N + 1) - 1) // IMAGES_PER_PRODUCT + 1
    keep = category_members(products, selectivity)
    return keep & (products % 50 == brand) if brand is not None else keep


def _brute_force(vectors: np.ndarray, query: np.ndarray, members: np.ndarray) -> list[int]:
    scores = np.where(members, vectors @ query, -np.inf)
    return (np.argsort(-scores, kind="stable")[: min(7, int(members.sum()))] + 1).tolist()


def _category_id(retriever, selectivity: float) -> int:
    with retriever.db.begin() as conn:
        return conn.execute(sa.text("SELECT id FROM categories WHERE name = :n"),
                            {"n": category_name(selectivity)}).scalar_one()


def test_only_the_large_category_gets_an_index(cat):
    retriever, _, _, reports = cat
    large = _category_id(retriever, LARGE)
    assert [(r.category, r.rows) for r in reports] == [(category_name(LARGE), int(_members(LARGE).sum()))]
    assert reports[0].name == category_indexes.index_name(retriever.model("cat").id, large)
    status = retriever.index_status("cat")[0]
    assert [(c["category"], c["valid"], c["rows"]) for c in status["category_indexes"]] == [
        (category_name(LARGE), True, int(_members(LARGE).sum()))]


@pytest.mark.parametrize("brand", [None, 4])  # brand 4: products 4, 54, ... (even ids are in LARGE)
def test_the_planner_walks_the_category_index_and_equals_brute_force(cat, brand):
    retriever, vectors, queries, _ = cat
    model = retriever.model("cat")
    for query in queries:
        # With a brand too, 8 images match: a threshold under that keeps the planner off the exact path.
        result = run_search(retriever.db, model, query, category=category_name(LARGE), ef_search=1000,
                            brand=None if brand is None else f"brand {brand}",
                            exact_threshold=THRESHOLD if brand is None else 5)
        assert result.plan.path == "category-index", result.plan
        assert [h.image_id for h in result.hits] == _brute_force(vectors, query, _members(LARGE, brand))
        forced = run_search(retriever.db, model, query, category=category_name(LARGE), ef_search=1000,
                            brand=None if brand is None else f"brand {brand}", path="hnsw")
        assert forced.plan.path == "hnsw"
        assert [h.image_id for h in forced.hits] == [h.image_id for h in result.hits]


def test_explain_names_the_category_index(cat):
    retriever, _, queries, _ = cat
    model = retriever.model("cat")
    large = _category_id(retriever, LARGE)
    sql, params = search_query(model, queries[0], category=category_name(LARGE), category_index=large)
    with retriever.db.begin() as conn:
        # 400 rows favour a sort; forbid it to see which index the statement matches.
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        plan = "\n".join(conn.execute(sa.text("EXPLAIN " + sql), params).scalars())
    assert f"Index Scan using {category_indexes.index_name(model.id, large)}" in plan, plan
    text = run_search(retriever.db, model, queries[0], category=category_name(LARGE),
                      exact_threshold=THRESHOLD, explain=True).plan.describe()
    assert "category's own index" in text


def test_membership_changes_reach_the_category_index(cat):
    """A product added to the category is found through its index at once, and one removed is
    not: the triggers rewrite category_ids in the same transaction."""
    retriever, vectors, _, _ = cat
    model = retriever.model("cat")
    large = _category_id(retriever, LARGE)
    outsider = int(np.flatnonzero(~_members(LARGE))[0]) + 1  # an image id not in the category
    with retriever.db.begin() as conn:
        product = conn.execute(sa.text("SELECT product_id FROM images WHERE id = :i"), {"i": outsider}).scalar_one()
        conn.execute(sa.text("INSERT INTO product_categories (product_id, category_id) VALUES (:p, :c)"),
                     {"p": product, "c": large})
    try:
        hits = run_search(retriever.db, model, vectors[outsider - 1], category=category_name(LARGE),
                          exact_threshold=THRESHOLD, ef_search=1000)
        assert hits.plan.path == "category-index" and hits.hits[0].image_id == outsider
    finally:
        with retriever.db.begin() as conn:
            conn.execute(sa.text("DELETE FROM product_categories WHERE product_id = :p AND category_id = :c"),
                         {"p": product, "c": large})
    hits = run_search(retriever.db, model, vectors[outsider - 1], category=category_name(LARGE),
                      exact_threshold=THRESHOLD, ef_search=1000).hits
    assert outsider not in [h.image_id for h in hits]
    with retriever.db.begin() as conn:
        stored = conn.execute(sa.text("SELECT category_ids FROM descriptors WHERE model_id = :m AND image_id = :i"),
                              {"m": model.id, "i": outsider}).scalar_one()
    assert large not in stored


def test_rows_stored_before_the_column_are_filled_by_the_build(cat):
    retriever, vectors, queries, _ = cat
    model = retriever.model("cat")
    with retriever.db.begin() as conn:
        conn.execute(sa.text("ALTER TABLE descriptors DISABLE TRIGGER descriptors_category_ids"))
        conn.execute(sa.text("UPDATE descriptors SET category_ids = NULL WHERE model_id = :m"), {"m": model.id})
        conn.execute(sa.text("ALTER TABLE descriptors ENABLE TRIGGER descriptors_category_ids"))
    reports = retriever.build_category_indexes("cat", categories=[category_name(LARGE)])
    assert [r.rows for r in reports] == [int(_members(LARGE).sum())]
    hits = run_search(retriever.db, model, queries[1], category=category_name(LARGE), exact_threshold=THRESHOLD,
                      ef_search=1000).hits
    assert [h.image_id for h in hits] == _brute_force(vectors, queries[1], _members(LARGE))


def test_bad_requests_say_what_to_do(cat, database_url, monkeypatch):
    from manet.cli.main import cli

    retriever = cat[0]
    with pytest.raises(ManetError, match="no catalogue descriptors of this model are in categories nope"):
        retriever.build_category_indexes("cat", categories=["nope"])
    create_vector_model(retriever.db, "unindexed", DIM, {})
    with pytest.raises(ManetError, match="build it first: manet index build --model unindexed"):
        retriever.build_category_indexes("unindexed")
    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    usage = CliRunner().invoke(cli, ["--quiet", "index", "build", "--model", "cat", "--categories-only"])
    assert usage.exit_code == 2 and "--categories-only needs --by-category" in usage.output
    refused = CliRunner().invoke(cli, ["--quiet", "index", "build", "--model", "cat", "--categories-only",
                                       "--category", category_name(SMALL), "--category-m", "1"])
    assert refused.exit_code == 2 and "'--category-m': 1 is not in the range 2<=x<=100" in refused.output
    refused = CliRunner().invoke(cli, ["--quiet", "index", "build", "--model", "cat", "--categories-only",
                                       "--category", category_name(SMALL), "--category-m", "8",
                                       "--category-ef-construction", "10"])
    assert refused.exit_code == 1 and "invalid HNSW options m=8, ef_construction=10" in refused.output, refused.output
    built = CliRunner().invoke(cli, ["--quiet", "index", "build", "--model", "cat", "--categories-only",
                                     "--category", category_name(SMALL), "--category-m", "8",
                                     "--category-ef-construction", "32", "--json"])
    assert built.exit_code == 0, built.output
    assert [(c["category"], c["m"], c["ef_construction"], c["quantize"], c["rerank_factor"])
            for c in json.loads(built.output)["category_indexes"]] == [(category_name(SMALL), 8, 32, "halfvec", 4)]
    status = CliRunner().invoke(cli, ["--quiet", "index", "status", "--model", "cat"])
    assert status.exit_code == 0 and category_name(SMALL) in status.output, status.output


@pytest.mark.parametrize("rows, ef", [(1, 27), (1000, 27), (5000, 56), (50_000, 157), (500_000, 442),
                                      (10_000_000, 1000)])
def test_category_ef_search_grows_with_the_index(rows, ef):
    from manet.search.planner import category_ef_search

    # 27 * (rows / 1000) ** 0.45, within 27..1000: 5,000 -> 27 * 5 ** 0.45 = 55.7; 50,000 -> 157.0;
    # 500,000 -> 442.5; 10,000,000 -> 1,704
    assert category_ef_search(rows) == ef


def test_the_category_graph_is_denser_than_the_models(cat):
    """m 24 / ef_construction 128 on the category's own expression, beside the model's m 16 / 64;
    halfvec where the model's index is float32."""
    retriever = cat[0]
    model = retriever.model("cat")
    own = category_indexes.index_name(model.id, _category_id(retriever, LARGE))
    with retriever.db.begin() as conn:
        definition = {name: conn.execute(sa.text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": name}).scalar_one()
                      for name in (own, model.index_name)}
    assert f"subvector(embedding, 1, {DIM})" in definition[own] and "m='24', ef_construction='128'" in definition[own]
    assert f"halfvec({DIM})) halfvec_ip_ops" in definition[own]
    assert "subvector" not in definition[model.index_name] and "m='16'" in definition[model.index_name]
    assert f"vector({DIM})) vector_ip_ops" in definition[model.index_name]


def test_a_rebuild_rebuilds_the_category_indexes_too(cat):
    retriever = cat[0]
    names = [c["name"] for c in retriever.index_status("cat")[0]["category_indexes"]]
    report = retriever.rebuild_index("cat", concurrently=True)
    assert report["category_indexes"] == names and names
    status = retriever.index_status("cat")[0]
    assert [(c["name"], c["valid"]) for c in status["category_indexes"]] == [(name, True) for name in names]
    assert status["leftovers"] == []


def test_deleting_the_model_drops_its_category_indexes(cat):
    retriever = cat[0]
    model = retriever.model("cat")
    assert retriever.delete_model("cat")
    with retriever.db.begin() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM pg_class WHERE starts_with(relname, :p)"),
                            {"p": f"{model.index_name}_"}).scalar_one()
    assert left == 0

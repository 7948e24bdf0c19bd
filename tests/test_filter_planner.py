"""The filter planner (manet.search.planner) on a real PostgreSQL: a filter at or below the exact
threshold is ranked exactly through the primary key, one above it through the HNSW index (EXPLAIN
shows which), and both paths, the SQL functions and `manet search --explain` return the numpy
brute-force top-7 over the stored descriptors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from helpers import search_plan
from manet.bench.search import DescriptorGenerator, load_gallery
from manet.bench.search_load import category_name
from manet.bench.search_truth import IMAGES_PER_PRODUCT, category_members
from manet.errors import ManetError
from manet.search.query import run_search
from manet.store.models import create_vector_model

N, DIM = 800, 32
SMALL, LARGE = 0.05, 0.5  # 40 and 400 catalogue images
THRESHOLD = 100


@pytest.fixture(scope="module")
def vec(retriever):
    """Model 'vec': N generated gallery descriptors (image ids 1..N, 4 per product, brand
    'Brand <product % 50>'), two filter categories, indexed; the vectors and some queries."""
    generator = DescriptorGenerator(DIM, 8, seed=11)
    model = create_vector_model(retriever.db, "vec", DIM, {})
    loaded = load_gallery(retriever.db, model, generator.gallery(N), generator.queries(4), n=N,
                          selectivities=(SMALL, LARGE), keep_vectors=True)
    retriever.build_index("vec")
    return retriever, loaded.vectors, generator.queries(12)


def _members(selectivity: float | None, brand: int | None = None) -> np.ndarray:
    products = (np.arange(1, N + 1) - 1) // IMAGES_PER_PRODUCT + 1
    keep = np.ones(N, dtype=bool) if selectivity is None else category_members(products, selectivity)
    return keep & (products % 50 == brand) if brand is not None else keep


def _brute_force(vectors: np.ndarray, query: np.ndarray, members: np.ndarray) -> list[int]:
    scores = np.where(members, vectors @ query, -np.inf)
    order = np.argsort(-scores, kind="stable")[: min(7, int(members.sum()))]
    return (order + 1).tolist()


@pytest.mark.parametrize("selectivity, path, used", [(SMALL, "exact", "descriptors_pkey"),
                                                     (LARGE, "hnsw", "descriptors_hnsw_model_")])
def test_the_planner_picks_by_the_filter_size_and_equals_brute_force(vec, selectivity, path, used):
    retriever, vectors, queries = vec
    model = retriever.model("vec")
    for number, query in enumerate(queries):
        result = run_search(retriever.db, model, query, category=category_name(selectivity), ef_search=1000,
                            exact_threshold=THRESHOLD, explain=number == 0)
        assert result.plan.path == path
        assert [h.image_id for h in result.hits] == _brute_force(vectors, query, _members(selectivity))
        assert result.hits[0].score == pytest.approx(float(vectors[result.hits[0].image_id - 1] @ query), abs=1e-5)
        if number == 0 and path == "exact":
            plan = "\n".join(result.explain)
            assert used in plan and model.index_name not in plan and "Seq Scan on descriptors" not in plan, plan
            assert result.plan.matching == int(_members(SMALL).sum())
    if path == "hnsw":
        # On 800 rows PostgreSQL rightly prefers reading them all; forbidding that shows that the
        # HNSW path's statement is served by the model's index (as on a large catalogue).
        assert used in search_plan(retriever, "vec", category=category_name(selectivity))


def test_the_threshold_is_inclusive_and_forcing_a_path_keeps_the_results(vec):
    retriever, vectors, queries = vec
    model = retriever.model("vec")
    rows = int(_members(SMALL).sum())
    category = category_name(SMALL)
    assert run_search(retriever.db, model, queries[0], category=category, exact_threshold=rows).plan.path == "exact"
    over = run_search(retriever.db, model, queries[0], category=category, exact_threshold=rows - 1).plan
    assert (over.path, over.matching) == ("hnsw", rows)
    # Fewer than the filter's products (4 images each): decided on the products alone.
    by_products = run_search(retriever.db, model, queries[0], category=category, exact_threshold=5).plan
    assert (by_products.path, by_products.matching) == ("hnsw", None) and "products" in by_products.reason
    expected = _brute_force(vectors, queries[0], _members(SMALL))
    for forced in ("exact", "hnsw"):
        hits = retriever.search("vec", vector=queries[0], category=category, path=forced, ef_search=1000)
        assert [h.image_id for h in hits] == expected


def test_category_and_brand_together(vec):
    retriever, vectors, queries = vec
    members = _members(LARGE, brand=4)  # products 4, 54, ...: even ids are in the 50 % category
    assert 7 < members.sum() <= 100
    for query in queries[:4]:
        hits = retriever.search("vec", vector=query, category=category_name(LARGE), brand="BRAND 4")
        assert [h.image_id for h in hits] == _brute_force(vectors, query, members)


def test_a_filter_matching_nothing_returns_no_rows(vec):
    retriever, _, queries = vec
    result = run_search(retriever.db, retriever.model("vec"), queries[0], category="no such category")
    assert result.plan.path == "exact" and result.plan.matching == 0 and result.hits == []


def test_cli_says_why_a_filtered_search_found_nothing(vec, database_url, monkeypatch):
    from manet.cli.main import cli

    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["--quiet", "search", "--model", "vec", "--image-id", "3", "--category",
                                      "no such category", "--brand", "BRAND 4"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == ("Error: no catalogue image of model 'vec' matches category 'no such category' and "
                             "brand 'BRAND 4'; check the spelling (categories: manet categories list) or drop "
                             "the filter\n")


def test_the_exact_path_needs_a_filter(vec):
    retriever, _, queries = vec
    with pytest.raises(ManetError, match="the exact path needs a filter"):
        retriever.search("vec", vector=queries[0], path="exact")
    with pytest.raises(ManetError, match="unknown search path 'fast'"):
        retriever.search("vec", vector=queries[0], category=category_name(SMALL), path="fast")


@pytest.mark.parametrize("threshold", [THRESHOLD, 0])
def test_manet_search_sql_plans_the_same_way(vec, threshold):
    retriever, vectors, queries = vec
    with retriever.db.begin() as conn:
        conn.execute(sa.text("SELECT set_config('manet.filter_exact_threshold', :t, true)"), {"t": str(threshold)})
        conn.execute(sa.text("SET LOCAL hnsw.ef_search = 1000"))
        for selectivity in (SMALL, LARGE):
            for query in queries[:3]:
                ids = conn.execute(sa.text(
                    "SELECT image_id FROM manet_search('vec', CAST(:q AS vector), 7, category_name => :c) "
                    "ORDER BY rank"), {"q": str(query.tolist()), "c": category_name(selectivity)}).scalars().all()
                assert ids == _brute_force(vectors, query, _members(selectivity))
        similar = conn.execute(sa.text(
            "SELECT image_id FROM manet_similar('vec', 5, 7, category_name => :c, brand_name => 'brand 4') "
            "ORDER BY rank"), {"c": category_name(LARGE)}).scalars().all()
    assert similar == _brute_force(vectors, vectors[4], _members(LARGE, brand=4))


def test_search_explain_prints_the_path(vec, database_url, monkeypatch):
    from manet.cli.main import cli

    monkeypatch.setenv("MANET_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli, ["--quiet", "search", "--model", "vec", "--image-id", "3", "--category",
                                      category_name(SMALL), "--explain", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["plan"]["path"] == "exact" and report["plan"]["matching"] == int(_members(SMALL).sum())
    assert any("descriptors_pkey" in line for line in report["explain"])
    assert len(report["hits"]) == 7
    text = CliRunner().invoke(cli, ["--quiet", "search", "--model", "vec", "--image-id", "3", "--explain"])
    assert text.exit_code == 0 and "path: HNSW index scan" in text.output, text.output


def test_catalogue_changes_need_no_upkeep(vec):
    """The planner reads the live catalogue: a product moved out of a category or re-branded is
    filtered accordingly by the next search, on both paths, with nothing to keep in sync."""
    retriever, vectors, queries = vec
    category = category_name(SMALL)
    first = retriever.search("vec", vector=queries[0], category=category)[0]
    with retriever.db.begin() as conn:
        old = conn.execute(sa.text("SELECT c.id AS category_id, p.brand FROM categories c, products p "
                                   "WHERE c.name = :c AND p.id = :p"), {"c": category, "p": first.product_id}).one()
        conn.execute(sa.text("DELETE FROM product_categories WHERE product_id = :p AND category_id = :c"),
                     {"p": first.product_id, "c": old.category_id})
        conn.execute(sa.text("UPDATE products SET brand = 'Renamed' WHERE id = :p"), {"p": first.product_id})
    try:
        for forced in ("auto", "hnsw"):
            hits = retriever.search("vec", vector=queries[0], category=category, path=forced, ef_search=1000)
            assert first.product_id not in {h.product_id for h in hits} and len(hits) == 7
            renamed = retriever.search("vec", vector=queries[0], brand="renamed", path=forced, ef_search=1000)
            assert {h.product_id for h in renamed} == {first.product_id} and len(renamed) == IMAGES_PER_PRODUCT
    finally:
        with retriever.db.begin() as conn:
            conn.execute(sa.text("INSERT INTO product_categories (product_id, category_id) VALUES (:p, :c)"),
                         {"p": first.product_id, "c": old.category_id})
            conn.execute(sa.text("UPDATE products SET brand = :b WHERE id = :p"),
                         {"b": old.brand, "p": first.product_id})

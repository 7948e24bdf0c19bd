"""manet_search's category indexes (revision 0010) on a real PostgreSQL: on the HNSW path a
category with a valid ``descriptors_hnsw_model_<M>_category_<C>`` index is searched through that
index, other categories (and an invalid index) through the model's, with the numpy brute-force
top-7 either way, and a product added to or removed from the category is found or not at once.

Which index served the function's statement (hidden inside plpgsql, and the embedded server has
no auto_explain) is read from PostgreSQL's own per-index scan counters of the transaction
(``pg_stat_get_xact_numscans``), taken before and after the call."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from manet.search.category_index import build_category_indexes
from manet.store import category_indexes, descriptors
from manet.store.models import create_vector_model

N, DIM, PER_PRODUCT = 400, 16, 4  # images 1..400, products 1..100
PRODUCTS = np.arange(1, N // PER_PRODUCT + 1)
#: Category name -> its products: 'big' gets its own index, 'small' never does (they overlap,
#: so descriptors carry two category ids).
CATEGORIES = {"big": PRODUCTS[PRODUCTS % 2 == 0], "small": PRODUCTS[PRODUCTS % 5 == 0]}
LAYOUTS = ("none", "halfvec", "binary")


def _product(image_id: int) -> int:
    return (image_id - 1) // PER_PRODUCT + 1


@pytest.fixture(scope="module")
def catalogue(retriever):
    """N catalogue images in 100 products and two categories, a model per index layout over the
    same unit vectors (HNSW-indexed), and a category index on 'big' for each model."""
    db = retriever.db
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO products (id, sku, title, brand) SELECT g, 'C' || g, 'Product ' || g, "
                             "'Brand ' || (g % 7) FROM generate_series(1, :p) g"), {"p": len(PRODUCTS)})
        conn.execute(sa.text("INSERT INTO images (id, product_id, uri, domain) SELECT g, (g - 1) / :per + 1, "
                             "'test://' || g, 'catalog' FROM generate_series(1, :n) g"),
                     {"n": N, "per": PER_PRODUCT})
        category_ids = {}
        for name, members in CATEGORIES.items():
            category_ids[name] = conn.execute(sa.text("INSERT INTO categories (name) VALUES (:n) RETURNING id"),
                                              {"n": name}).scalar_one()
            conn.execute(sa.text("INSERT INTO product_categories (product_id, category_id) "
                                 "SELECT unnest(CAST(:p AS bigint[])), :c"),
                         {"p": members.tolist(), "c": category_ids[name]})
    models = {}
    for layout in LAYOUTS:
        model = create_vector_model(db, f"cat-{layout}", DIM, {})
        with db.raw() as conn, conn.cursor() as cur:
            descriptors.copy_rows(cur, model.id, list(range(1, N + 1)), [True] * N, vectors)
        retriever.build_index(model.name, quantize=layout)
        models[layout] = retriever.model(model.name)
        build_category_indexes(db, models[layout], categories=["big"])
    with db.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    return db, models, category_ids, vectors, rng.standard_normal((6, DIM)).astype(np.float32)


def category_index_name(model, category_id: int) -> str:
    return category_indexes.index_name(model.id, category_id)


def hnsw_path(conn) -> None:
    """This transaction: every filter takes the HNSW path, searched exhaustively (ef_search past
    the rows), and no sequential scan or sort stands in for an index on these few rows."""
    conn.execute(sa.text("SELECT set_config('manet.filter_exact_threshold', '0', true)"))
    conn.execute(sa.text("SET LOCAL hnsw.ef_search = 1000"))
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    conn.execute(sa.text("SET LOCAL enable_sort = off"))


def search(conn, model_name: str, query: np.ndarray, category: str,
           *indexes: str) -> tuple[list[int], dict[str, int]]:
    """manet_search's top-7 image ids in ``category``, and how many scans of each of ``indexes``
    the call made (this backend's counters for the open transaction, before and after)."""

    def scans() -> dict[str, int]:
        return {name: conn.execute(sa.text("SELECT coalesce(pg_stat_get_xact_numscans(to_regclass(:n)), 0)"),
                                   {"n": name}).scalar_one() for name in indexes}

    before = scans()
    ids = conn.execute(sa.text("SELECT image_id FROM manet_search(:m, CAST(:q AS vector), 7, category_name => :c) "
                               "ORDER BY rank"),
                       {"m": model_name, "q": str(query.tolist()), "c": category}).scalars().all()
    after = scans()
    return ids, {name: after[name] - before[name] for name in indexes}


def brute_force(vectors: np.ndarray, query: np.ndarray, category: str) -> list[int]:
    members = np.isin([_product(i) for i in range(1, N + 1)], CATEGORIES[category])
    scores = np.where(members, vectors @ query, -np.inf)
    return (np.argsort(-scores, kind="stable")[:7] + 1).tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_category_with_its_own_index_is_searched_through_it(catalogue, layout):
    db, models, category_ids, vectors, queries = catalogue
    model = models[layout]
    own = category_index_name(model, category_ids["big"])
    with db.begin() as conn:
        hnsw_path(conn)
        for query in queries:
            ids, scans = search(conn, model.name, query, "big", own, model.index_name)
            assert scans[own] >= 1 and scans[model.index_name] == 0, scans
            if layout == "binary":  # Hamming candidates: the category's rows, not always the exact top 7
                assert len(ids) == 7 and all(_product(i) in CATEGORIES["big"] for i in ids)
            else:
                assert ids == brute_force(vectors, query, "big")
            # A category without an index of its own: the model's index, as before revision 0010.
            ids, scans = search(conn, model.name, query, "small", own, model.index_name)
            assert scans[model.index_name] >= 1 and scans[own] == 0, scans
            if layout != "binary":
                assert ids == brute_force(vectors, query, "small")


def test_the_plan_uses_the_category_index_for_the_same_clause(catalogue):
    """The statement's shape, by hand, as docs/sql.md writes it: EXPLAIN names the category index
    (a denser graph than the model's, halfvec for this float32 model) with the clause and the
    category's expression; the model's expression is planned on the model's index, with the clause
    or without it."""
    db, models, category_ids, _, queries = catalogue
    model, big = models["none"], category_ids["big"]
    statement = ("EXPLAIN (COSTS OFF) SELECT d.image_id FROM descriptors d "
                 "WHERE d.model_id = {m} AND d.gallery{extra} "
                 "ORDER BY {stored}::{vtype}({dim}) <#> CAST(:q AS {vtype}({dim})) LIMIT 7")
    clause, category_expression = f" AND d.category_ids @> ARRAY[{big}]", f"subvector(d.embedding, 1, {DIM})"
    with db.begin() as conn:
        hnsw_path(conn)
        for extra, stored, vtype, used in ((clause, category_expression, "halfvec", category_index_name(model, big)),
                                           (clause, "d.embedding", "vector", model.index_name),
                                           ("", "d.embedding", "vector", model.index_name)):
            sql = statement.format(m=model.id, dim=DIM, extra=extra, stored=stored, vtype=vtype)
            plan = "\n".join(conn.execute(sa.text(sql), {"q": str(queries[0].tolist())}).scalars())
            assert f"Index Scan using {used} on descriptors" in plan, plan


def test_joining_or_leaving_the_category_is_seen_by_the_next_search(catalogue):
    db, models, category_ids, vectors, _ = catalogue
    model, big = models["none"], category_ids["big"]
    own = category_index_name(model, big)
    joining, leaving = 3, 2  # products: 3 is not in 'big', 2 is
    image_of = {joining: 9, leaving: 5}  # an image of each

    def top(product: int) -> tuple[list[int], dict[str, int]]:
        with db.begin() as conn:
            hnsw_path(conn)
            return search(conn, model.name, vectors[image_of[product] - 1], "big", own, model.index_name)

    def move(into: int, out_of: int) -> None:
        with db.begin() as conn:
            conn.execute(sa.text("INSERT INTO product_categories (product_id, category_id) VALUES (:p, :c)"),
                         {"p": into, "c": big})
            conn.execute(sa.text("DELETE FROM product_categories WHERE product_id = :p AND category_id = :c"),
                         {"p": out_of, "c": big})

    assert image_of[joining] not in top(joining)[0] and top(leaving)[0][0] == image_of[leaving]
    try:
        move(joining, leaving)
        ids, scans = top(joining)
        assert ids[0] == image_of[joining] and scans[own] >= 1 and scans[model.index_name] == 0, (ids, scans)
        ids, scans = top(leaving)
        assert image_of[leaving] not in ids and len(ids) == 7 and scans[own] >= 1, (ids, scans)
    finally:
        move(leaving, joining)
    assert image_of[joining] not in top(joining)[0] and top(leaving)[0][0] == image_of[leaving]


@pytest.mark.parametrize("index", ["invalid", "missing"])
def test_without_a_valid_index_the_old_path_returns_the_same(catalogue, index):
    """An invalid index (a failed CREATE INDEX CONCURRENTLY) or none: the statement has no
    category_ids clause and scans the model's index. Shown by a catalogue row whose category_ids
    is wrong (set by hand, past the triggers): the category's graph does not hold it, the old
    path finds it through the EXISTS filter."""
    db, models, category_ids, vectors, queries = catalogue
    model = models["none"]
    own = category_index_name(model, category_ids["big"])
    stale = 6  # an image of product 2, in 'big'
    with db.engine.connect() as conn, conn.begin() as transaction:
        hnsw_path(conn)
        expected = [search(conn, model.name, query, "big", own)[0] for query in queries]
        conn.execute(sa.text("UPDATE descriptors SET category_ids = '{}' WHERE model_id = :m AND image_id = :i"),
                     {"m": model.id, "i": stale})
        assert stale not in search(conn, model.name, vectors[stale - 1], "big")[0]  # the category's graph
        if index == "invalid":
            conn.execute(sa.text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(:n)"),
                         {"n": own})
        else:
            conn.execute(sa.text(f"DROP INDEX {own}"))
        ids, scans = search(conn, model.name, vectors[stale - 1], "big", own, model.index_name)
        assert ids[0] == stale and scans[model.index_name] >= 1 and scans[own] == 0, (ids, scans)
        for query, before in zip(queries, expected, strict=True):
            ids, scans = search(conn, model.name, query, "big", own, model.index_name)
            assert ids == before == brute_force(vectors, query, "big") and scans[model.index_name] >= 1
        transaction.rollback()
    with db.begin() as conn:  # rolled back: the index is there and valid again
        assert conn.execute(sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
                            {"n": own}).scalar_one()


def test_an_alias_finds_its_models_category_index(catalogue):
    """The lookup uses the model an alias points at (manet_model_id), not another model's index."""
    db, models, category_ids, vectors, queries = catalogue
    model, other = models["none"], models["halfvec"]
    own = category_index_name(model, category_ids["big"])
    with db.engine.connect() as conn, conn.begin() as transaction:
        conn.execute(sa.text("INSERT INTO model_aliases (alias, model_id) VALUES ('shop', :m)"), {"m": model.id})
        hnsw_path(conn)
        theirs = category_index_name(other, category_ids["big"])
        ids, scans = search(conn, "shop", queries[0], "big", own, theirs)
        assert ids == brute_force(vectors, queries[0], "big") and scans[own] >= 1 and scans[theirs] == 0, scans
        transaction.rollback()


def test_the_cookbook_query_plans_on_the_category_index(catalogue):
    """docs/sql.md's EXPLAIN of the hand-written category query, with a category index there
    (tests/test_sql_cookbook.py runs it on a catalogue without one)."""
    db, models, category_ids, _, _ = catalogue
    model = models["none"]  # a float32 model: its category index is halfvec all the same
    page = (Path(__file__).resolve().parents[1] / "docs" / "sql.md").read_text()
    [block] = [b for b in re.findall(r"^```sql\n(.*?)^```", page, re.M | re.S)
               if "EXPLAIN" in b and "category_ids @> ARRAY[:category_id]" in b]
    explain = block[block.index("EXPLAIN"):block.index(";", block.index("EXPLAIN"))]
    variables = {"model_id": model.id, "category_id": category_ids["big"], "vtype": "vector", "dim": DIM,
                 "image_id": 1}
    sql = re.sub(r"(?<!:):(\w+)", lambda m: str(variables[m.group(1)]), explain)
    with db.begin() as conn:
        hnsw_path(conn)
        plan = "\n".join(conn.execute(sa.text(sql)).scalars())
    assert f"Index Scan using {category_index_name(model, category_ids['big'])} on descriptors" in plan, plan


def test_a_category_alone_is_walked_without_counting_but_with_a_brand_it_is_counted(catalogue):
    """Under the default threshold (5,000) 'big' (200 images) would be ranked exactly; with its own
    index it is walked at once, as `manet search` does. With a brand too, the few matching images
    are counted and ranked exactly (the primary key), not walked."""
    db, models, category_ids, vectors, queries = catalogue
    model = models["none"]
    own = category_index_name(model, category_ids["big"])
    with db.begin() as conn:
        conn.execute(sa.text("SET LOCAL hnsw.ef_search = 1000"))
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        ids, scans = search(conn, model.name, queries[0], "big", own, "descriptors_pkey")
        assert scans[own] >= 1, scans
        assert ids == brute_force(vectors, queries[0], "big")
        before = conn.execute(sa.text("SELECT coalesce(pg_stat_get_xact_numscans(to_regclass(:n)), 0)"),
                              {"n": own}).scalar_one()
        branded = conn.execute(sa.text(
            "SELECT image_id FROM manet_search(:m, CAST(:q AS vector), 7, category_name => 'big', "
            "brand_name => 'Brand 2') ORDER BY rank"), {"m": model.name, "q": str(queries[0].tolist())}).scalars().all()
        after = conn.execute(sa.text("SELECT coalesce(pg_stat_get_xact_numscans(to_regclass(:n)), 0)"),
                             {"n": own}).scalar_one()
    assert after == before
    members = [i for i in range(1, N + 1) if _product(i) in CATEGORIES["big"] and _product(i) % 7 == 2]
    expected = sorted(members, key=lambda i: (-float(vectors[i - 1] @ queries[0]), i))[:7]
    assert branded == expected

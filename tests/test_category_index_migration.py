"""Revision 0011 on a real PostgreSQL: a category index built before it (on the model's
expression, which searches no longer use) is dropped by the upgrade, the search falls back to the
model's index with the same results, and a rebuild on the new expression is walked again."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from manet.bench.search import DescriptorGenerator, load_gallery
from manet.bench.search_load import category_name
from manet.bench.search_truth import IMAGES_PER_PRODUCT, category_members
from manet.store import category_indexes
from manet.store.models import create_vector_model

N, DIM, SELECTIVITY = 400, 16, 0.5


def _definition(conn, name: str) -> str | None:
    return conn.execute(sa.text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": name}).scalar_one()


def _search(conn, query: np.ndarray) -> list[int]:
    # Exhaustive on these few rows, and no sequential scan or sort stands in for an index.
    for setting in ("hnsw.ef_search = 1000", "enable_seqscan = off", "enable_sort = off"):
        conn.execute(sa.text(f"SET LOCAL {setting}"))
    return conn.execute(sa.text("SELECT image_id FROM manet_search('old', CAST(:q AS vector), 7, category_name => :c) "
                                "ORDER BY rank"),
                        {"q": str(query.tolist()), "c": category_name(SELECTIVITY)}).scalars().all()


def test_the_upgrade_drops_category_indexes_on_the_old_expression(retriever):
    db = retriever.db
    generator = DescriptorGenerator(DIM, 8, seed=3)
    model = create_vector_model(db, "old", DIM, {})
    loaded = load_gallery(db, model, generator.gallery(N), generator.queries(1), n=N, selectivities=(SELECTIVITY,),
                          keep_vectors=True)
    retriever.build_index("old")
    retriever.build_category_indexes("old", min_rows=100)
    model = retriever.model("old")
    with db.begin() as conn:
        category = conn.execute(sa.text("SELECT id FROM categories WHERE name = :n"),
                                {"n": category_name(SELECTIVITY)}).scalar_one()
    own = category_indexes.index_name(model.id, category)
    members = category_members((np.arange(1, N + 1) - 1) // IMAGES_PER_PRODUCT + 1, SELECTIVITY)
    queries = generator.queries(5)
    expected = [(np.argsort(-np.where(members, loaded.vectors @ q, -np.inf), kind="stable")[:7] + 1).tolist()
                for q in queries]

    db.downgrade("0010")
    with db.begin() as conn:
        assert _definition(conn, own) is None  # the downgrade drops the new kind
        # The index revision 0010 built: the model's expression and graph options.
        conn.execute(sa.text(f"CREATE INDEX {own} ON descriptors USING hnsw ((embedding::vector({DIM})) vector_ip_ops) "
                             f"WHERE {category_indexes.predicate(model.id, category)}"))
    db.upgrade()
    with db.begin() as conn:
        assert _definition(conn, own) is None and _definition(conn, model.index_name) is not None
        assert [_search(conn, q) for q in queries] == expected  # its 200 images ranked exactly
    retriever.build_category_indexes("old", min_rows=100)
    with db.begin() as conn:
        assert "subvector(embedding, 1, 16)" in _definition(conn, own)
        before = conn.execute(sa.text("SELECT pg_stat_get_xact_numscans(to_regclass(:n))"), {"n": own}).scalar_one()
        assert [_search(conn, q) for q in queries] == expected
        after = conn.execute(sa.text("SELECT pg_stat_get_xact_numscans(to_regclass(:n))"), {"n": own}).scalar_one()
    assert after > before

"""Revisions 0011 and 0012 on a real PostgreSQL: a category index built before them (on an
expression or a type that searches no longer use) is dropped by the upgrade, the search falls back
to the model's index with the same results, and a rebuild in the new layout is walked again."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from manet.bench.search import DescriptorGenerator, load_gallery
from manet.bench.search_load import category_name
from manet.bench.search_truth import IMAGES_PER_PRODUCT, category_members
from manet.store import category_indexes
from manet.store.models import create_vector_model

N, DIM, SELECTIVITY = 400, 16, 0.5


def _definition(conn, name: str) -> str | None:
    return conn.execute(sa.text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": name}).scalar_one()


def _scans(conn, name: str) -> int:
    return conn.execute(sa.text("SELECT coalesce(pg_stat_get_xact_numscans(to_regclass(:n)), 0)"),
                        {"n": name}).scalar_one()


def _search(conn, model: str, query: np.ndarray) -> list[int]:
    # Exhaustive on these few rows, and no sequential scan or sort stands in for an index.
    for setting in ("hnsw.ef_search = 1000", "enable_seqscan = off", "enable_sort = off"):
        conn.execute(sa.text(f"SET LOCAL {setting}"))
    return conn.execute(sa.text("SELECT image_id FROM manet_search(:m, CAST(:q AS vector), 7, category_name => :c) "
                                "ORDER BY rank"),
                        {"m": model, "q": str(query.tolist()), "c": category_name(SELECTIVITY)}).scalars().all()


@pytest.fixture(scope="module")
def gallery(retriever):
    """N catalogue images of model 'base', half of them in the filter category; five queries and
    their exact top-7 within it."""
    generator = DescriptorGenerator(DIM, 8, seed=3)
    model = create_vector_model(retriever.db, "base", DIM, {})
    loaded = load_gallery(retriever.db, model, generator.gallery(N), generator.queries(1), n=N,
                          selectivities=(SELECTIVITY,), keep_vectors=True)
    with retriever.db.begin() as conn:
        category = conn.execute(sa.text("SELECT id FROM categories WHERE name = :n"),
                                {"n": category_name(SELECTIVITY)}).scalar_one()
    members = category_members((np.arange(1, N + 1) - 1) // IMAGES_PER_PRODUCT + 1, SELECTIVITY)
    queries = generator.queries(5)
    expected = [(np.argsort(-np.where(members, loaded.vectors @ q, -np.inf), kind="stable")[:7] + 1).tolist()
                for q in queries]
    return category, queries, expected


def _model_like_base(retriever, name: str, quantize: str):
    """A model with base's descriptors and an index of layout ``quantize``."""
    model = create_vector_model(retriever.db, name, DIM, {})
    with retriever.db.begin() as conn:
        conn.execute(sa.text("INSERT INTO descriptors (model_id, image_id, gallery, embedding, category_ids) "
                             "SELECT :m, image_id, gallery, embedding, category_ids FROM descriptors d "
                             "JOIN models b ON b.id = d.model_id AND b.name = 'base'"), {"m": model.id})
    retriever.build_index(name, quantize=quantize)
    return retriever.model(name)


def _rebuilt_is_walked(retriever, model, own: str, queries, expected) -> str:
    retriever.build_category_indexes(model.name, min_rows=100)
    with retriever.db.begin() as conn:
        definition = _definition(conn, own)
        before = _scans(conn, own)
        assert [_search(conn, model.name, q) for q in queries] == expected
        assert _scans(conn, own) > before
    return definition


def test_the_upgrade_drops_category_indexes_on_the_old_expression(retriever, gallery):
    category, queries, expected = gallery
    db = retriever.db
    model = _model_like_base(retriever, "old", "none")
    retriever.build_category_indexes("old", min_rows=100)
    own = category_indexes.index_name(model.id, category)

    db.downgrade("0010")
    with db.begin() as conn:
        assert _definition(conn, own) is None  # the downgrade drops the new kind
        # The index revision 0010 built: the model's expression and graph options.
        conn.execute(sa.text(f"CREATE INDEX {own} ON descriptors USING hnsw ((embedding::vector({DIM})) vector_ip_ops) "
                             f"WHERE {category_indexes.predicate(model.id, category)}"))
    db.upgrade()
    with db.begin() as conn:
        assert _definition(conn, own) is None and _definition(conn, model.index_name) is not None
        assert [_search(conn, "old", q) for q in queries] == expected  # its 200 images ranked exactly
    assert "subvector(embedding, 1, 16)" in _rebuilt_is_walked(retriever, model, own, queries, expected)


def test_the_upgrade_to_halfvec_category_indexes_drops_float32_ones_only(retriever, gallery):
    """Revision 0012: a float32 model's category index on 0011's float32 expression is dropped (its
    200 images are then ranked exactly), a halfvec model's is kept; the
    rebuild is halfvec and is walked, with the float32 re-rank giving the exact top-7."""
    category, queries, expected = gallery
    db = retriever.db
    f32, half = _model_like_base(retriever, "f32", "none"), _model_like_base(retriever, "half", "halfvec")
    retriever.build_category_indexes("half", min_rows=100)
    own, kept = (category_indexes.index_name(m.id, category) for m in (f32, half))

    db.downgrade("0011")
    with db.begin() as conn:
        # The index revision 0011 built for a float32 model.
        conn.execute(sa.text(f"CREATE INDEX {own} ON descriptors USING hnsw "
                             f"((subvector(embedding, 1, {DIM})::vector({DIM})) vector_ip_ops) "
                             f"WITH (m = 24, ef_construction = 128) WHERE {category_indexes.predicate(f32.id, category)}"))
        kept_definition = _definition(conn, kept)
        before = _scans(conn, own)
        assert [_search(conn, "f32", q) for q in queries] == expected and _scans(conn, own) > before
    db.upgrade()
    with db.begin() as conn:
        assert _definition(conn, own) is None and _definition(conn, kept) == kept_definition
        assert [_search(conn, "f32", q) for q in queries] == expected  # ranked exactly, as above
        assert [_search(conn, "half", q) for q in queries] == expected
    assert f"halfvec({DIM})) halfvec_ip_ops" in _rebuilt_is_walked(retriever, f32, own, queries, expected)

    db.downgrade("0011")  # takes the halfvec category index of the float32 model, not the other
    with db.begin() as conn:
        assert _definition(conn, own) is None and _definition(conn, kept) == kept_definition
    db.upgrade()

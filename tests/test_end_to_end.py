"""The main job on a real database: ingest -> extract -> index -> search -> eval."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from helpers import TINY_MODEL, search_plan
from manet.store.database import as_array


@pytest.fixture(scope="module")
def indexed(retriever, small_catalogue):
    report = retriever.ingest("manifest", small_catalogue)
    assert report.images_added == 30 and report.products_added == 10 and report.failed == 0
    for pooling in ("mac", "srmac"):
        retriever.create_model(f"tiny-{pooling}", pooling=pooling, **TINY_MODEL)
        extracted = retriever.extract(f"tiny-{pooling}", batch_size=8)
        assert extracted.extracted == 30 and extracted.failed == 0
        retriever.build_index(f"tiny-{pooling}")
    # 2048 dims: stored as vector, indexed as halfvec, re-ranked in full precision.
    retriever.create_model("tiny-r50", backbone="resnet50", weights="none", image_size=64, pooling="gem")
    retriever.extract("tiny-r50", batch_size=8)
    retriever.build_index("tiny-r50")
    return retriever


def _stored(retriever, model):
    with retriever.db.begin() as conn:
        rows = conn.execute(
            sa.text("SELECT image_id, gallery, embedding FROM descriptors d JOIN models m ON m.id = d.model_id "
                    "WHERE m.name = :n ORDER BY image_id"), {"n": model}).all()
    ids = np.array([r.image_id for r in rows])
    gallery = np.array([r.gallery for r in rows])
    vectors = np.stack([as_array(r.embedding) for r in rows])
    return ids, gallery, vectors


@pytest.mark.parametrize("model", ["tiny-mac", "tiny-srmac", "tiny-r50"])
def test_search_matches_numpy_brute_force(indexed, model):
    ids, gallery, vectors = _stored(indexed, model)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    for query in np.flatnonzero(~gallery)[:5]:
        scores = vectors[gallery] @ vectors[query]
        expected = ids[gallery][np.argsort(-scores, kind="stable")[:7]].tolist()
        hits = indexed.search(model, image_id=int(ids[query]), k=7)
        assert [h.image_id for h in hits] == expected
        with indexed.db.begin() as conn:
            sql_ids = conn.execute(sa.text("SELECT image_id FROM manet_similar(:m, :i, 7) ORDER BY rank"),
                                   {"m": model, "i": int(ids[query])}).scalars().all()
        assert sql_ids == expected


def test_search_with_file_equals_search_with_stored_image(indexed):
    with indexed.db.begin() as conn:
        row = conn.execute(sa.text("SELECT id, uri FROM images WHERE domain = 'query' ORDER BY id LIMIT 1")).one()
    by_file = indexed.search("tiny-srmac", image=row.uri, k=7)
    by_id = indexed.search("tiny-srmac", image_id=row.id, k=7)
    assert [h.image_id for h in by_file] == [h.image_id for h in by_id]
    assert by_file[0].score == pytest.approx(by_id[0].score, abs=1e-4)


def test_category_filter_returns_k_rows(indexed):
    with indexed.db.begin() as conn:
        category, count = conn.execute(sa.text(
            "SELECT c.name, count(*) FROM categories c JOIN product_categories pc ON pc.category_id = c.id "
            "JOIN images i ON i.product_id = pc.product_id AND i.domain = 'catalog' "
            "GROUP BY c.name ORDER BY count(*) DESC LIMIT 1")).one()
        query_id = conn.execute(sa.text("SELECT id FROM images WHERE domain = 'query' LIMIT 1")).scalar()
    k = min(count, 7)
    hits = indexed.search("tiny-mac", image_id=query_id, k=k, category=category, ef_search=1)
    assert len(hits) == k
    with indexed.db.begin() as conn:
        skus = set(conn.execute(sa.text(
            "SELECT p.sku FROM products p JOIN product_categories pc ON pc.product_id = p.id "
            "JOIN categories c ON c.id = pc.category_id WHERE c.name = :c"), {"c": category}).scalars())
    assert {h.sku for h in hits} <= skus


def test_eval_reports_and_stores(indexed):
    result = indexed.evaluate("tiny-srmac", split="val")
    data = result.as_dict()
    for key in ("map@7", "map", "recall@1", "recall@5", "recall@7", "queries"):
        assert key in data
    assert data["queries"] == 20
    assert 0.0 <= data["map@7"] <= 1.0 and data["recall@1"] <= data["recall@5"] <= data["recall@7"]
    with indexed.db.begin() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM eval_results WHERE run_id = :r"),
                              {"r": result.run_id}).scalar()
    assert stored == 20


def test_extract_is_resumable(indexed):
    report = indexed.extract("tiny-mac")
    assert report.extracted == 0


@pytest.mark.parametrize("model, filters", [("tiny-mac", {}), ("tiny-r50", {}), ("tiny-mac", {"brand": "x"})])
def test_search_sql_uses_the_models_hnsw_index(indexed, model, filters):
    search_plan(indexed, model, **filters)

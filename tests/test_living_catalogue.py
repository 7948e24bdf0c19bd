"""Issue 15's combined case on a real database: 8 threads search through an alias (Retriever.search,
SELECT manet_similar, SELECT manet_search) while products are deleted and the alias is re-pointed
between two models extracted beforehand. No search fails, none mixes the two models, and none that
started after a delete committed returns the deleted product."""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from helpers import indexed_catalogue

K = 7
MODELS = ("tiny", "tiny-mac")
DELETED = [f"syn{n:05d}" for n in (2, 5, 8, 11, 14, 17)]


@pytest.fixture(scope="module")
def living(retriever, tmp_path_factory):
    """20 products (a catalogue image and a photo each), two models extracted and indexed."""
    indexed_catalogue(retriever, tmp_path_factory.mktemp("living"), products=20, seed=7,
                      models=dict(zip(MODELS, ("srmac", "mac"))))
    return retriever


def _stored(retriever) -> dict:
    """Each model's descriptors by image id, the gallery's product ids, the doomed products' ids."""
    with retriever.db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT m.name, d.image_id, d.gallery, d.embedding::text AS e, i.product_id, p.sku "
            "FROM descriptors d JOIN models m ON m.id = d.model_id JOIN images i ON i.id = d.image_id "
            "JOIN products p ON p.id = i.product_id")).all()
    vectors = {name: {} for name in MODELS}
    gallery, product_of, sku_of = set(), {}, {}
    for row in rows:
        vectors[row.name][row.image_id] = np.array(row.e.strip("[]").split(","), dtype=np.float64)
        product_of[row.image_id], sku_of[row.product_id] = row.product_id, row.sku
        if row.gallery:
            gallery.add(row.image_id)
    queries = sorted(i for i in product_of if i not in gallery and sku_of[product_of[i]] not in DELETED)
    return {"vectors": vectors, "gallery": gallery, "product_of": product_of, "queries": queries[:6],
            "doomed": {sku: pid for pid, sku in sku_of.items() if sku in DELETED}}


def _search(retriever, database_url: str, kind: str, query: int, probe: np.ndarray) -> list[tuple[int, float]]:
    if kind == "api":
        return [(hit.image_id, hit.score) for hit in retriever.search("production", image_id=query, k=K)]
    sql, args = (("SELECT image_id, score FROM manet_similar('production', %s, %s)", (query, K)) if kind == "similar"
                 else ("SELECT image_id, score FROM manet_search('production', %s::vector, %s)",
                       ("[" + ",".join(map(str, probe)) + "]", K)))
    with psycopg.connect(database_url) as conn:
        return [(int(i), float(s)) for i, s in conn.execute(sql, args).fetchall()]


def _searcher(retriever, database_url, kind, stored, probe, stop, log, errors) -> None:
    try:
        while not stop.is_set():
            for query in stored["queries"]:
                started = time.monotonic()
                log.append((kind, query, started, _search(retriever, database_url, kind, query, probe)))
    except Exception as exc:  # counted: the test requires none
        errors.append(repr(exc))


def _owner(stored, kind: str, query: int, probe: np.ndarray, hits: list[tuple[int, float]]) -> str | None:
    """The model whose descriptors give every score of ``hits`` (None: no single model does)."""
    for name in MODELS:
        vectors = stored["vectors"][name]
        q = probe if kind == "search" else vectors[query]
        if all(i in vectors and abs(float(vectors[i] @ q) - s) < 1e-4 for i, s in hits):
            return name
    return None


def test_searches_while_products_are_deleted_and_the_alias_is_repointed(living, database_url):
    stored = _stored(living)
    probe = stored["vectors"]["tiny"][stored["queries"][0]]  # one fixed vector for manet_search
    living.alias_model("production", MODELS[0])
    kinds = ["api", "api", "api", "similar", "similar", "search", "search", "search"]
    stop, errors, logs = threading.Event(), [], [[] for _ in kinds]
    threads = [threading.Thread(target=_searcher, args=(living, database_url, kind, stored, probe, stop, log, errors))
               for kind, log in zip(kinds, logs)]
    committed: dict[int, float] = {}
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        for flip in range(2 * len(DELETED)):  # re-point the alias, and delete a product every other flip
            living.alias_model("production", MODELS[(flip + 1) % 2])
            if flip % 2 == 0:
                sku = DELETED[flip // 2]
                living.delete_products([sku])
                committed[stored["doomed"][sku]] = time.monotonic()  # returned: its transaction committed
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        living.unalias_model("production")
    assert errors == [], errors[:3]
    entries = [entry for log in logs for entry in log]
    owners = {name: 0 for name in MODELS}
    checked = 0
    for kind, query, started, hits in entries:
        assert len(hits) == K, (kind, query, hits)
        owner = _owner(stored, kind, query, probe, hits)
        assert owner is not None, f"{kind} query {query}: scores from neither model alone: {hits}"
        owners[owner] += 1
        gone = {pid for pid, at in committed.items() if at < started}
        checked += bool(gone)
        assert not gone & {stored["product_of"][i] for i, _ in hits}, (kind, query, hits)
    assert min(owners.values()) > 0 and checked > 50, (owners, checked)
    assert set(committed) == set(stored["doomed"].values())

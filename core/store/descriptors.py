"""Every SQL statement over the ``descriptors`` table (model_id, image_id, gallery, embedding).

Functions take an open connection rather than a :class:`manet.store.database.Database`, so callers keep
their transactions (and their choice of SQLAlchemy or raw psycopg) as they were. Two
connection kinds appear: ``sa.Connection`` (``db.begin()``) and a psycopg connection with
pgvector types registered (``db.raw()``: binary COPY and binary vectors).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa

from manet.store import filters
from manet.store.database import as_array

# -- writing ----------------------------------------------------------------------------------

#: One row per statement (psycopg ``%s`` style): the benchmarks' baselines (pgvector-python's
#: example loop, executemany); manet itself writes with :func:`copy_rows`.
INSERT_ROW = "INSERT INTO descriptors (model_id, image_id, gallery, embedding) VALUES (%s, %s, %s, %s)"


def copy_rows(cur: Any, model_id: int, ids: Sequence[int], gallery: Sequence[bool],
              vectors: np.ndarray) -> None:
    """Binary COPY of descriptor rows on a psycopg cursor (pgvector types registered); the
    caller commits, so a batch and its bookkeeping share one transaction."""
    if not len(ids):
        return
    with cur.copy(
        "COPY descriptors (model_id, image_id, gallery, embedding) FROM STDIN WITH (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "int8", "bool", "vector"])
        for image_id, is_gallery, vector in zip(ids, gallery, vectors, strict=True):
            copy.write_row((model_id, image_id, is_gallery, vector))


def insert_row(conn: Any, model_id: int, image_id: int, gallery: bool, vector: np.ndarray) -> None:
    """One :data:`INSERT_ROW` on a psycopg connection (one round trip)."""
    conn.execute(INSERT_ROW, (model_id, image_id, gallery, vector))


def truncate(conn: sa.Connection) -> None:
    """Empty the table (every model): benchmarks on a scratch database only."""
    conn.execute(sa.text("TRUNCATE descriptors"))


# -- images still to extract --------------------------------------------------------------------

# The one definition of "still to extract" for model :m: an ingested image without a
# descriptor, not given up on (a failed extraction_work row), and, with :split, only the
# catalogue plus that split's queries. `manet extract` pages through it directly; the worker
# queue (`manet extract --workers`, enqueue_pending) fills extraction_work from it with :split
# NULL (the whole catalogue). The failed-row test changes nothing for the queue: such an image
# already has its extraction_work row, which ON CONFLICT DO NOTHING would keep anyway, and the
# queue then leaves failures to that table (max_attempts); so both commands behave as before.
_PENDING_WHERE = """
       i.status = 'ok'
   AND (i.domain = 'catalog' OR CAST(:split AS text) IS NULL OR i.split = :split)
   AND NOT EXISTS (SELECT 1 FROM descriptors d WHERE d.model_id = :m AND d.image_id = i.id)
   AND NOT EXISTS (SELECT 1 FROM extraction_work w
                    WHERE w.model_id = :m AND w.image_id = i.id AND w.status = 'failed')
"""

# Keyset pagination: the next page starts after the last id seen, so each page is one short
# index scan however far the run has got, and rows committed meanwhile never shift a page.
_PENDING_PAGE = sa.text(
    f"""
    SELECT i.id, i.uri, i.domain = 'catalog' AS gallery
      FROM images i
     WHERE {_PENDING_WHERE} AND i.id > :after
     ORDER BY i.id
     LIMIT :limit
    """
)

_PENDING_COUNT = sa.text(f"SELECT count(*) FROM images i WHERE {_PENDING_WHERE}")

_ENQUEUE = sa.text(
    f"""
    INSERT INTO extraction_work (model_id, image_id, status)
    SELECT :m, i.id, 'pending' FROM images i
     WHERE {_PENDING_WHERE}
    ON CONFLICT (model_id, image_id) DO NOTHING
    """
)


def pending_page(conn: sa.Connection, model_id: int, split: str | None, after: int,
                 limit: int) -> list[Any]:
    """Up to ``limit`` images still to extract with an id above ``after``, in id order: rows
    of (id, uri, gallery)."""
    return list(conn.execute(_PENDING_PAGE, {"m": model_id, "split": split, "after": after,
                                             "limit": limit}).all())


def count_pending(conn: sa.Connection, model_id: int, split: str | None = None) -> int:
    """How many images are still to extract for the model (see :func:`pending_page`)."""
    return int(conn.execute(_PENDING_COUNT, {"m": model_id, "split": split}).scalar_one())


def enqueue_pending(conn: sa.Connection, model_id: int) -> int:
    """A pending ``extraction_work`` row for every image still to extract (no split); the
    number of rows added."""
    return int(conn.execute(_ENQUEUE, {"m": model_id, "split": None}).rowcount)


# -- counting ---------------------------------------------------------------------------------


def count(conn: sa.Connection, model_id: int, *, gallery: bool | None = None) -> int:
    """The model's descriptors: all, or only catalogue (``gallery=True``) / query rows."""
    where = "" if gallery is None else (" AND gallery" if gallery else " AND NOT gallery")
    return int(conn.execute(sa.text(f"SELECT count(*) FROM descriptors WHERE model_id = :m{where}"),
                            {"m": model_id}).scalar_one())


def count_subquery(model_id_sql: str) -> str:
    """A scalar subquery counting the descriptors of model ``model_id_sql`` (a column such as
    ``m.id`` or a bound ``:m``), for statements that read several counts in one snapshot."""
    return f"(SELECT count(*) FROM descriptors d WHERE d.model_id = {model_id_sql})"


# -- reading vectors --------------------------------------------------------------------------

_BY_IDS_SA = sa.text("SELECT image_id, embedding FROM descriptors WHERE model_id = :m AND image_id = ANY(:ids)")
_BY_IDS_RAW = "SELECT image_id, embedding FROM descriptors WHERE model_id = %s AND image_id = ANY(%s)"


def read_vectors(conn: Any, model_id: int, image_ids: Iterable[int]) -> dict[int, np.ndarray]:
    """The stored float32 descriptors of ``image_ids`` under the model, by image id (ids
    without one are absent). On a psycopg connection the vectors come binary (parsing text
    costs more than a re-ranked search); on a SQLAlchemy one, inside the caller's transaction."""
    ids = [int(i) for i in image_ids]
    if isinstance(conn, sa.Connection):
        rows = conn.execute(_BY_IDS_SA, {"m": int(model_id), "ids": ids}).all()
    else:
        rows = conn.execute(_BY_IDS_RAW, [int(model_id), ids], binary=True).fetchall()
    return {int(image_id): as_array(embedding) for image_id, embedding in rows}


def gallery_ids(conn: sa.Connection, model_id: int) -> list[int]:
    """Image ids of the model's catalogue descriptors."""
    return list(conn.execute(sa.text("SELECT image_id FROM descriptors WHERE model_id = :m AND gallery"),
                             {"m": model_id}).scalars().all())


def stream(conn: Any, model_id: int, gallery: bool | None = None,
           batch: int = 10_000) -> Iterator[tuple[list[int], list[bool], np.ndarray]]:
    """Yield (image ids, gallery flags, float32 matrix) of the model's descriptors (all, or only
    gallery / only query rows) in image id order, through a server-side cursor on a psycopg
    connection: memory stays flat however many there are."""
    where = "" if gallery is None else (" AND gallery" if gallery else " AND NOT gallery")
    with conn.cursor(name=f"manet_stored_{int(model_id)}", binary=True) as cur:
        cur.execute(f"SELECT image_id, gallery, embedding FROM descriptors WHERE model_id = %s{where} "
                    f"ORDER BY image_id", [int(model_id)])
        while rows := cur.fetchmany(batch):
            yield [r[0] for r in rows], [r[1] for r in rows], np.stack([as_array(r[2]) for r in rows])


def labelled_gallery(conn: sa.Connection, model_id: int) -> list[Any]:
    """The model's catalogue descriptors with their product: rows of (image_id, product_id,
    embedding) in image id order."""
    return list(conn.execute(
        sa.text(
            """SELECT d.image_id, i.product_id, d.embedding FROM descriptors d
               JOIN images i ON i.id = d.image_id
               WHERE d.model_id = :m AND d.gallery ORDER BY d.image_id"""
        ),
        {"m": model_id},
    ).all())


def labelled_queries(conn: sa.Connection, model_id: int, split: str | None) -> list[Any]:
    """The model's query-image descriptors whose product is known (of ``split``, or all):
    rows of (image_id, product_id, embedding) in image id order."""
    split_sql = "" if split is None else "AND i.split = :split"
    return list(conn.execute(
        sa.text(
            f"""SELECT d.image_id, i.product_id, d.embedding FROM descriptors d
                JOIN images i ON i.id = d.image_id
                WHERE d.model_id = :m AND i.domain = 'query' AND i.product_id IS NOT NULL {split_sql}
                ORDER BY d.image_id"""
        ),
        {"m": model_id, "split": split},
    ).all())


# -- top-k search SQL ---------------------------------------------------------------------------


def top_k_sql(model_id: int, k: int, distance: str, rerank_factor: int, *, category: bool = False,
              brand: bool = False, graph: str | None = None) -> str:
    """The top-``k`` search over the model's catalogue for query vector ``:q`` (``:category``
    and ``:brand`` filters when asked), joined with images and products.

    ``distance`` is the index's expression on ``d.embedding`` (``IndexLayout.distance``); the
    model id is a literal because the planner only matches the partial expression index so.
    Quantised indexes rank approximately: ``rerank_factor`` x k candidates are ordered by the
    exact float32 inner product, and only the k winners are joined. ``graph`` (validated SQL of
    literals, :func:`manet.store.category_indexes.member_condition`) restricts the scan to a
    category's own index.
    """
    where = [f"d.model_id = {int(model_id)}", "d.gallery"] + ([graph] if graph else [])
    # Filters run inside the index scan (iterative scan refills until k rows pass them).
    where += filters.image_predicates("d.image_id", category=category, brand=brand)
    return f"""
        SELECT t.image_id, i.product_id, p.sku, p.title, p.brand, i.uri, t.score
          FROM (SELECT c.image_id, -(c.embedding <#> CAST(:q AS vector)) AS score
                  FROM (SELECT d.image_id, d.embedding
                          FROM descriptors d
                         WHERE {' AND '.join(where)}
                         ORDER BY {distance}
                         LIMIT {int(k) * rerank_factor}) c
                 ORDER BY c.embedding <#> CAST(:q AS vector), c.image_id
                 LIMIT {int(k)}) t
          JOIN images i ON i.id = t.image_id
          LEFT JOIN products p ON p.id = i.product_id
         ORDER BY t.score DESC, t.image_id
    """


def exact_top_k_sql(model_id: int, k: int, *, category: bool, brand: bool) -> str:
    """The filter planner's exact path, in one statement: the catalogue images passing the
    filters (at most ``:cap``, :func:`manet.store.filters.matching_images_sql`) and, when there
    are at most ``:threshold`` of them, the top-``k`` of the model's descriptors among them by the
    float32 inner product, joined with images and products.

    Rows: ``matching`` (how many images were found, up to ``:cap``) followed by the columns of
    :func:`top_k_sql`; past the threshold (or with no match) one row of ``matching`` and NULLs,
    and the caller runs the HNSW search instead. The descriptors are read through the primary
    key (model_id, image_id): no HNSW index matches the uncast ``embedding <#> q``, whatever the
    model's layout, and only the matching rows are read, never the model's whole partition.
    """
    ids = filters.matching_images_sql(category=category, brand=brand)
    return f"""
        WITH f AS MATERIALIZED ({ids})
        SELECT cardinality(f.ids), t.image_id, t.product_id, t.sku, t.title, t.brand, t.uri, t.score
          FROM f LEFT JOIN LATERAL (
               SELECT e.image_id, i.product_id, p.sku, p.title, p.brand, i.uri, e.score
                 FROM (SELECT d.image_id, -(d.embedding <#> CAST(:q AS vector)) AS score
                         FROM descriptors d
                        WHERE d.model_id = {int(model_id)} AND d.gallery AND d.image_id = ANY(f.ids)
                          AND cardinality(f.ids) <= :threshold
                        ORDER BY d.embedding <#> CAST(:q AS vector), d.image_id
                        LIMIT {int(k)}) e
                 JOIN images i ON i.id = e.image_id
                 LEFT JOIN products p ON p.id = i.product_id) t ON true
         ORDER BY t.score DESC, t.image_id
    """


def bare_top_k_sql(model_id: int, k: int, distance: str, *, binary: bool, rerank_factor: int,
                   where: tuple[str, ...] = ()) -> str:
    """pgvector's README query (psycopg ``%(q)s``): a bare ORDER BY ... LIMIT k on the model's
    partial index, no join; a binary index re-ranks ``rerank_factor`` x k by the inner product.
    ``distance`` is the index's expression on ``embedding``; ``where`` adds conditions on
    ``descriptors.image_id`` (a filter). Benchmarks compare with it."""
    conditions = "".join(f" AND {condition}" for condition in where)
    bare = (f"SELECT image_id{', embedding' if binary else ''} FROM descriptors "
            f"WHERE model_id = {int(model_id)} AND gallery{conditions} ORDER BY {distance}")
    if not binary:
        return f"{bare} LIMIT {k}"
    return f"SELECT image_id FROM ({bare} LIMIT {k * rerank_factor}) c ORDER BY embedding <#> %(q)s LIMIT {k}"

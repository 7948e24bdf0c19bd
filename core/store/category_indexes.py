"""The catalogue's category indexes: per (model, category) partial HNSW indexes on ``descriptors``
(revision 0009), found by their names in PostgreSQL's catalogue rather than recorded elsewhere,
so that what search uses is always what exists.

A category index of model ``M`` and category ``C`` is named ``descriptors_hnsw_model_M_category_C``
and holds the rows ``model_id = M AND gallery AND category_ids @> ARRAY[C]``
(:func:`predicate`); a query whose WHERE has that same clause, with the ids as literals, is
planned on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from manet.store.schema import MODEL_INDEX_PREFIX

#: The middle of a category index's name.
CATEGORY_PART = "_category_"


def index_name(model_id: int, category_id: int) -> str:
    return f"{MODEL_INDEX_PREFIX}{int(model_id)}{CATEGORY_PART}{int(category_id)}"


def member_condition(category_id: int, column_prefix: str = "") -> str:
    """The clause of the index's WHERE that a query adds to its own ``model_id = M AND gallery``
    (with ``column_prefix`` such as ``d.``) to be planned on the category's index."""
    return f"{column_prefix}category_ids @> ARRAY[{int(category_id)}]"


def predicate(model_id: int, category_id: int) -> str:
    """The index's WHERE."""
    return f"model_id = {int(model_id)} AND gallery AND {member_condition(category_id)}"


@dataclass(frozen=True)
class CategoryIndex:
    name: str
    category_id: int
    #: None when the index names a category that no longer exists (re-mined categories).
    category: str | None
    valid: bool
    #: The rows it holds, as PostgreSQL last counted them (pg_class.reltuples: set by the build,
    #: then estimated by VACUUM and ANALYZE).
    rows: int
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LIST = sa.text(
    """
    SELECT ic.relname AS name, substring(ic.relname FROM length(:prefix) + 1)::integer AS category_id,
           c.name AS category, x.indisvalid AS valid, greatest(ic.reltuples, 0)::bigint AS rows,
           pg_relation_size(ic.oid) AS size_bytes
      FROM pg_index x
      JOIN pg_class ic ON ic.oid = x.indexrelid
      LEFT JOIN categories c ON c.id = substring(ic.relname FROM length(:prefix) + 1)::integer
     WHERE x.indrelid = 'descriptors'::regclass AND starts_with(ic.relname, :prefix)
       AND substring(ic.relname FROM length(:prefix) + 1) ~ '^[0-9]+$'
     ORDER BY ic.relname
    """
)


def _prefix(model_id: int) -> str:
    return f"{MODEL_INDEX_PREFIX}{int(model_id)}{CATEGORY_PART}"


def list_for_model(conn: sa.Connection, model_id: int) -> list[CategoryIndex]:
    """The model's category indexes, valid or not."""
    return [CategoryIndex(**row._mapping) for row in conn.execute(_LIST, {"prefix": _prefix(model_id)})]


def drop_for_model(conn: sa.Connection, model_id: int, *, stale_only: bool = False) -> list[str]:
    """Drop the model's category indexes: all of them (its layout changed, or it is being deleted),
    or with ``stale_only`` those of categories that no longer exist (re-mined)."""
    names = [index.name for index in list_for_model(conn, model_id) if not stale_only or index.category is None]
    for name in names:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
    return names


#: psycopg ``%(name)s`` SQL: the id of category ``name`` and the rows of model ``model``'s
#: category index of it (PostgreSQL's count at the last build or VACUUM) when a valid one
#: exists, else no row. One index lookup per catalogue table.
LOOKUP_SQL = f"""
    SELECT c.id, greatest(ic.reltuples, 0)::bigint FROM categories c
      JOIN pg_class ic ON ic.relname = '{MODEL_INDEX_PREFIX}' || %(model)s || '{CATEGORY_PART}' || c.id
      JOIN pg_index x ON x.indexrelid = ic.oid AND x.indisvalid AND x.indrelid = 'descriptors'::regclass
     WHERE c.name = %(category)s
"""


def fill_missing(conn: sa.Connection, model_id: int) -> int:
    """Fill ``category_ids`` of the model's gallery rows written before revision 0009 (NULL);
    the triggers keep them right from then on. Returns how many rows were filled."""
    return int(conn.execute(sa.text(
        "UPDATE descriptors SET category_ids = manet_image_category_ids(image_id) "
        "WHERE model_id = :m AND gallery AND category_ids IS NULL"), {"m": int(model_id)}).rowcount)


def gallery_rows_per_category(conn: sa.Connection, model_id: int) -> dict[int, tuple[str, int]]:
    """``{category id: (name, the model's catalogue descriptors in it)}``, one scan of the model's rows."""
    rows = conn.execute(sa.text(
        "SELECT c.id, c.name, count(*) FROM descriptors d CROSS JOIN LATERAL unnest(d.category_ids) u(id) "
        "JOIN categories c ON c.id = u.id WHERE d.model_id = :m AND d.gallery GROUP BY c.id, c.name"),
        {"m": int(model_id)})
    return {int(cid): (name, int(n)) for cid, name, n in rows}

"""Products of ingested records: insert the new ones, update the fields that changed.

The manifest is the source of truth for what it gives: a field it leaves empty keeps the
stored value (many rows of one product carry its title only once), a field it gives replaces
the stored one. Attributes are merged key by key, the manifest's value winning (a key cannot be
removed this way: an empty cell and an absent column look the same). The manifest's category
becomes the product's only ``manual`` category; mined (``tfidf``) categories are left alone.
Every update is recorded as a ``product.update`` event with the old and new values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from manet.plugin_base import Record
from manet.store.events import record_events
from manet.store.schema import categories, product_categories, products

#: The product columns a record sets directly.
TEXT_FIELDS = ("title", "brand", "description")


class Counts(Protocol):
    products_added: int
    products_updated: int


def _wanted(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """sku -> the fields its records give (the first non-empty value of each; attributes merged)."""
    wanted: dict[str, dict[str, Any]] = {}
    for record in records:
        if record.sku is None:
            continue
        fields = wanted.setdefault(record.sku, {"attributes": {}})
        for name in (*TEXT_FIELDS, "category"):
            if fields.get(name) is None:
                fields[name] = getattr(record, name)
        for key, value in (record.attributes or {}).items():
            fields["attributes"].setdefault(key, value)
    return wanted


def _linked_categories(conn: sa.Connection, product_ids: list[int]) -> dict[int, dict[str, str]]:
    """product id -> {category name: source} of its categories."""
    rows = conn.execute(
        sa.select(product_categories.c.product_id, categories.c.name, categories.c.source)
        .join(categories, categories.c.id == product_categories.c.category_id)
        .where(product_categories.c.product_id.in_(product_ids))
    )
    found: dict[int, dict[str, str]] = {}
    for product_id, name, source in rows:
        found.setdefault(product_id, {})[name] = source
    return found


def _link_category(conn: sa.Connection, product_id: int, name: str) -> None:
    category_id = conn.execute(
        insert(categories).values(name=name, source="manual")
        .on_conflict_do_update(index_elements=["name"], set_={"name": name})
        .returning(categories.c.id)
    ).scalar_one()
    conn.execute(insert(product_categories).values(product_id=product_id, category_id=category_id)
                 .on_conflict_do_nothing())


def _manual(linked: dict[str, str]) -> set[str]:
    return {name for name, source in linked.items() if source == "manual"}


def _set_category(conn: sa.Connection, product_id: int, name: str, linked: dict[str, str]) -> None:
    """Make ``name`` the product's only manual category."""
    others = sorted(_manual(linked) - {name})
    if others:
        conn.execute(product_categories.delete().where(
            product_categories.c.product_id == product_id,
            product_categories.c.category_id.in_(
                sa.select(categories.c.id).where(categories.c.source == "manual", categories.c.name.in_(others))),
        ))
    _link_category(conn, product_id, name)


def _changes(row: Any, fields: dict[str, Any], linked: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What ``fields`` would change on the stored ``row``: field -> {"old", "new"}."""
    changes = {name: {"old": getattr(row, name), "new": fields[name]}
               for name in TEXT_FIELDS if fields[name] is not None and fields[name] != getattr(row, name)}
    merged = {**dict(row.attributes or {}), **fields["attributes"]}
    if merged != dict(row.attributes or {}):
        changes["attributes"] = {"old": dict(row.attributes or {}), "new": merged}
    category = fields["category"]
    # A category of that name may exist as a mined one: linked to it, the product is up to date.
    if category is not None and (category not in linked or _manual(linked) - {category}):
        changes["category"] = {"old": sorted(_manual(linked)) or None, "new": category}
    return changes


def _update(conn: sa.Connection, row: Any, changes: dict[str, dict[str, Any]], linked: dict[str, str]) -> None:
    values = {name: change["new"] for name, change in changes.items() if name != "category"}
    if values:
        conn.execute(products.update().where(products.c.id == row.id).values(**values))
    if "category" in changes:
        _set_category(conn, row.id, changes["category"]["new"], linked)


def _insert(conn: sa.Connection, sku: str, fields: dict[str, Any]) -> tuple[int, bool]:
    """(id, inserted); a product stored meanwhile by a concurrent ingest is taken as it is."""
    row = conn.execute(
        insert(products)
        .values(sku=sku, attributes=fields["attributes"], **{name: fields[name] for name in TEXT_FIELDS})
        .on_conflict_do_update(index_elements=["sku"], set_={"sku": sku})
        .returning(products.c.id, sa.literal_column("(xmax = 0)").label("inserted"))
    ).one()
    if row.inserted and fields["category"] is not None:
        _link_category(conn, row.id, fields["category"])
    return row.id, bool(row.inserted)


def store_products(conn: sa.Connection, records: Sequence[Record], counts: Counts) -> dict[str, int]:
    """Insert or update the products of ``records`` (see the module docstring); return sku -> id.
    ``counts.products_added`` and ``counts.products_updated`` grow by what was done."""
    wanted = _wanted(records)
    if not wanted:
        return {}
    stored = {row.sku: row for row in conn.execute(sa.select(products).where(products.c.sku.in_(list(wanted))))}
    linked = _linked_categories(conn, [row.id for row in stored.values()])
    ids: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    for sku, fields in wanted.items():
        row = stored.get(sku)
        if row is None:
            ids[sku], inserted = _insert(conn, sku, fields)
            if inserted:
                counts.products_added += 1
                events.append({"action": "product.create", "product_id": ids[sku], "sku": sku})
            continue
        ids[sku] = row.id
        changes = _changes(row, fields, linked.get(row.id, {}))
        if changes:
            _update(conn, row, changes, linked.get(row.id, {}))
            counts.products_updated += 1
            events.append({"action": "product.update", "product_id": row.id, "sku": sku,
                           "details": {"changes": changes}})
    record_events(conn, events)
    return ids

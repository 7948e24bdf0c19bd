"""The ``events`` table: who changed what in the catalogue, the models and their indexes.

Every change of that kind records one row through :func:`record_event`, in the transaction
of the change itself, so the history holds exactly what was committed. Rows have no foreign
keys: the history of a deleted product is still there to read.
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from manet.store.schema import events


def os_user() -> str:
    """The operating-system user running this process ("unknown" where it cannot be told)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


def _actor() -> sa.ColumnElement[str]:
    # Both halves matter: the OS user says who typed the command, the database role what it
    # was allowed to do (several operators often share one role).
    return sa.func.concat(sa.literal(os_user()), "@", sa.func.current_user())


def record_event(conn: sa.Connection, action: str, *, product_id: int | None = None, sku: str | None = None,
                 image_id: int | None = None, model_id: int | None = None,
                 details: dict[str, Any] | None = None) -> None:
    """Record one change (``action`` such as ``product.delete``) inside ``conn``'s transaction."""
    conn.execute(events.insert().values(
        action=action, product_id=product_id, sku=sku, image_id=image_id, model_id=model_id,
        details=details or {}, actor=_actor(),
    ))


def record_events(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Record many changes at once; each row holds ``action`` and any of the keyword arguments
    of :func:`record_event` (one statement, for deletions of thousands of rows)."""
    if not rows:
        return
    keys = ("product_id", "sku", "image_id", "model_id")
    conn.execute(events.insert().values(actor=_actor()), [
        {"action": row["action"], **{key: row.get(key) for key in keys}, "details": row.get("details") or {}}
        for row in rows
    ])


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def read_events(conn: sa.Connection, *, sku: str | None = None, product_id: int | None = None,
                image_id: int | None = None, model_id: int | None = None, action: str | None = None,
                limit: int = 100) -> list[dict[str, Any]]:
    """The latest ``limit`` events matching every filter given, oldest first. ``image_id`` also
    finds the events that name it as ``details.old_image_id`` (the image a new file replaced)."""
    query = sa.select(events)
    for column, value in (("sku", sku), ("product_id", product_id), ("model_id", model_id), ("action", action)):
        if value is not None:
            query = query.where(events.c[column] == value)
    if image_id is not None:
        query = query.where(sa.or_(events.c.image_id == int(image_id),
                                   events.c.details["old_image_id"].astext == str(int(image_id))))
    latest = query.order_by(events.c.id.desc()).limit(max(1, int(limit))).subquery()
    rows = conn.execute(sa.select(latest).order_by(latest.c.id)).mappings()
    return [{key: _jsonable(value) for key, value in row.items()} for row in rows]


def details_json(details: dict[str, Any]) -> str:
    """``details`` as one line of JSON (for plain-text listings)."""
    return json.dumps(details, sort_keys=True, default=str)

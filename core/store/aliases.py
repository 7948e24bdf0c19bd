"""Model aliases: a stable name (``production``) that points at one model of ``models``.

Every reader resolves a name once per query (``manet_model_id`` in SQL, :func:`manet.store.models.get_model`
in Python), and re-pointing an alias is one UPDATE, so a search runs wholly on the old model or
wholly on the new one. Model names and aliases share one namespace: neither may take a name the
other holds, and both writers take :func:`lock_names` so two sessions cannot race to it.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from manet.errors import ManetError, NotFoundError
from manet.store.database import Database
from manet.store.events import record_event

#: The same characters as a model name (letters, digits, _ . : -), at most 63.
ALIAS_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
# One advisory lock key for "a model name or an alias is being taken" (arbitrary, fixed).
_NAMES_LOCK = 0x6D616E6574  # "manet"


def lock_names(conn: sa.Connection) -> None:
    """Serialise, until ``conn``'s transaction ends, every writer that takes a model name or an alias."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _NAMES_LOCK})


def alias_target(conn: sa.Connection, name: str) -> str | None:
    """The model that alias ``name`` points at, or None when ``name`` is no alias."""
    return conn.execute(sa.text("SELECT m.name FROM model_aliases a JOIN models m ON m.id = a.model_id "
                                "WHERE a.alias = :a"), {"a": name}).scalar()


def aliases_of(conn: sa.Connection, model_id: int) -> list[str]:
    """The aliases that point at model ``model_id``, sorted."""
    return list(conn.execute(sa.text("SELECT alias FROM model_aliases WHERE model_id = :m ORDER BY alias"),
                             {"m": int(model_id)}).scalars())


def _check_alias_name(alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias):
        raise ManetError(f"alias {alias!r} is not allowed; use letters, digits and _ . : - "
                         f"(max 63 characters, starting with a letter or digit)")


def set_alias(db: Database, alias: str, model: str) -> dict[str, Any]:
    """Point ``alias`` at model ``model`` (creating it, or re-pointing it in one UPDATE) and record
    an ``alias.set`` event; returns ``{alias, model, model_id, previous}``."""
    _check_alias_name(alias)
    with db.begin() as conn:
        lock_names(conn)
        if conn.execute(sa.text("SELECT 1 FROM models WHERE name = :n"), {"n": alias}).first():
            raise ManetError(f"'{alias}' is a model's name, so it cannot be an alias; pick another alias name")
        target = conn.execute(sa.text("SELECT id FROM models WHERE name = :n"), {"n": model}).scalar()
        if target is None:
            via = alias_target(conn, model)
            if via is not None:
                raise ManetError(f"'{model}' is itself an alias (of model '{via}'); point '{alias}' at a model: "
                                 f"manet models alias {alias} {via}")
            known = list(conn.execute(sa.text("SELECT name FROM models ORDER BY name")).scalars())
            raise NotFoundError(f"model '{model}' does not exist (known: {', '.join(known) or 'none yet'}); "
                                f"create it with: manet models create {model}")
        previous = alias_target(conn, alias)
        # One statement: a concurrent search resolves the alias either before or after it.
        conn.execute(sa.text(
            "INSERT INTO model_aliases (alias, model_id) VALUES (:a, :m) "
            "ON CONFLICT (alias) DO UPDATE SET model_id = EXCLUDED.model_id, updated_at = now()"),
            {"a": alias, "m": target})
        record_event(conn, "alias.set", model_id=target,
                     details={"alias": alias, "old": previous, "new": model})
    return {"alias": alias, "model": model, "model_id": int(target), "previous": previous}


def remove_alias(db: Database, alias: str) -> dict[str, Any]:
    """Remove ``alias`` (the model stays) and record an ``alias.delete`` event; returns
    ``{alias, model}``. An unknown alias is a NotFoundError, a model's name a ManetError."""
    with db.begin() as conn:
        lock_names(conn)
        row = conn.execute(sa.text(
            "DELETE FROM model_aliases a USING models m WHERE a.alias = :a AND m.id = a.model_id "
            "RETURNING m.id, m.name"), {"a": alias}).first()
        if row is None:
            if conn.execute(sa.text("SELECT 1 FROM models WHERE name = :n"), {"n": alias}).first():
                raise ManetError(f"'{alias}' is a model, not an alias; delete a model with: manet models delete "
                                 f"{alias}")
            raise NotFoundError(f"alias '{alias}' does not exist; list them with: manet models aliases")
        record_event(conn, "alias.delete", model_id=row.id, details={"alias": alias, "old": row.name})
    return {"alias": alias, "model": row.name}


def list_aliases(db: Database) -> list[dict[str, Any]]:
    """Every alias with the model it points at and when it was last set, by alias."""
    with db.begin() as conn:
        rows = conn.execute(sa.text(
            "SELECT a.alias, m.name AS model, m.id AS model_id, a.updated_at FROM model_aliases a "
            "JOIN models m ON m.id = a.model_id ORDER BY a.alias")).mappings().all()
    return [{**row, "updated_at": row["updated_at"].isoformat()} for row in rows]

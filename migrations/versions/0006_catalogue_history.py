"""A catalogue that changes: model aliases and the events history.

- ``model_aliases``: a stable name (``production``) pointing at one model. Re-pointing is one
  UPDATE, so every query, which resolves the name once, sees either the old or the new model.
- ``events``: who did what to which product, image, model or index, kept after the thing itself
  is deleted (so no foreign keys).
- ``manet_search`` / ``manet_similar`` accept an alias wherever they accept a model name.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = r"""
CREATE TABLE model_aliases (
    alias      text PRIMARY KEY,
    model_id   integer NOT NULL REFERENCES models (id) ON DELETE RESTRICT,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_model_aliases_model_id ON model_aliases (model_id);

CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL DEFAULT current_user,
    action     text NOT NULL,
    product_id bigint,
    sku        text,
    image_id   bigint,
    model_id   integer,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX ix_events_sku ON events (sku);
CREATE INDEX ix_events_image_id ON events (image_id);
CREATE INDEX ix_events_at ON events (at);
"""

# A model name first, then an alias: `models alias` refuses an alias that names a model.
RESOLVE = r"""
CREATE FUNCTION manet_model_id(model_name text) RETURNS integer
LANGUAGE sql STABLE
AS $fn$
    SELECT coalesce((SELECT m.id FROM models m WHERE m.name = model_name),
                    (SELECT a.model_id FROM model_aliases a WHERE a.alias = model_name))
$fn$;
"""

def _by_alias(sql: str, lookups: dict[str, str]) -> str:
    """An earlier revision's function text with its model lookups by name replaced by
    ``manet_model_id`` (taken from there, not copied; fails loudly if that text changed)."""
    for old, new in lookups.items():
        if old not in sql:
            raise RuntimeError(f"an earlier revision's SQL changed ({old!r} is gone); update revision 0006")
        sql = sql.replace(old, new)
    return sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")


SEARCH_LOOKUPS = {
    "FROM models m WHERE m.name = model_name;": "FROM models m WHERE m.id = manet_model_id(model_name);",
    "list them with: SELECT name FROM models'":
        "list them with: SELECT name FROM models UNION SELECT alias FROM model_aliases'",
}
SIMILAR_LOOKUPS = {
    "FROM descriptors d JOIN models m ON m.id = d.model_id\n     WHERE m.name = model_name AND":
        "FROM descriptors d\n     WHERE d.model_id = manet_model_id(model_name) AND",
}


def _similar(revision_0001) -> str:
    """Revision 0001's manet_similar (the last one defined before this revision)."""
    return revision_0001.FUNCTIONS[revision_0001.FUNCTIONS.index("CREATE FUNCTION manet_similar"):]


def search_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_search`` (for later revisions' downgrades)."""
    revision_0004 = importlib.import_module("manet.migrations.versions.0004_index_options")
    return _by_alias(revision_0004.MANET_SEARCH, SEARCH_LOOKUPS)


def similar_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_similar``."""
    return _by_alias(_similar(importlib.import_module("manet.migrations.versions.0001_initial")), SIMILAR_LOOKUPS)


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(RESOLVE)
    op.execute(search_function())
    op.execute(similar_function())


def downgrade() -> None:
    revision_0001 = importlib.import_module("manet.migrations.versions.0001_initial")
    revision_0004 = importlib.import_module("manet.migrations.versions.0004_index_options")
    op.execute(revision_0004.MANET_SEARCH)
    op.execute(_similar(revision_0001).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP FUNCTION IF EXISTS manet_model_id(text)")
    op.execute("DROP TABLE IF EXISTS events")
    op.execute("DROP TABLE IF EXISTS model_aliases")

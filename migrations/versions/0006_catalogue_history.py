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

SIMILAR = r"""
CREATE OR REPLACE FUNCTION manet_similar(model_name text, query_image_id bigint, k integer DEFAULT 7)
RETURNS TABLE (rank bigint, image_id bigint, product_id bigint, sku text, title text,
               brand text, score double precision)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    q vector;
BEGIN
    SELECT d.embedding INTO q
      FROM descriptors d
     WHERE d.model_id = manet_model_id(model_name) AND d.image_id = query_image_id;
    IF q IS NULL THEN
        RAISE EXCEPTION 'image % has no descriptor for model "%"; run: manet extract --model %',
            query_image_id, model_name, model_name;
    END IF;
    RETURN QUERY SELECT * FROM manet_search(model_name, q, k);
END
$fn$;
"""


def _search_by_alias(search_sql: str) -> str:
    """Revision 0004's manet_search, with the model looked up by name or alias."""
    lookup = "FROM models m WHERE m.name = model_name;"
    hint = "list them with: SELECT name FROM models'"
    if lookup not in search_sql or hint not in search_sql:
        raise RuntimeError("revision 0004's manet_search changed; update revision 0006")
    return search_sql.replace(lookup, "FROM models m WHERE m.id = manet_model_id(model_name);").replace(
        hint, "list them with: SELECT name FROM models UNION SELECT alias FROM model_aliases'"
    )


def upgrade() -> None:
    revision_0004 = importlib.import_module("manet.migrations.versions.0004_index_options")
    op.execute(TABLES)
    op.execute(RESOLVE)
    op.execute(_search_by_alias(revision_0004.MANET_SEARCH))
    op.execute(SIMILAR)


def downgrade() -> None:
    revision_0001 = importlib.import_module("manet.migrations.versions.0001_initial")
    revision_0004 = importlib.import_module("manet.migrations.versions.0004_index_options")
    op.execute(revision_0004.MANET_SEARCH)
    similar = revision_0001.FUNCTIONS[revision_0001.FUNCTIONS.index("CREATE FUNCTION manet_similar") :]
    op.execute(similar.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP FUNCTION IF EXISTS manet_model_id(text)")
    op.execute("DROP TABLE IF EXISTS events")
    op.execute("DROP TABLE IF EXISTS model_aliases")

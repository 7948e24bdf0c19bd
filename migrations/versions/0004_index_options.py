"""Per-model index options (HNSW parameters, quantisation), read by search and manet_search;
descriptors stored inline.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# manet_search with the index's own expression (manet.search.index.IndexLayout): vector, halfvec
# (rerank_factor x k candidates) or binary_quantize(...)::bit with Hamming distance (rerank_factor x k
# candidates), each re-ranked by the exact inner product (so the index scan may use relaxed
# order); images and products are joined to the k winners only.
MANET_SEARCH = r"""
CREATE OR REPLACE FUNCTION manet_search(model_name text, query vector, k integer DEFAULT 7)
RETURNS TABLE (rank bigint, image_id bigint, product_id bigint, sku text, title text,
               brand text, score double precision)
LANGUAGE plpgsql STABLE
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    m_id     integer;
    m_dim    integer;
    quantize text;
    factor   integer;
    ordering text;
BEGIN
    SELECT m.id, m.dim,
           coalesce(m.index_options->>'quantize', CASE WHEN m.dim > 2000 THEN 'halfvec' ELSE 'none' END),
           coalesce((m.index_options->>'rerank_factor')::integer, CASE WHEN m.dim > 2000 THEN 4 ELSE 1 END)
      INTO m_id, m_dim, quantize, factor
      FROM models m WHERE m.name = model_name;
    IF m_id IS NULL THEN
        RAISE EXCEPTION 'unknown model "%"; list them with: SELECT name FROM models', model_name;
    END IF;
    IF vector_dims(query) <> m_dim THEN
        RAISE EXCEPTION 'query has % dimensions but model "%" has %', vector_dims(query), model_name, m_dim;
    END IF;
    ordering := CASE quantize
        WHEN 'binary' THEN format('binary_quantize(d.embedding)::bit(%1$s) <~> binary_quantize($1::vector(%1$s))', m_dim)
        WHEN 'halfvec' THEN format('d.embedding::halfvec(%1$s) <#> $1::halfvec(%1$s)', m_dim)
        ELSE format('d.embedding::vector(%1$s) <#> $1::vector(%1$s)', m_dim)
    END;
    RETURN QUERY EXECUTE format(
        'SELECT row_number() OVER (ORDER BY c.distance, c.image_id), c.image_id, i.product_id,
                p.sku, p.title, p.brand, -c.distance
           FROM (SELECT h.image_id, (h.embedding <#> $1)::double precision AS distance
                   FROM (SELECT d.image_id, d.embedding
                           FROM descriptors d
                          WHERE d.model_id = %1$s AND d.gallery
                          ORDER BY %2$s
                          LIMIT $3) h
                  ORDER BY distance, h.image_id
                  LIMIT $2) c
           JOIN images i ON i.id = c.image_id
           LEFT JOIN products p ON p.id = i.product_id
          ORDER BY c.distance, c.image_id',
        m_id, ordering)
    USING query, k, k * factor;
END
$fn$;
"""


def upgrade() -> None:
    # What `manet index build` made for the model, so search (and manet_search) can write
    # the SQL that matches the index: the planner ignores an index whose cast differs.
    op.execute("ALTER TABLE models ADD COLUMN index_options jsonb NOT NULL DEFAULT '{}'::jsonb")
    op.execute(MANET_SEARCH)
    # Keep descriptors up to ~2,000 dims inline: a 512-d vector (2 KB) is just over the default
    # toast threshold, and out-of-line storage made binary COPY 1.7 x and the exact scan 3 x
    # slower (measured at 20K x 512). Larger vectors are still moved out of line.
    op.execute("ALTER TABLE descriptors SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    # Back to the functions of revision 0001 (taken from there, not copied).
    initial = importlib.import_module("manet.migrations.versions.0001_initial")
    op.execute(initial.FUNCTIONS.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("ALTER TABLE descriptors RESET (toast_tuple_target)")
    op.execute("ALTER TABLE models DROP COLUMN IF EXISTS index_options")

"""The filter planner: indexes that find a filter's catalogue images, and manet_search /
manet_similar with ``category`` and ``brand`` filters that choose exact or HNSW by the filter's size.

- ``images (product_id, id) WHERE domain = 'catalog'``, ``product_categories (category_id,
  product_id)`` and ``products (lower(brand), id)``: a filter's catalogue images by index-only
  scans, without reading ``descriptors``.
- ``manet_search(model_name, query, k, category_name, brand_name)`` and ``manet_similar(...)``
  (the same filters; ``brand`` is already the name of a result column): at most ``manet.filter_exact_threshold`` matching images (a session setting,
  default :data:`EXACT_THRESHOLD`) are ranked exactly through the primary key; more go through
  the model's HNSW index with an iterative scan, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: manet.config.DEFAULT_FILTER_EXACT_THRESHOLD when this revision was written.
EXACT_THRESHOLD = 5000

INDEXES = r"""
CREATE INDEX images_catalog_product_idx ON images (product_id, id) WHERE domain = 'catalog';
CREATE INDEX product_categories_category_product_idx ON product_categories (category_id, product_id);
CREATE INDEX products_lower_brand_idx ON products (lower(brand), id);
"""

DROP_INDEXES = r"""
DROP INDEX IF EXISTS images_catalog_product_idx;
DROP INDEX IF EXISTS product_categories_category_product_idx;
DROP INDEX IF EXISTS products_lower_brand_idx;
"""

# The filters and the capped list of matching images are manet.store.filters' SQL; the exact
# path orders by the uncast inner product, which no HNSW index matches, over the primary key.
MANET_SEARCH = r"""
CREATE FUNCTION manet_search(model_name text, query vector, k integer DEFAULT 7,
                             category_name text DEFAULT NULL, brand_name text DEFAULT NULL)
RETURNS TABLE (rank bigint, image_id bigint, product_id bigint, sku text, title text,
               brand text, score double precision)
LANGUAGE plpgsql STABLE
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    m_id      integer;
    m_dim     integer;
    quantize  text;
    factor    integer;
    ordering  text;
    threshold integer := coalesce(nullif(current_setting('manet.filter_exact_threshold', true), '')::integer,
                                  __THRESHOLD__);
    conds     text := '';
    prods     text;
    preds     text := '';
    n_products bigint;
    ids       bigint[];
BEGIN
    SELECT m.id, m.dim,
           coalesce(m.index_options->>'quantize', CASE WHEN m.dim > 2000 THEN 'halfvec' ELSE 'none' END),
           coalesce((m.index_options->>'rerank_factor')::integer, CASE WHEN m.dim > 2000 THEN 4 ELSE 1 END)
      INTO m_id, m_dim, quantize, factor
      FROM models m WHERE m.id = manet_model_id(model_name);
    IF m_id IS NULL THEN
        RAISE EXCEPTION 'unknown model "%"; list them with: SELECT name FROM models UNION SELECT alias FROM model_aliases', model_name;
    END IF;
    IF vector_dims(query) <> m_dim THEN
        RAISE EXCEPTION 'query has % dimensions but model "%" has %', vector_dims(query), model_name, m_dim;
    END IF;
    IF category_name IS NOT NULL THEN
        conds := conds || ' JOIN product_categories pc ON pc.product_id = i.product_id JOIN categories c ON c.id = pc.category_id AND c.name = $4';
        preds := preds || ' AND EXISTS (SELECT 1 FROM images fi JOIN product_categories pc ON pc.product_id = fi.product_id JOIN categories c ON c.id = pc.category_id WHERE fi.id = d.image_id AND c.name = $4)';
    END IF;
    IF brand_name IS NOT NULL THEN
        conds := conds || ' JOIN products fp ON fp.id = i.product_id AND lower(fp.brand) = lower($5)';
        preds := preds || ' AND EXISTS (SELECT 1 FROM images fi JOIN products fp ON fp.id = fi.product_id WHERE fi.id = d.image_id AND lower(fp.brand) = lower($5))';
    END IF;
    IF conds <> '' THEN
        -- The planner: count the filter's products, then its catalogue images, each up to one
        -- past the threshold; few enough images are ranked exactly (read through the primary
        -- key), more go through the index below.
        prods := CASE WHEN category_name IS NULL
                      THEN 'SELECT fp.id FROM products fp WHERE lower(fp.brand) = lower($5)'
                      ELSE 'SELECT pc.product_id FROM product_categories pc JOIN categories c ON c.id = pc.category_id AND c.name = $4'
                           || CASE WHEN brand_name IS NULL THEN ''
                                   ELSE ' JOIN products fp ON fp.id = pc.product_id AND lower(fp.brand) = lower($5)' END
                 END;
        EXECUTE format('SELECT count(*) FROM (%s LIMIT $1) x', prods)
          INTO n_products USING threshold + 1, NULL::text, NULL::text, category_name, brand_name;
    END IF;
    IF conds <> '' AND n_products <= threshold THEN
        EXECUTE format('SELECT ARRAY(SELECT m.id FROM (SELECT i.id FROM images i%s WHERE i.domain = ''catalog''
                                                        LIMIT $1) m ORDER BY m.id)', conds)
          INTO ids USING threshold + 1, NULL::text, NULL::text, category_name, brand_name;
        IF cardinality(ids) <= threshold THEN
            RETURN QUERY EXECUTE format(
                'SELECT row_number() OVER (ORDER BY c.distance, c.image_id), c.image_id, i.product_id,
                        p.sku, p.title, p.brand, -c.distance
                   FROM (SELECT d.image_id, (d.embedding <#> $1)::double precision AS distance
                           FROM descriptors d
                          WHERE d.model_id = %1$s AND d.gallery AND d.image_id = ANY($3)
                          ORDER BY d.embedding <#> $1, d.image_id
                          LIMIT $2) c
                   JOIN images i ON i.id = c.image_id
                   LEFT JOIN products p ON p.id = i.product_id
                  ORDER BY c.distance, c.image_id',
                m_id)
            USING query, k, ids;
            RETURN;
        END IF;
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
                          WHERE d.model_id = %1$s AND d.gallery%3$s
                          ORDER BY %2$s
                          LIMIT $3) h
                  ORDER BY distance, h.image_id
                  LIMIT $2) c
           JOIN images i ON i.id = c.image_id
           LEFT JOIN products p ON p.id = i.product_id
          ORDER BY c.distance, c.image_id',
        m_id, ordering, preds)
    USING query, k, k * factor, category_name, brand_name;
END
$fn$;
""".replace("__THRESHOLD__", str(EXACT_THRESHOLD))

MANET_SIMILAR = r"""
CREATE FUNCTION manet_similar(model_name text, query_image_id bigint, k integer DEFAULT 7,
                              category_name text DEFAULT NULL, brand_name text DEFAULT NULL)
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
    RETURN QUERY SELECT * FROM manet_search(model_name, q, k, category_name, brand_name);
END
$fn$;
"""

# The three-argument functions would make a call with three arguments ambiguous.
DROP_OLD = r"""
DROP FUNCTION IF EXISTS manet_similar(text, bigint, integer);
DROP FUNCTION IF EXISTS manet_search(text, vector, integer);
"""

DROP_NEW = r"""
DROP FUNCTION IF EXISTS manet_similar(text, bigint, integer, text, text);
DROP FUNCTION IF EXISTS manet_search(text, vector, integer, text, text);
"""


def search_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_search`` (for later revisions' upgrades
    and downgrades; :data:`MANET_SEARCH`, which :func:`upgrade` creates, otherwise unchanged)."""
    return MANET_SEARCH.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def similar_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_similar``."""
    return MANET_SIMILAR.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    op.execute(INDEXES)
    op.execute(DROP_OLD)
    op.execute(MANET_SEARCH)
    op.execute(MANET_SIMILAR)
    op.execute("ANALYZE images, products, product_categories")


def downgrade() -> None:
    # Back to revision 0006's functions (taken from there, not copied).
    revision_0006 = importlib.import_module("manet.migrations.versions.0006_catalogue_history")
    op.execute(DROP_NEW)
    op.execute(revision_0006.search_function())
    op.execute(revision_0006.similar_function())
    op.execute(DROP_INDEXES)

"""Initial schema: catalogue, models, descriptors, extraction work, evaluation, SQL search functions.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
CREATE TABLE products (
    id          bigserial PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    title       text,
    brand       text,
    description text,
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_brand_idx ON products (brand);

CREATE TABLE images (
    id          bigserial PRIMARY KEY,
    product_id  bigint REFERENCES products (id) ON DELETE SET NULL,
    uri         text NOT NULL,
    sha256      text UNIQUE,
    width       integer,
    height      integer,
    domain      text NOT NULL,
    split       text,
    status      text NOT NULL DEFAULT 'ok',
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT images_domain_check CHECK (domain IN ('catalog', 'query')),
    CONSTRAINT images_split_check CHECK (split IN ('train', 'val', 'test')),
    CONSTRAINT images_status_check CHECK (status IN ('ok', 'failed'))
);
CREATE INDEX ix_images_product_id ON images (product_id);
CREATE INDEX images_uri_idx ON images (uri);

CREATE TABLE categories (
    id       serial PRIMARY KEY,
    name     text NOT NULL UNIQUE,
    keywords text[] NOT NULL DEFAULT '{}'::text[],
    source   text NOT NULL DEFAULT 'manual',
    CONSTRAINT categories_source_check CHECK (source IN ('tfidf', 'manual'))
);

CREATE TABLE product_categories (
    product_id  bigint NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    category_id integer NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
    PRIMARY KEY (product_id, category_id)
);
CREATE INDEX ix_product_categories_category_id ON product_categories (category_id);

CREATE TABLE models (
    id         serial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    config     jsonb NOT NULL,
    checkpoint text,
    dim        integer NOT NULL,
    metrics    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One table for every model; each model gets its own expression + partial HNSW index
-- (built by `manet index build`), cast to that model's dimension.
CREATE TABLE descriptors (
    model_id  integer NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    image_id  bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    gallery   boolean NOT NULL,
    embedding vector NOT NULL,
    PRIMARY KEY (model_id, image_id)
);

CREATE TABLE extraction_work (
    model_id         integer NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    image_id         bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending',
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, image_id),
    CONSTRAINT extraction_work_status_check CHECK (status IN ('pending', 'leased', 'done', 'failed'))
);

CREATE TABLE eval_runs (
    id         serial PRIMARY KEY,
    model_id   integer NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    split      text,
    k          integer NOT NULL,
    normaliser text NOT NULL,
    queries    integer NOT NULL,
    metrics    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_eval_runs_model_id ON eval_runs (model_id);

CREATE TABLE eval_results (
    run_id        integer NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
    image_id      bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    ap_at_k       double precision NOT NULL,
    ap            double precision NOT NULL,
    hit_at_1      boolean NOT NULL,
    top_image_ids bigint[] NOT NULL,
    PRIMARY KEY (run_id, image_id)
);
"""

# Analysts' entry points. The cast type and model id are spliced in as literals so the
# planner can match the model's expression + partial HNSW index.
FUNCTIONS = r"""
CREATE FUNCTION manet_search(model_name text, query vector, k integer DEFAULT 7)
RETURNS TABLE (rank bigint, image_id bigint, product_id bigint, sku text, title text,
               brand text, score double precision)
LANGUAGE plpgsql STABLE
SET hnsw.iterative_scan = 'strict_order'
AS $fn$
DECLARE
    m_id  integer;
    m_dim integer;
    vtype text;
BEGIN
    SELECT m.id, m.dim INTO m_id, m_dim FROM models m WHERE m.name = model_name;
    IF m_id IS NULL THEN
        RAISE EXCEPTION 'unknown model "%"; list them with: SELECT name FROM models', model_name;
    END IF;
    IF vector_dims(query) <> m_dim THEN
        RAISE EXCEPTION 'query has % dimensions but model "%" has %', vector_dims(query), model_name, m_dim;
    END IF;
    vtype := CASE WHEN m_dim > 2000 THEN 'halfvec' ELSE 'vector' END || '(' || m_dim || ')';
    -- halfvec indexes rank in half precision: take 4k candidates, order them exactly.
    RETURN QUERY EXECUTE format(
        'SELECT row_number() OVER (ORDER BY c.distance, c.image_id), c.image_id, c.product_id,
                c.sku, c.title, c.brand, -c.distance
           FROM (SELECT h.image_id, h.product_id, h.sku, h.title, h.brand,
                        (h.embedding <#> $1)::double precision AS distance
                   FROM (SELECT d.image_id, d.embedding, i.product_id, p.sku, p.title, p.brand
                           FROM descriptors d
                           JOIN images i ON i.id = d.image_id
                           LEFT JOIN products p ON p.id = i.product_id
                          WHERE d.model_id = %2$s AND d.gallery
                          ORDER BY d.embedding::%1$s <#> $1::%1$s
                          LIMIT $3) h
                  ORDER BY distance, h.image_id
                  LIMIT $2) c
          ORDER BY c.distance, c.image_id',
        vtype, m_id)
    USING query, k, CASE WHEN m_dim > 2000 THEN 4 * k ELSE k END;
END
$fn$;

CREATE FUNCTION manet_similar(model_name text, query_image_id bigint, k integer DEFAULT 7)
RETURNS TABLE (rank bigint, image_id bigint, product_id bigint, sku text, title text,
               brand text, score double precision)
LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    q vector;
BEGIN
    SELECT d.embedding INTO q
      FROM descriptors d JOIN models m ON m.id = d.model_id
     WHERE m.name = model_name AND d.image_id = query_image_id;
    IF q IS NULL THEN
        RAISE EXCEPTION 'image % has no descriptor for model "%"; run: manet extract --model %',
            query_image_id, model_name, model_name;
    END IF;
    RETURN QUERY SELECT * FROM manet_search(model_name, q, k);
END
$fn$;
"""


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(TABLES)
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS manet_similar(text, bigint, integer)")
    op.execute("DROP FUNCTION IF EXISTS manet_search(text, vector, integer)")
    for table in (
        "eval_results",
        "eval_runs",
        "extraction_work",
        "descriptors",
        "models",
        "product_categories",
        "categories",
        "images",
        "products",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    # The vector extension stays: other schemas in the database may use it.

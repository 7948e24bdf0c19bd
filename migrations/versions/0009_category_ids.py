"""Category indexes: each catalogue descriptor carries its product's categories, so that a
category can have its own HNSW graph (a partial index), as Qdrant's per-payload subgraphs.

- ``descriptors.category_ids``: the sorted ids of the categories of the image's product on
  gallery rows (``'{}'`` for none), NULL on query rows and on rows stored before this revision
  until ``manet index build --by-category`` fills them. A category's index is
  ``CREATE INDEX ... WHERE model_id = M AND gallery AND category_ids @> ARRAY[C]`` (made by
  :mod:`manet.search.category_index`, not here): a search of that category walks a graph of its
  own rows only, so it costs an unfiltered search of a smaller catalogue instead of an iterative
  scan that skips the other categories' rows.
- Triggers keep the column right in the same transaction as the change: a descriptor written,
  a product added to or removed from a category, an image moved to another product. The search
  SQL still checks the category itself (an ``EXISTS`` on ``product_categories``), so the column
  only chooses the graph; it is never the only source of a filter's truth.
- ``manet_image_category_ids(image_id)``: what the column holds for an image.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE descriptors ADD COLUMN category_ids integer[];

CREATE FUNCTION manet_image_category_ids(image bigint) RETURNS integer[]
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(array_agg(pc.category_id ORDER BY pc.category_id), '{}'::integer[])
      FROM images i JOIN product_categories pc ON pc.product_id = i.product_id
     WHERE i.id = image
$fn$;

CREATE FUNCTION manet_descriptor_category_ids() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.category_ids := CASE WHEN NEW.gallery THEN manet_image_category_ids(NEW.image_id) END;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER descriptors_category_ids BEFORE INSERT OR UPDATE OF image_id, gallery ON descriptors
    FOR EACH ROW EXECUTE FUNCTION manet_descriptor_category_ids();

-- What the column holds for the catalogue images of some products, set again.
CREATE FUNCTION manet_refresh_category_ids(products bigint[]) RETURNS void
LANGUAGE sql AS $fn$
    UPDATE descriptors d SET category_ids = manet_image_category_ids(d.image_id)
      FROM images i
     WHERE d.image_id = i.id AND d.gallery AND i.product_id = ANY(products)
$fn$;

-- One statement-level refresh per membership change (bulk ingest adds thousands of rows at a
-- time); only the products that changed are touched. A transition table exists only for the
-- events that have it, so each is read in its own branch.
CREATE FUNCTION manet_product_categories_changed() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM manet_refresh_category_ids(ARRAY(SELECT product_id FROM changed_new));
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        PERFORM manet_refresh_category_ids(ARRAY(SELECT product_id FROM changed_old));
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER product_categories_added AFTER INSERT ON product_categories
    REFERENCING NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION manet_product_categories_changed();
CREATE TRIGGER product_categories_removed AFTER DELETE ON product_categories
    REFERENCING OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION manet_product_categories_changed();
CREATE TRIGGER product_categories_changed AFTER UPDATE ON product_categories
    REFERENCING NEW TABLE AS changed_new OLD TABLE AS changed_old
    FOR EACH STATEMENT EXECUTE FUNCTION manet_product_categories_changed();

CREATE FUNCTION manet_image_moved() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE descriptors d SET category_ids = manet_image_category_ids(d.image_id)
     WHERE d.image_id = NEW.id AND d.gallery;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER images_moved AFTER UPDATE OF product_id ON images
    FOR EACH ROW WHEN (OLD.product_id IS DISTINCT FROM NEW.product_id)
    EXECUTE FUNCTION manet_image_moved();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS images_moved ON images;
DROP TRIGGER IF EXISTS product_categories_added ON product_categories;
DROP TRIGGER IF EXISTS product_categories_removed ON product_categories;
DROP TRIGGER IF EXISTS product_categories_changed ON product_categories;
DROP TRIGGER IF EXISTS descriptors_category_ids ON descriptors;
DROP FUNCTION IF EXISTS manet_image_moved();
DROP FUNCTION IF EXISTS manet_product_categories_changed();
DROP FUNCTION IF EXISTS manet_refresh_category_ids(bigint[]);
DROP FUNCTION IF EXISTS manet_descriptor_category_ids();
DROP FUNCTION IF EXISTS manet_image_category_ids(bigint);
ALTER TABLE descriptors DROP COLUMN IF EXISTS category_ids;
"""


def upgrade() -> None:
    # Nullable, no default: no table rewrite; existing rows are filled when a category index is built.
    op.execute(UPGRADE)


def downgrade() -> None:
    # Category indexes name the column in their predicates; dropping it drops them too.
    op.execute(DOWNGRADE)

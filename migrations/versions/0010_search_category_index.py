"""manet_search walks a category's own HNSW graph when it has one.

With ``category_name`` given, ``manet_search`` (and so ``manet_similar``, which calls it) looks
for a valid category index of this model and category, ``descriptors_hnsw_model_<M>_category_<C>`` (revision 0009's partial
index ``WHERE model_id = M AND gallery AND category_ids @> ARRAY[C]``), and when there is one adds
``AND d.category_ids @> ARRAY[C]`` to its statement, with ``C`` a literal: PostgreSQL matches a
partial index only on the same clause. The scan then walks the category's graph instead of an
iterative scan over the whole model's graph that skips the other categories' rows. A category
alone is then walked at once, without counting it first; with ``brand_name`` as well the filter is
counted as before, and only a filter past the threshold walks the category's graph. The
``EXISTS`` predicates stay: they decide the filter; the column only chooses the graph. Without
such an index (none, or an invalid one left by a failed ``CREATE INDEX CONCURRENTLY``) the
function runs exactly as revision 0007's.

The function is revision 0007's text with the lookup inserted (taken from there, not copied).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import importlib

from alembic import op

from manet.migrations.function_text import edited

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# The category's id when a valid index of this model and category exists; only an integer from
# the catalogue is spliced into the statement, never the caller's string.
CATEGORY_INDEX = r"""    IF category_name IS NOT NULL THEN
        -- A category's own graph (revision 0009): PostgreSQL uses its partial index only when
        -- the statement has the index's clause, with the id as a literal.
        SELECT c.id INTO category_index
          FROM categories c
          JOIN pg_class ic ON ic.relname = format('descriptors_hnsw_model_%s_category_%s', m_id, c.id)
          JOIN pg_index x ON x.indexrelid = ic.oid AND x.indisvalid AND x.indrelid = 'descriptors'::regclass
         WHERE c.name = category_name;
        IF category_index IS NOT NULL THEN
            preds := preds || format(' AND d.category_ids @> ARRAY[%s]', category_index);
        END IF;
    END IF;
    -- A category with its own index is walked at once (as manet search does): its graph holds
    -- only rows that pass. With a brand as well, the filter is counted first as before.
    IF conds <> '' AND (category_index IS NULL OR brand_name IS NOT NULL) THEN
"""

#: Where the lookup goes in revision 0007's manet_search: a new variable, and the lookup just
#: before the planner counts the filter, whose count it skips for a category alone with an index
#: (n_products stays NULL, so the exact path is not taken).
EDITS = {
    "    ids       bigint[];\n": "    ids       bigint[];\n    category_index integer;\n",
    "    IF conds <> '' THEN\n        -- The planner:": CATEGORY_INDEX + "        -- The planner:",
}


def search_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_search``: revision 0007's with the
    category index lookup (fails loudly if 0007's text no longer has the places it goes)."""
    sql = importlib.import_module("manet.migrations.versions.0007_filter_planner").search_function()
    return edited(sql, EDITS, "0007", "0010")


def upgrade() -> None:
    # Same signature: CREATE OR REPLACE keeps the grants, and manet_similar calls the new one.
    op.execute(search_function())


def downgrade() -> None:
    op.execute(importlib.import_module("manet.migrations.versions.0007_filter_planner").search_function())

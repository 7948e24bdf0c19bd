"""Category indexes on their own expression, so that their graphs can be denser than the model's.

A category's own HNSW index (revision 0009) now indexes ``subvector(embedding, 1, dim)``, the
same values as the model's index under an expression of its own, and is built denser (m 24,
ef_construction 128 by default, against the model's 16 / 64): recall@7 0.99 then needs fewer
candidates (docs/PERFORMANCE.md). pgvector costs a graph of larger ``m`` higher, so on the model's
expression PostgreSQL would plan a category's search on the model's index instead; on its own
expression the category's index is the only one that can order the scan.

- ``manet_search`` orders by that expression when it walks a category's index (revision 0010's
  text with the expression chosen; taken from there, not copied).
- Category indexes built before this revision index the model's expression, which no search
  uses any more: they are dropped (rebuild them with ``manet index build --model M --by-category
  --categories-only``). Nothing stored is lost: they hold copies of ``descriptors`` rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import importlib

from alembic import op

from manet.migrations.function_text import drop_category_indexes, edited

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: The column the ordering reads: the category index's expression when one is walked.
STORED = r"""    -- A category's own index holds subvector(embedding, 1, dim) (revision 0011).
    stored := CASE WHEN category_index IS NULL THEN 'd.embedding'
                   ELSE format('subvector(d.embedding, 1, %s)', m_dim) END;
    ordering := CASE quantize
"""

#: Revision 0010's manet_search -> this revision's: a new variable, and the ordering over it.
EDITS = {
    "    category_index integer;\n": "    category_index integer;\n    stored    text;\n",
    "    ordering := CASE quantize\n": STORED,
    "format('binary_quantize(d.embedding)::bit(%1$s) <~> binary_quantize($1::vector(%1$s))', m_dim)":
        "format('binary_quantize(%2$s)::bit(%1$s) <~> binary_quantize($1::vector(%1$s))', m_dim, stored)",
    "format('d.embedding::halfvec(%1$s) <#> $1::halfvec(%1$s)', m_dim)":
        "format('%2$s::halfvec(%1$s) <#> $1::halfvec(%1$s)', m_dim, stored)",
    "format('d.embedding::vector(%1$s) <#> $1::vector(%1$s)', m_dim)":
        "format('%2$s::vector(%1$s) <#> $1::vector(%1$s)', m_dim, stored)",
}

#: Whether a category index's definition uses subvector (this revision's expression).
USES_SUBVECTOR = "strpos(pg_get_indexdef(x.indexrelid), 'subvector(') > 0"


def search_function() -> str:
    """This revision's ``CREATE OR REPLACE FUNCTION manet_search``: revision 0010's with the
    category index's expression (fails loudly if 0010's text no longer has the places it goes)."""
    sql = importlib.import_module("manet.migrations.versions.0010_search_category_index").search_function()
    return edited(sql, EDITS, "0010", "0011")


def upgrade() -> None:
    op.execute(drop_category_indexes(f"NOT ({USES_SUBVECTOR})"))
    op.execute(search_function())


def downgrade() -> None:
    op.execute(drop_category_indexes(USES_SUBVECTOR))
    op.execute(importlib.import_module("manet.migrations.versions.0010_search_category_index").search_function())

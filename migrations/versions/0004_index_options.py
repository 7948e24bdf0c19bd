"""Per-model index options (HNSW parameters, quantisation), read by search.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What `manet index build` made for the model, so search (and manet_search) can write
    # the SQL that matches the index: the planner ignores an index whose cast differs.
    op.execute("ALTER TABLE models ADD COLUMN index_options jsonb NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE models DROP COLUMN IF EXISTS index_options")

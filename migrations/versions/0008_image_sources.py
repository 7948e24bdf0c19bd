"""Image sources: which dataset each image came from, so that ``manet ingest --sync`` removes
only what that dataset stored and no longer lists.

- ``images.source``: the dataset kind and the resolved path given to ``manet ingest``
  (``manifest:/data/catalogue.csv``, ``folder:/data/photos``), set by ingest. Rows stored before
  this revision have none (NULL) until a re-ingest of their dataset adopts them; sync never
  removes a row without a source.
- ``images_source_idx``: a sync's rows by source.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE images ADD COLUMN source text")  # nullable, no default: no table rewrite
    op.execute("CREATE INDEX images_source_idx ON images (source)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS images_source_idx")
    op.execute("ALTER TABLE images DROP COLUMN IF EXISTS source")

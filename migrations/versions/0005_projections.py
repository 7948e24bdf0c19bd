"""Projections (PCA-whitening) of whitened models, stored in the database for every worker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Arrays, not a pickled file: a worker on another machine reads the projection with SQL.
    op.execute(
        """
        CREATE TABLE projections (
            model_id integer PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
            source_model_id integer REFERENCES models (id) ON DELETE SET NULL,
            input_dim integer NOT NULL,
            output_dim integer NOT NULL,
            mean real[] NOT NULL,
            components real[] NOT NULL,
            explained_variance real[] NOT NULL,
            fitted_rows integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS projections")

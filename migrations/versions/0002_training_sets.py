"""Training sets: balanced, reproducible samples of catalogue/train images per category.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE training_sets (
            id         serial PRIMARY KEY,
            name       text NOT NULL UNIQUE,
            config     jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE training_images (
            set_id      integer NOT NULL REFERENCES training_sets (id) ON DELETE CASCADE,
            image_id    bigint NOT NULL REFERENCES images (id) ON DELETE CASCADE,
            category_id integer NOT NULL REFERENCES categories (id) ON DELETE CASCADE,
            split       text NOT NULL,
            PRIMARY KEY (set_id, image_id),
            CONSTRAINT training_images_split_check CHECK (split IN ('train', 'val'))
        );
        CREATE INDEX ix_training_images_category_id ON training_images (category_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS training_images")
    op.execute("DROP TABLE IF EXISTS training_sets")

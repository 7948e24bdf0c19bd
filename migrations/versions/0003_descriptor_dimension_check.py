"""Reject descriptors whose dimension differs from their model's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The embedding column is an unconstrained vector (one table for every model), so the
    # per-model dimension is enforced here; a wrong one would break that model's index casts.
    op.execute(
        """
        CREATE FUNCTION manet_check_descriptor_dim() RETURNS trigger
        LANGUAGE plpgsql AS $fn$
        DECLARE
            expected integer;
        BEGIN
            SELECT dim INTO expected FROM models WHERE id = NEW.model_id;
            IF expected IS NOT NULL AND vector_dims(NEW.embedding) <> expected THEN
                RAISE EXCEPTION 'descriptor of image % has % dimensions but model % has %; extract it with that model''s pipeline',
                    NEW.image_id, vector_dims(NEW.embedding), NEW.model_id, expected
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END
        $fn$;
        CREATE TRIGGER descriptors_dim_check BEFORE INSERT OR UPDATE OF embedding, model_id ON descriptors
            FOR EACH ROW EXECUTE FUNCTION manet_check_descriptor_dim();
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS descriptors_dim_check ON descriptors")
    op.execute("DROP FUNCTION IF EXISTS manet_check_descriptor_dim()")

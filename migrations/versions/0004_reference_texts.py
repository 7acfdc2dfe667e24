"""reference texts: every human text known for a content, for evaluation (ArtEmis utterances)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09

ArtEmis has about five utterances per painting; the import kept one, as the curated
explanation. reference_texts keeps them all (with the emotion each was written for),
so evaluation can score against every reference. Append-only, like reviews.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reference_texts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("emotion", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "field IN ('alt_text', 'description', 'explanation')",
            name=op.f("ck_reference_texts_field"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_texts")),
    )
    with op.batch_alter_table("reference_texts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reference_texts_sha256_id"), ["sha256", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reference_texts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reference_texts_sha256_id"))
    op.drop_table("reference_texts")

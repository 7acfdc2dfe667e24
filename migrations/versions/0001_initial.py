"""initial: collections, images, runs, annotations (+ FTS5 index on SQLite)

Revision ID: 0001
Revises:
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# External-content FTS5 index over the annotation texts, kept in step by triggers.
# NOTE for later revisions: a batch migration that recreates `annotations` on
# SQLite drops these triggers; recreate them (same SQL) and rebuild the index
# with INSERT INTO annotations_fts(annotations_fts) VALUES ('rebuild').
FTS_DDL = (
    """
    CREATE VIRTUAL TABLE annotations_fts USING fts5(
        alt_text, description, explanation,
        content='annotations', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER annotations_fts_ai AFTER INSERT ON annotations BEGIN
        INSERT INTO annotations_fts(rowid, alt_text, description, explanation)
        VALUES (new.id, new.alt_text, new.description, new.explanation);
    END
    """,
    """
    CREATE TRIGGER annotations_fts_ad AFTER DELETE ON annotations BEGIN
        INSERT INTO annotations_fts(annotations_fts, rowid, alt_text, description, explanation)
        VALUES ('delete', old.id, old.alt_text, old.description, old.explanation);
    END
    """,
    """
    CREATE TRIGGER annotations_fts_au AFTER UPDATE ON annotations BEGIN
        INSERT INTO annotations_fts(annotations_fts, rowid, alt_text, description, explanation)
        VALUES ('delete', old.id, old.alt_text, old.description, old.explanation);
        INSERT INTO annotations_fts(rowid, alt_text, description, explanation)
        VALUES (new.id, new.alt_text, new.description, new.explanation);
    END
    """,
)

EMOTION_COLUMNS = (
    "amusement",
    "awe",
    "contentment",
    "excitement",
    "anger",
    "disgust",
    "fear",
    "sadness",
    "something_else",
)


def upgrade() -> None:
    op.create_table(
        "collections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_collections")),
        sa.UniqueConstraint("root", name=op.f("uq_collections_root")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("problems", sa.JSON(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('running', 'completed', 'interrupted', 'failed')",
            name=op.f("ck_runs_outcome"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("collection_id", sa.Integer(), nullable=False),
        sa.Column("relpath", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(length=16), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("first_seen_run", sa.Integer(), nullable=True),
        sa.Column("last_seen_run", sa.Integer(), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'annotated', 'failed', 'missing')",
            name=op.f("ck_images_status"),
        ),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name=op.f("fk_images_collection_id_collections"),
        ),
        sa.ForeignKeyConstraint(
            ["first_seen_run"], ["runs.id"], name=op.f("fk_images_first_seen_run_runs")
        ),
        sa.ForeignKeyConstraint(
            ["last_seen_run"], ["runs.id"], name=op.f("fk_images_last_seen_run_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint(
            "collection_id", "relpath", name=op.f("uq_images_collection_id_relpath")
        ),
    )
    op.create_index(op.f("ix_images_sha256"), "images", ["sha256"], unique=False)
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("alt_text", sa.Text(), nullable=False),
        sa.Column("alt_text_truncated", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=False) for name in EMOTION_COLUMNS),
        sa.Column("dominant_emotion", sa.String(length=32), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("model_revision", sa.Text(), nullable=True),
        sa.Column("adapter", sa.String(length=64), nullable=True),
        sa.Column("adapter_name", sa.Text(), nullable=True),
        sa.Column("prompt_version", sa.String(length=32), nullable=False),
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.Column("ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_annotations_image_id_images")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_annotations_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotations")),
    )
    op.create_index(op.f("ix_annotations_sha256_id"), "annotations", ["sha256", "id"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        for statement in FTS_DDL:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("annotations_fts_au", "annotations_fts_ad", "annotations_fts_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS annotations_fts")
    op.drop_index(op.f("ix_annotations_sha256_id"), table_name="annotations")
    op.drop_table("annotations")
    op.drop_index(op.f("ix_images_sha256"), table_name="images")
    op.drop_table("images")
    op.drop_table("runs")
    op.drop_table("collections")

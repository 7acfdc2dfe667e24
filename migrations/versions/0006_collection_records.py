"""collection records: objects, their catalogue data (revisioned) and the images of each

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-16

`artnote import records` brings a collection system's export in: each object (by its
object number) gets append-only revisions of its catalogue data (title, maker, date,
medium, dimensions, credit line, rights, and every other column as JSON). Images are
linked to objects by an image column or a file name pattern; both rules are stored
(record_imports.pattern, object_files) so that images scanned later are linked too.
Only new tables: no existing row changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "record_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("key_column", sa.Text(), nullable=False),
        sa.Column("image_column", sa.Text(), nullable=True),
        sa.Column("pattern", sa.Text(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_record_imports")),
    )
    op.create_table(
        "objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_number", sa.Text(), nullable=False),
        sa.Column("match_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_objects")),
        sa.UniqueConstraint("object_number", name=op.f("uq_objects_object_number")),
    )
    with op.batch_alter_table("objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_objects_match_key"), ["match_key"], unique=False)
    op.create_table(
        "object_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("maker", sa.Text(), nullable=True),
        sa.Column("date", sa.Text(), nullable=True),
        sa.Column("medium", sa.Text(), nullable=True),
        sa.Column("dimensions", sa.Text(), nullable=True),
        sa.Column("credit_line", sa.Text(), nullable=True),
        sa.Column("rights", sa.Text(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["record_imports.id"],
            name=op.f("fk_object_records_import_id_record_imports"),
        ),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f("fk_object_records_object_id_objects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_object_records")),
        sa.UniqueConstraint(
            "object_id", "revision", name=op.f("uq_object_records_object_id_revision")
        ),
    )
    op.create_table(
        "object_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["record_imports.id"],
            name=op.f("fk_object_files_import_id_record_imports"),
        ),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f("fk_object_files_object_id_objects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_object_files")),
        sa.UniqueConstraint("object_id", "name", name=op.f("uq_object_files_object_id_name")),
    )
    op.create_table(
        "object_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("object_id", sa.Integer(), nullable=False),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("linked_by", sa.String(length=16), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "linked_by IN ('column', 'pattern')", name=op.f("ck_object_images_linked_by")
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_object_images_image_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["import_id"],
            ["record_imports.id"],
            name=op.f("fk_object_images_import_id_record_imports"),
        ),
        sa.ForeignKeyConstraint(
            ["object_id"], ["objects.id"], name=op.f("fk_object_images_object_id_objects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_object_images")),
        sa.UniqueConstraint("image_id", name=op.f("uq_object_images_image_id")),
    )
    with op.batch_alter_table("object_images", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_object_images_object_id"), ["object_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("object_images", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_object_images_object_id"))
    op.drop_table("object_images")
    op.drop_table("object_files")
    op.drop_table("object_records")
    with op.batch_alter_table("objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_objects_match_key"))
    op.drop_table("objects")
    op.drop_table("record_imports")

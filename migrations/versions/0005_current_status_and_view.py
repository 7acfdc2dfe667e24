"""current status and emotion per content, and the current_annotations view (Datasette)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

search_texts already held, per content, the text users see now. It gains the review
status (draft | corrected | approved) and the dominant emotion (a correction's over the
model's), kept in step by artnote.catalog.search.refresh in the same transaction as
every annotation and review. The view `current_annotations` joins them to the present
images, so that a read-only tool (`datasette`, any SQL client) can browse, facet and
search the catalog without artnote's Python.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMOTIONS = (  # ArtEmis's nine, in its order (ties go to the first)
    "amusement", "awe", "contentment", "excitement",
    "anger", "disgust", "fear", "sadness", "something else",
)  # fmt: skip

VIEW = """
    CREATE VIEW current_annotations AS
    SELECT i.id AS image_id, c.root AS folder, i.relpath AS path, i.width, i.height,
           s.status, s.dominant_emotion, s.alt_text, s.description, s.explanation,
           i.sha256, s.id AS text_id
    FROM images AS i
    JOIN collections AS c ON c.id = i.collection_id
    JOIN search_texts AS s ON s.sha256 = i.sha256
    WHERE i.status != 'missing'
"""

# The review status from the reviews alone (as artnote.catalog.reviews.review_states):
# approved once the whole annotation was approved and nothing was corrected since.
STATUS = """
    CASE
      WHEN NOT EXISTS (SELECT 1 FROM reviews AS r WHERE r.sha256 = search_texts.sha256)
        THEN 'draft'
      WHEN EXISTS (SELECT 1 FROM reviews AS r WHERE r.sha256 = search_texts.sha256
                   AND r.kind = 'approval' AND r.field IS NULL)
       AND NOT EXISTS (
            SELECT 1 FROM reviews AS r WHERE r.sha256 = search_texts.sha256
            AND r.kind = 'correction'
            AND r.id > (SELECT max(r2.id) FROM reviews AS r2
                        WHERE r2.sha256 = search_texts.sha256
                        AND r2.kind = 'approval' AND r2.field IS NULL))
        THEN 'approved'
      ELSE 'corrected'
    END
"""


def upgrade() -> None:
    with op.batch_alter_table("search_texts") as batch_op:  # plain ADD COLUMNs on SQLite
        batch_op.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="draft")
        )
        batch_op.add_column(sa.Column("dominant_emotion", sa.String(32), nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text(f"UPDATE search_texts SET status = {STATUS}"))
    conn.execute(
        sa.text(
            """UPDATE search_texts SET dominant_emotion = (
                 SELECT a.dominant_emotion FROM annotations AS a
                 WHERE a.sha256 = search_texts.sha256 ORDER BY a.id DESC LIMIT 1)"""
        )
    )
    corrected = conn.execute(
        sa.text(
            """SELECT r.sha256, r.value FROM reviews AS r
               WHERE r.kind = 'correction' AND r.field = 'emotion'
               ORDER BY r.id"""  # the newest correction of a content wins
        )
    ).all()
    newest = {sha: value for sha, value in corrected}
    for sha, value in newest.items():
        dist = json.loads(value)
        top = max(EMOTIONS, key=lambda e: float(dist.get(e, 0.0)))
        conn.execute(
            sa.text("UPDATE search_texts SET dominant_emotion = :e WHERE sha256 = :s"),
            {"e": top, "s": sha},
        )
    op.execute(VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW current_annotations")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch copy of search_texts would drop the
    # FTS5 triggers that 0003 put on it.
    op.execute("ALTER TABLE search_texts DROP COLUMN dominant_emotion")
    op.execute("ALTER TABLE search_texts DROP COLUMN status")

"""search current values: search_texts (newest correction over model output) + its FTS5 index

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Before this revision the FTS5 index covered annotations only, so `artnote search`
never found a curator's words. search_texts holds, per content, what a user sees
now; the index follows it by triggers (SQLite), and artnote keeps search_texts
in step in the same transaction as each annotation or review.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FIELDS = ("alt_text", "description", "explanation")

# External-content FTS5 index over search_texts, kept in step by triggers.
# NOTE for later revisions: a batch migration that recreates `search_texts` on
# SQLite drops these triggers; recreate them (same SQL) and rebuild the index
# with INSERT INTO search_fts(search_fts) VALUES ('rebuild').
FTS_DDL = (
    """
    CREATE VIRTUAL TABLE search_fts USING fts5(
        alt_text, description, explanation,
        content='search_texts', content_rowid='id',
        tokenize='unicode61 remove_diacritics 2'
    )
    """,
    """
    CREATE TRIGGER search_fts_ai AFTER INSERT ON search_texts BEGIN
        INSERT INTO search_fts(rowid, alt_text, description, explanation)
        VALUES (new.id, new.alt_text, new.description, new.explanation);
    END
    """,
    """
    CREATE TRIGGER search_fts_ad AFTER DELETE ON search_texts BEGIN
        INSERT INTO search_fts(search_fts, rowid, alt_text, description, explanation)
        VALUES ('delete', old.id, old.alt_text, old.description, old.explanation);
    END
    """,
    """
    CREATE TRIGGER search_fts_au AFTER UPDATE ON search_texts BEGIN
        INSERT INTO search_fts(search_fts, rowid, alt_text, description, explanation)
        VALUES ('delete', old.id, old.alt_text, old.description, old.explanation);
        INSERT INTO search_fts(rowid, alt_text, description, explanation)
        VALUES (new.id, new.alt_text, new.description, new.explanation);
    END
    """,
)

OLD_FTS_TRIGGERS = ("annotations_fts_au", "annotations_fts_ad", "annotations_fts_ai")


def _current(name: str) -> str:
    """SQL for a field's current value: the newest correction, else the newest annotation's."""
    return f"""
        COALESCE(
            (SELECT r.value FROM reviews AS r
             WHERE r.sha256 = s.sha256 AND r.kind = 'correction' AND r.field = '{name}'
             ORDER BY r.id DESC LIMIT 1),
            (SELECT a.{name} FROM annotations AS a
             WHERE a.sha256 = s.sha256 ORDER BY a.id DESC LIMIT 1)
        )"""


def upgrade() -> None:
    op.create_table(
        "search_texts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("alt_text", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("explanation", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_texts")),
        sa.UniqueConstraint("sha256", name=op.f("uq_search_texts_sha256")),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for trigger in OLD_FTS_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS annotations_fts")
        for statement in FTS_DDL:  # before the rows: the insert trigger indexes them
            op.execute(statement)
    op.execute(
        f"""
        INSERT INTO search_texts (sha256, {", ".join(FIELDS)})
        SELECT s.sha256, {", ".join(_current(f) for f in FIELDS)}
        FROM (SELECT sha256 FROM annotations
              UNION SELECT sha256 FROM reviews WHERE kind = 'correction') AS s
        ORDER BY s.sha256
        """
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for trigger in ("search_fts_au", "search_fts_ad", "search_fts_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS search_fts")
    op.drop_table("search_texts")
    if sqlite:  # revision 0002's index over annotations, rebuilt from them
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location(
            "artnote_rev0001", Path(__file__).with_name("0001_initial.py")
        )
        assert spec is not None and spec.loader is not None
        initial = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(initial)
        for statement in initial.FTS_DDL:
            op.execute(statement)
        op.execute("INSERT INTO annotations_fts(annotations_fts) VALUES ('rebuild')")

"""Declarative models of the catalog.

The schema changes only through Alembic revisions in the top-level `migrations`
package; `alembic check` (and tests/test_catalog.py) compares these models with
a database upgraded to head, so the two cannot drift apart unnoticed.

Annotations belong to image *content* (sha256), not to a path: byte-identical
duplicates share one annotation and a moved or renamed file keeps its own. The
current annotation of a content is the newest row (max id) with its sha256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: batch migrations on SQLite recreate tables and
# can only drop or alter a constraint they can name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

IMAGE_STATUSES = ("pending", "annotated", "failed", "missing")
RUN_OUTCOMES = ("running", "completed", "interrupted", "failed")
REVIEW_KINDS = ("correction", "approval")
REVIEW_FIELDS = ("alt_text", "description", "emotion", "explanation")
REFERENCE_FIELDS = ("alt_text", "description", "explanation")
LINK_KINDS = ("column", "pattern")  # how an image was linked to its object

# Tables that exist only on SQLite (FTS5 virtual table and its shadow tables);
# they are created by migrations and never by the models. Revisions before 0003
# indexed annotations (model output only) in annotations_fts.
FTS_TABLE = "search_fts"
OLD_FTS_TABLES = ("annotations_fts",)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite stores no offset, so values come back naive; this type stores UTC
    and hands back aware datetimes, so callers never compare naive with aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(Text, unique=True)  # absolute path of the scanned folder
    created_at: Mapped[datetime]


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(f"outcome IN {RUN_OUTCOMES!r}", name="outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))
    settings: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(Text)
    adapter: Mapped[str | None] = mapped_column(Text)
    counts: Mapped[dict[str, Any] | None]
    # Files and folders discovery could not read (path, reason): they have no image row.
    problems: Mapped[list[Any] | None]
    # Who runs it: a 'running' run whose process is gone was interrupted.
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("collection_id", "relpath"),
        CheckConstraint(f"status IN {IMAGE_STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id"))
    relpath: Mapped[str] = mapped_column(Text)  # posix style, relative to the collection root
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)  # None until hashed
    width: Mapped[int | None] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    mode: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    first_seen_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    last_seen_run: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    first_seen_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class Annotation(Base):
    __tablename__ = "annotations"
    # (sha256, id) answers "current annotation of this content" from the index alone.
    __table_args__ = (Index(None, "sha256", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))  # the file fed in
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    alt_text: Mapped[str] = mapped_column(Text)
    alt_text_truncated: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str] = mapped_column(Text)
    amusement: Mapped[float] = mapped_column(Float)
    awe: Mapped[float] = mapped_column(Float)
    contentment: Mapped[float] = mapped_column(Float)
    excitement: Mapped[float] = mapped_column(Float)
    anger: Mapped[float] = mapped_column(Float)
    disgust: Mapped[float] = mapped_column(Float)
    fear: Mapped[float] = mapped_column(Float)
    sadness: Mapped[float] = mapped_column(Float)
    something_else: Mapped[float] = mapped_column(Float)
    dominant_emotion: Mapped[str] = mapped_column(String(32))
    explanation: Mapped[str] = mapped_column(Text)
    provenance: Mapped[dict[str, Any]]
    model: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str | None] = mapped_column(Text)
    adapter: Mapped[str | None] = mapped_column(String(64))  # adapter content hash
    adapter_name: Mapped[str | None] = mapped_column(Text)
    prompt_version: Mapped[str] = mapped_column(String(32))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime]


class Review(Base):
    """A curator's act on a content, append-only: nothing is overwritten or lost.

    kind 'correction': `field` (alt_text | description | emotion | explanation)
    takes `value` (for emotion, a JSON distribution over the nine labels).
    kind 'approval' without a field: the content's current values are approved as they
    stand, except an explanation written for another dominant emotion than the current
    one (artnote.catalog.reviews.stale_explanation); with a field: that field only.
    A content's review status is the kind of its newest review (a field approval leaves
    it as it was, and makes a draft 'corrected').
    """

    __tablename__ = "reviews"
    __table_args__ = (
        Index(None, "sha256", "id"),
        CheckConstraint(f"kind IN {REVIEW_KINDS!r}", name="kind"),
        CheckConstraint(f"field IS NULL OR field IN {REVIEW_FIELDS!r}", name="field"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))  # as the curator named it
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))  # seen then
    kind: Mapped[str] = mapped_column(String(16))
    field: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[str | None] = mapped_column(Text)
    by: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))  # cli | csv | web | artemis | label-studio
    created_at: Mapped[datetime]


class SearchText(Base):
    """What `artnote search` finds: per content, the current value of each text field
    (the newest correction, else the current annotation's text).

    Kept in step in the same transaction as the annotation or correction that changes
    it (artnote.catalog.search_index); on SQLite the FTS5 index `search_fts` follows it
    by triggers. A content corrected but never annotated (ArtEmis) has a row too.
    """

    __tablename__ = "search_texts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the FTS5 rowid
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    alt_text: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    explanation: Mapped[str | None] = mapped_column(Text)
    # Since revision 0005, for browsing without artnote (the current_annotations view):
    status: Mapped[str] = mapped_column(String(16), server_default="draft")  # as reviews say
    dominant_emotion: Mapped[str | None] = mapped_column(String(32))  # a correction's first


class ReferenceText(Base):
    """A reference text for evaluation, append-only: every human text known for a content
    (ArtEmis: each utterance of a painting, with the emotion its annotator chose), so that
    BLEU and the like can score against all of them, as ArtEmis reports.

    The curated value (a review) stays the training target; these are never laid over it.
    """

    __tablename__ = "reference_texts"
    __table_args__ = (
        Index(None, "sha256", "id"),
        CheckConstraint(f"field IN {REFERENCE_FIELDS!r}", name="field"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    emotion: Mapped[str | None] = mapped_column(String(32))  # the label it was written for
    source: Mapped[str] = mapped_column(String(16))  # artemis
    created_at: Mapped[datetime]


class Adapter(Base):
    """A fine-tuned adapter that `scan --adapter NAME|latest` can use."""

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)  # folder with adapter.safetensors
    content_hash: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(Text)
    family: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None]
    training_samples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class RecordImport(Base):
    """One `artnote import records`: the file, and the rules it linked images by, kept so
    that images scanned later are linked by the same rules (Catalog.link_images)."""

    __tablename__ = "record_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)  # the file's name
    key_column: Mapped[str] = mapped_column(Text)
    image_column: Mapped[str | None] = mapped_column(Text)
    pattern: Mapped[str | None] = mapped_column(Text)  # --match-filename, as given
    counts: Mapped[dict[str, Any] | None]  # new, updated, unchanged, linked
    created_at: Mapped[datetime]


class CollectionObject(Base):
    """A museum object, known by its object (accession) number; its catalogue data are the
    revisions in object_records."""

    __tablename__ = "objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_number: Mapped[str] = mapped_column(Text, unique=True)  # as the museum writes it
    # The number as file names carry it: casefolded, each run of . space - _ / one "-"
    # (artnote.catalog.linking.match_key); several objects may share one (then ambiguous).
    match_key: Mapped[str] = mapped_column(Text, index=True)
    created_at: Mapped[datetime]


class ObjectRecord(Base):
    """An object's catalogue data, append-only: an import that changes anything adds a
    revision, so nothing is lost. The current record is the highest revision."""

    __tablename__ = "object_records"
    __table_args__ = (UniqueConstraint("object_id", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("objects.id"))
    revision: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per object
    title: Mapped[str | None] = mapped_column(Text)
    maker: Mapped[str | None] = mapped_column(Text)
    date: Mapped[str | None] = mapped_column(Text)
    medium: Mapped[str | None] = mapped_column(Text)
    dimensions: Mapped[str | None] = mapped_column(Text)
    credit_line: Mapped[str | None] = mapped_column(Text)
    rights: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any]]  # every other column of the export, as given
    source: Mapped[str] = mapped_column(Text)  # the file's name
    import_id: Mapped[int | None] = mapped_column(ForeignKey("record_imports.id"))
    created_at: Mapped[datetime]


class ObjectFile(Base):
    """A file name (or relative path) an export's image column lists for an object: the
    rule by which images, scanned now or later, are linked to it."""

    __tablename__ = "object_files"
    __table_args__ = (UniqueConstraint("object_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("objects.id"))
    name: Mapped[str] = mapped_column(Text)  # casefolded, "/"-separated
    position: Mapped[int] = mapped_column(Integer)  # 0: listed first, the primary image
    import_id: Mapped[int | None] = mapped_column(ForeignKey("record_imports.id"))


class ObjectImage(Base):
    """Which object an image shows: at most one per image, many images per object, one of
    them primary (the one the image column lists first, else the first in path order)."""

    __tablename__ = "object_images"
    __table_args__ = (CheckConstraint(f"linked_by IN {LINK_KINDS!r}", name="linked_by"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    object_id: Mapped[int] = mapped_column(ForeignKey("objects.id"), index=True)
    is_primary: Mapped[bool] = mapped_column(Boolean)
    linked_by: Mapped[str] = mapped_column(String(16))  # column | pattern
    import_id: Mapped[int | None] = mapped_column(ForeignKey("record_imports.id"))
    created_at: Mapped[datetime]


def is_fts_table(name: str) -> bool:
    """True for the FTS5 index and its shadow tables (SQLite only, made by migrations)."""
    return any(name == t or name.startswith(t + "_") for t in (FTS_TABLE, *OLD_FTS_TABLES))

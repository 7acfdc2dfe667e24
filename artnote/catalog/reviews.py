"""Curators' reviews: corrections and approvals on top of the model's annotations.

Reviews are append-only rows (artnote.catalog.models.Review). What a user sees
for a content is its current annotation with, per field, the newest correction
laid over it; its status is 'draft' without reviews, else the kind of its newest
review ('corrected' or 'approved'). A later scan adds annotations but never
touches reviews, so a correction outlives any number of re-annotations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select

from artnote.catalog import search
from artnote.catalog.models import Adapter, Review, utcnow
from artnote.catalog.queries import (
    annotations,
    chunks,
    collections,
    current_annotation_id,
    image_path,
    images,
)
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS

reviews = cast(Table, Review.__table__)
adapters = cast(Table, Adapter.__table__)

TEXT_FIELDS = ("alt_text", "description", "explanation")


@dataclass
class ReviewState:
    """The net effect of a content's reviews."""

    corrections: dict[str, str] = field(default_factory=dict)  # field -> newest value
    status: str = "draft"  # draft | corrected | approved
    by: str | None = None  # who made the newest review (museums show who approved a text)
    at: datetime | None = None  # and when


def emotion_value(distribution: dict[str, float]) -> str:
    """Store a distribution over the nine labels (normalised, every label present)."""
    total = sum(max(0.0, float(distribution.get(e, 0.0))) for e in EMOTIONS)
    if total <= 0:
        raise ValueError("an emotion distribution needs some weight")
    return json.dumps({e: max(0.0, float(distribution.get(e, 0.0))) / total for e in EMOTIONS})


def add_reviews(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert review rows (sha256, image_id, annotation_id, kind, field, value, by, source)."""
    if not rows:
        return 0
    now = utcnow()
    conn.execute(insert(reviews), [{**r, "created_at": now} for r in rows])
    # Same transaction: `artnote search` finds a correction as soon as it exists.
    search.refresh(conn, {r["sha256"] for r in rows if r["kind"] == "correction"})
    return len(rows)


def review_states(conn: Connection, sha256s: Iterable[str] | None = None) -> dict[str, ReviewState]:
    """Net review state per content (all contents with reviews when sha256s is None)."""
    stmt = select(
        reviews.c.sha256,
        reviews.c.kind,
        reviews.c.field,
        reviews.c.value,
        reviews.c.by,
        reviews.c.created_at,
    )
    batches = (
        [stmt.order_by(reviews.c.id)]
        if sha256s is None
        else [
            stmt.where(reviews.c.sha256.in_(c)).order_by(reviews.c.id)
            for c in chunks(sorted(set(sha256s)))
        ]
    )
    out: dict[str, ReviewState] = {}
    for batch in batches:
        for sha, kind, name, value, by, at in conn.execute(batch):
            state = out.setdefault(sha, ReviewState())
            state.by, state.at = by, at
            if kind == "correction":
                state.corrections[name] = value
                state.status = "corrected"
            else:
                state.status = "approved"
    return out


def overlay(row: dict[str, Any], state: ReviewState | None) -> dict[str, Any]:
    """Lay a content's corrections over its annotation row (export keys), set its status."""
    if state is None:
        row["status"] = "draft"
        row["reviewed_by"] = row["reviewed_at"] = None
        return row
    for name in TEXT_FIELDS:
        if name in state.corrections:
            row[name] = state.corrections[name]
    if "emotion" in state.corrections:
        dist = json.loads(state.corrections["emotion"])
        for label, column in zip(EMOTIONS, EMOTION_COLUMNS, strict=True):
            row[column] = float(dist[label])
        row["dominant_emotion"] = max(EMOTIONS, key=lambda e: dist[e])
    row["status"] = state.status
    row["reviewed_by"] = state.by
    row["reviewed_at"] = state.at.isoformat(timespec="seconds") if state.at else None
    return row


def review_counts(conn: Connection) -> dict[str, int]:
    """Present images whose content is corrected / approved; registered adapters."""
    states = review_states(conn)
    counts = {"corrected": 0, "approved": 0}
    if states:
        stmt = (
            select(images.c.sha256, func.count())
            .where(images.c.status != "missing", images.c.sha256.is_not(None))
            .group_by(images.c.sha256)
        )
        for sha, n in conn.execute(stmt):
            state = states.get(sha)
            if state is not None:
                counts[state.status] += int(n)
    counts["adapters"] = int(conn.scalar(select(func.count()).select_from(adapters)) or 0)
    return counts


def curated(conn: Connection) -> list[dict[str, Any]]:
    """What curators settled, per reviewed content with a present file.

    Approved: every field's current value. Corrected: the corrected fields only.
    Emotions come as a distribution. Contents never annotated still count (ArtEmis).
    """
    states = review_states(conn)
    if not states:
        return []
    out = []
    for chunk in chunks(sorted(states)):
        current = current_annotation_id()
        stmt = (
            select(
                images.c.sha256,
                collections.c.root,
                images.c.relpath,
                annotations.c.dominant_emotion,
                *(annotations.c[c] for c in (*TEXT_FIELDS, *EMOTION_COLUMNS)),
            )
            .join(collections, collections.c.id == images.c.collection_id)
            .outerjoin(annotations, annotations.c.id == current)
            .where(images.c.sha256.in_(chunk), images.c.status != "missing")
            .order_by(images.c.sha256, images.c.id)
        )
        seen: set[str] = set()
        for row in conn.execute(stmt).mappings():
            sha = row["sha256"]
            if sha in seen:
                continue
            seen.add(sha)
            state = states[sha]
            values = overlay(dict(row), state)
            item: dict[str, Any] = {
                "sha256": sha,
                "path": image_path(row["root"], row["relpath"]),
                "dominant_emotion": values.get("dominant_emotion"),  # current, for prompts
            }
            chosen = (
                (*TEXT_FIELDS, "emotion")
                if state.status == "approved"
                else tuple(state.corrections)
            )
            for name in chosen:
                if name == "emotion":
                    if values.get("awe") is not None:
                        item["emotions"] = {
                            e: float(values[c])
                            for e, c in zip(EMOTIONS, EMOTION_COLUMNS, strict=True)
                        }
                elif values.get(name):
                    item[name] = values[name]
            out.append(item)
    return out


def record_reviews(
    conn: Connection,
    items: Sequence[tuple[int, str, str | None, str | None]],
    *,
    by: str | None,
    source: str,
) -> int:
    """Append reviews given as (image_id, kind, field, value); each lands on the image's content
    and remembers the annotation that was current."""
    ids = sorted({i for i, *_ in items})
    facts: dict[int, tuple[str, int | None]] = {}
    for chunk in chunks(ids):
        current = current_annotation_id()
        stmt = select(images.c.id, images.c.sha256, current).where(images.c.id.in_(chunk))
        facts.update((i, (sha, ann)) for i, sha, ann in conn.execute(stmt))
    rows = []
    for image_id, kind, name, value in items:
        sha, annotation_id = facts.get(image_id, (None, None))
        if sha is None:
            raise ValueError(f"image {image_id} is not in the catalog or was never hashed")
        rows.append(
            {
                "sha256": sha,
                "image_id": image_id,
                "annotation_id": annotation_id,
                "kind": kind,
                "field": name,
                "value": value,
                "by": by,
                "source": source,
            }
        )
    return add_reviews(conn, rows)


def register_adapter(conn: Connection, **values: Any) -> int:
    stmt = insert(adapters).values(**values, created_at=utcnow()).returning(adapters.c.id)
    return int(conn.execute(stmt).scalar_one())


def list_adapters(conn: Connection) -> list[dict[str, Any]]:
    stmt = select(adapters).order_by(adapters.c.id)
    return [dict(r) for r in conn.execute(stmt).mappings()]

"""Curators' reviews: corrections and approvals on top of the model's annotations.

Reviews are append-only rows (artnote.catalog.models.Review). What a user sees
for a content is its current annotation with, per field, the newest correction
laid over it; its status is 'draft' without reviews, else the kind of its newest
review ('corrected' or 'approved'). A later scan adds annotations but never
touches reviews, so a correction outlives any number of re-annotations.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select

from artnote.catalog import search
from artnote.catalog.models import Adapter, ReferenceText, Review, utcnow
from artnote.catalog.queries import (
    annotations,
    chunks,
    collections,
    current_annotation_id,
    image_path,
    images,
    runs,
)
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.errors import ConflictError

reviews = cast(Table, Review.__table__)
adapters = cast(Table, Adapter.__table__)
reference_texts = cast(Table, ReferenceText.__table__)

TEXT_FIELDS = ("alt_text", "description", "explanation")
REFERENCE_BATCH = 5000  # reference texts per insert: ArtEmis has 450,000


@dataclass
class ExplanationBasis:
    """The dominant emotion a person's explanation (corrected, or approved as a field) was
    written for. `annotation_id` is set when a person approved the model's own explanation:
    that holds only while the annotation stays current."""

    emotion: str | None
    annotation_id: int | None
    at: datetime  # reviews written with it (one command, one CSV row) share this time


@dataclass
class ReviewState:
    """The net effect of a content's reviews."""

    corrections: dict[str, str] = field(default_factory=dict)  # field -> newest value
    status: str = "draft"  # draft | corrected | approved
    by: str | None = None  # who made the newest review (museums show who approved a text)
    at: datetime | None = None  # and when
    approved_fields: set[str] = field(default_factory=set)  # approved one by one
    explanation_basis: ExplanationBasis | None = None  # None: the model's explanation


@dataclass(frozen=True)
class StaleExplanation:
    """An explanation written for another dominant emotion than the current one."""

    written_for: str
    emotion: str  # the dominant emotion now

    def __str__(self) -> str:
        return (
            f"explanation not approved: written for {self.written_for}, emotion is now "
            f"{self.emotion}; correct it or approve it explicitly"
        )


def dominant(value: str) -> str:
    """The dominant label of a stored emotion correction (ties: ArtEmis's order first)."""
    dist = json.loads(value)
    return max(EMOTIONS, key=lambda e: dist[e])


def stale_explanation(
    state: ReviewState | None, annotation_id: int | None, annotation_dominant: str | None
) -> StaleExplanation | None:
    """Whether the content's current explanation was written for another dominant emotion,
    given its reviews and its current annotation (id, dominant emotion; None if none)."""
    if state is None:
        return None  # the model's explanation, for the model's own emotion
    corrected = state.corrections.get("emotion")
    now = dominant(corrected) if corrected else annotation_dominant
    basis = state.explanation_basis
    if basis is None or basis.annotation_id not in (None, annotation_id):
        written = annotation_dominant  # the current annotation's own explanation
    else:
        written = basis.emotion
    if written is None or now is None or written == now:
        return None
    return StaleExplanation(written, now)


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
    # Same transaction: `artnote search` finds a correction as soon as it exists, and the
    # current_annotations view shows the new status.
    search.refresh(conn, {r["sha256"] for r in rows})
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
        reviews.c.annotation_id,
        annotations.c.dominant_emotion,  # of the annotation the reviewer saw
    ).outerjoin(annotations, annotations.c.id == reviews.c.annotation_id)
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
        for sha, kind, name, value, by, at, annotation_id, shown in conn.execute(batch):
            state = out.setdefault(sha, ReviewState())
            state.by, state.at = by, at
            if kind == "correction":
                state.corrections[name] = value
                state.status = "corrected"
            elif name is None:
                state.status = "approved"
            else:
                state.approved_fields.add(name)
                if state.status == "draft":
                    state.status = "corrected"
            _follow_explanation(state, kind, name, at, annotation_id, shown)
    return out


def _follow_explanation(
    state: ReviewState,
    kind: str,
    name: str | None,
    at: datetime,
    annotation_id: int | None,
    shown: str | None,
) -> None:
    """Note which dominant emotion a person's explanation was written for (`shown`: the
    dominant emotion of the annotation the reviewer saw)."""
    corrected = state.corrections.get("emotion")
    now = dominant(corrected) if corrected else shown
    basis = state.explanation_basis
    if name == "explanation":
        own = kind == "approval" and "explanation" not in state.corrections
        state.explanation_basis = ExplanationBasis(now, annotation_id if own else None, at)
    elif name == "emotion" and kind == "correction" and basis is not None and basis.at == at:
        # Corrected together (`correct --emotion --explanation`, one CSV row): the new
        # explanation goes with the new emotion, whichever of the two came first.
        basis.emotion = now


def overlay(row: dict[str, Any], state: ReviewState | None) -> dict[str, Any]:
    """Lay a content's corrections over its annotation row (export keys), set its status."""
    if state is None:
        row["status"] = "draft"
        row["reviewed_by"] = row["reviewed_at"] = None
        row["corrected_fields"] = []
        return row
    for name in TEXT_FIELDS:
        if name in state.corrections:
            row[name] = state.corrections[name]
    if "emotion" in state.corrections:
        dist = json.loads(state.corrections["emotion"])
        for label, column in zip(EMOTIONS, EMOTION_COLUMNS, strict=True):
            row[column] = float(dist[label])
        row["dominant_emotion"] = dominant(state.corrections["emotion"])
    row["status"] = state.status
    row["corrected_fields"] = sorted(state.corrections)  # review fields a person rewrote
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

    Approved: every field's current value. Corrected: the corrected fields only (and
    those approved one by one). Emotions come as a distribution. An explanation written
    for another dominant emotion than the current one is never returned (see
    stale_explanation). Contents never annotated still count (ArtEmis).

    Each row: sha256, path, dominant_emotion (current), the settled fields among
    alt_text, description, explanation, emotions ({label: probability}), and references
    ({field: [curated value first, then every reference text, no duplicates]}; {} when
    the content has no reference texts), and model: the model of the run whose
    annotation was curated (None when the content was never annotated).
    """
    states = review_states(conn)
    if not states:
        return []
    out = []
    for chunk in chunks(sorted(states)):
        current = current_annotation_id()
        stmt = (
            select(
                images.c.id.label("image_id"),
                images.c.sha256,
                collections.c.root,
                images.c.relpath,
                annotations.c.id.label("annotation_id"),
                annotations.c.dominant_emotion,
                *(annotations.c[c] for c in (*TEXT_FIELDS, *EMOTION_COLUMNS)),
                runs.c.model,
            )
            .join(collections, collections.c.id == images.c.collection_id)
            .outerjoin(annotations, annotations.c.id == current)
            .outerjoin(runs, runs.c.id == annotations.c.run_id)
            .where(images.c.sha256.in_(chunk), images.c.status != "missing")
            .order_by(images.c.sha256, images.c.id)
        )
        seen: set[str] = set()
        texts = reference_texts_of(conn, chunk)
        for row in conn.execute(stmt).mappings():
            sha = row["sha256"]
            if sha in seen:
                continue
            seen.add(sha)
            state = states[sha]
            values = overlay(dict(row), state)
            item: dict[str, Any] = {
                "sha256": sha,
                "image_id": row["image_id"],  # the content's first present file
                "path": image_path(row["root"], row["relpath"]),
                "dominant_emotion": values.get("dominant_emotion"),  # current, for prompts
                "model": row["model"],  # whose annotation was curated (None: never annotated)
            }
            chosen = (
                {*TEXT_FIELDS, "emotion"}
                if state.status == "approved"
                else {*state.corrections, *state.approved_fields}
            )
            if stale_explanation(state, row["annotation_id"], row["dominant_emotion"]):
                chosen.discard("explanation")
            for name in (*TEXT_FIELDS, "emotion"):
                if name not in chosen:
                    continue
                if name == "emotion":
                    if values.get("awe") is not None:
                        item["emotions"] = {
                            e: float(values[c])
                            for e, c in zip(EMOTIONS, EMOTION_COLUMNS, strict=True)
                        }
                elif values.get(name):
                    item[name] = values[name]
            item["references"] = {
                name: list(dict.fromkeys([item[name], *found] if item.get(name) else found))
                for name, found in texts.get(sha, {}).items()
            }
            out.append(item)
    return out


def stale_explanations(conn: Connection, sha256s: Iterable[str]) -> dict[str, StaleExplanation]:
    """The contents among these whose current explanation is stale (see stale_explanation)."""
    states = review_states(conn, sha256s)
    out: dict[str, StaleExplanation] = {}
    for chunk in chunks(sorted(states)):
        newest = (
            select(func.max(annotations.c.id))
            .where(annotations.c.sha256.in_(chunk))
            .group_by(annotations.c.sha256)
        )
        current = {
            sha: (i, d)
            for sha, i, d in conn.execute(
                select(
                    annotations.c.sha256, annotations.c.id, annotations.c.dominant_emotion
                ).where(annotations.c.id.in_(newest))
            )
        }
        for sha in chunk:
            found = stale_explanation(states[sha], *current.get(sha, (None, None)))
            if found is not None:
                out[sha] = found
    return out


def reference_texts_of(conn: Connection, sha256s: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """sha256 -> field -> reference texts, oldest first (one chunk of contents)."""
    stmt = (
        select(reference_texts.c.sha256, reference_texts.c.field, reference_texts.c.text)
        .where(reference_texts.c.sha256.in_(sha256s))
        .order_by(reference_texts.c.id)
    )
    out: dict[str, dict[str, list[str]]] = {}
    for sha, name, text in conn.execute(stmt):
        out.setdefault(sha, {}).setdefault(name, []).append(text)
    return out


def add_reference_texts(
    conn: Connection, items: Iterable[tuple[str, str, str, str | None]], *, source: str
) -> int:
    """Append (sha256, field, text, emotion) reference texts that the content does not have
    yet (same field and text); return how many. `items` is consumed a batch at a time."""
    added = 0
    it = iter(items)
    while batch := list(itertools.islice(it, REFERENCE_BATCH)):
        shas = sorted({sha for sha, *_ in batch})
        known = {
            (sha, name, text)
            for chunk in chunks(shas)
            for sha, name, text in conn.execute(
                select(
                    reference_texts.c.sha256, reference_texts.c.field, reference_texts.c.text
                ).where(reference_texts.c.sha256.in_(chunk))
            )
        }
        now = utcnow()
        rows = []
        for sha, name, text, emotion in batch:
            if (sha, name, text) in known or not text:
                continue
            known.add((sha, name, text))
            rows.append(
                {
                    "sha256": sha,
                    "field": name,
                    "text": text,
                    "emotion": emotion,
                    "source": source,
                    "created_at": now,
                }
            )
        if rows:
            conn.execute(insert(reference_texts), rows)
        added += len(rows)
    return added


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


def revisions(conn: Connection, image_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """image id -> (newest review id of its content, current annotation id), 0 for none:
    the revision a curator's edit is based on."""
    newest = (
        select(func.max(reviews.c.id))
        .where(reviews.c.sha256 == images.c.sha256)
        .correlate(images)
        .scalar_subquery()
    )
    out: dict[int, tuple[int, int]] = {}
    for chunk in chunks(sorted(set(image_ids))):
        stmt = select(images.c.id, newest, current_annotation_id()).where(images.c.id.in_(chunk))
        out.update((i, (r or 0, a or 0)) for i, r, a in conn.execute(stmt))
    return out


def check_revisions(conn: Connection, expected: Mapping[int, tuple[int, int]]) -> None:
    """ConflictError unless every image is still at the revision expected of it. Run it in
    the write transaction that then appends the reviews (after the write lock is taken),
    so that no other writer, in this process or another, can come in between."""
    now = revisions(conn, expected)
    changed = sorted(i for i, seen in expected.items() if now.get(i) != tuple(seen))
    if changed:
        raise ConflictError(
            f"image {', '.join(map(str, changed))} changed since the revision this edit "
            "was based on; nothing was saved"
        )


def register_adapter(conn: Connection, **values: Any) -> int:
    stmt = insert(adapters).values(**values, created_at=utcnow()).returning(adapters.c.id)
    return int(conn.execute(stmt).scalar_one())


def list_adapters(conn: Connection) -> list[dict[str, Any]]:
    stmt = select(adapters).order_by(adapters.c.id)
    return [dict(r) for r in conn.execute(stmt).mappings()]

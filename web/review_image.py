"""The review page's reads of one image: its file, its current values, its history and the
revision a form was built on (the grid's queries are in web.review_queries)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from artnote.catalog.objects import records_for
from artnote.catalog.queries import (
    annotations,
    collections,
    current_annotation_id,
    image_path,
    images,
)
from artnote.catalog.reviews import dominant, overlay, review_states, reviews
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.records import CollectionRecord
from web.review_queries import MAX_ID


@dataclass
class ImageDetail:
    image_id: int
    path: str
    sha256: str | None
    file_status: str  # pending | annotated | failed | missing
    error: str | None
    size: int
    mtime_ns: int
    width: int | None
    height: int | None
    values: dict[str, Any] | None  # current values (corrections laid over), None: no annotation
    base: str  # the revision the page shows: newest review id and annotation id
    history: list[dict[str, Any]]  # reviews of the content, oldest first
    drafts: list[dict[str, Any]]  # the model's annotations of the content, oldest first
    record: CollectionRecord | None = None  # the museum's record of the object it shows


def image_file(conn: Connection, image_id: int) -> dict[str, Any] | None:
    """Where an image's file is and what the catalog recorded of it (for its thumbnail)."""
    if not 0 < image_id <= MAX_ID:
        return None
    stmt = (
        select(
            collections.c.root,
            images.c.relpath,
            images.c.sha256,
            images.c.size,
            images.c.mtime_ns,
            images.c.status,
        )
        .join(collections, collections.c.id == images.c.collection_id)
        .where(images.c.id == image_id)
    )
    row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    return {**row, "path": image_path(row["root"], row["relpath"])}


def revision(review_id: int | None, annotation_id: int | None) -> str:
    return f"{review_id or 0}.{annotation_id or 0}"


def parse_revision(text: object) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    first, dot, second = text.partition(".")
    if not (dot and _digits(first) and _digits(second) and len(text) < 40):
        return None
    return int(first), int(second)


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def image_detail(conn: Connection, image_id: int) -> ImageDetail | None:
    if not 0 < image_id <= MAX_ID:
        return None
    a = annotations
    row = (
        conn.execute(
            select(collections.c.root, images, a.c.id.label("annotation_id"))
            .join(collections, collections.c.id == images.c.collection_id)
            .outerjoin(a, a.c.id == current_annotation_id())
            .where(images.c.id == image_id)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    sha = row["sha256"]
    history: list[dict[str, Any]] = []
    drafts: list[dict[str, Any]] = []
    values = None
    if sha:
        history = [
            dict(r)
            for r in conn.execute(
                select(
                    reviews.c.id,
                    reviews.c.kind,
                    reviews.c.field,
                    reviews.c.value,
                    reviews.c.by,
                    reviews.c.source,
                    reviews.c.created_at,
                )
                .where(reviews.c.sha256 == sha)
                .order_by(reviews.c.id)
            ).mappings()
        ]
        for item in history:
            if item["field"] == "emotion" and item["value"]:
                item["value"] = dominant(item["value"])
        drafts = [
            dict(r)
            for r in conn.execute(
                select(a.c.id, a.c.run_id, a.c.model, a.c.adapter_name, a.c.adapter, a.c.created_at)
                .where(a.c.sha256 == sha)
                .order_by(a.c.id)
            ).mappings()
        ]
    if row["annotation_id"] is not None:
        current = conn.execute(select(a).where(a.c.id == row["annotation_id"])).mappings().one()
        values = overlay(dict(current), review_states(conn, [sha]).get(sha))
        values["distribution"] = [
            (label, float(values[column]))
            for label, column in zip(EMOTIONS, EMOTION_COLUMNS, strict=True)
        ]
    return ImageDetail(
        image_id=image_id,
        path=image_path(row["root"], row["relpath"]),
        sha256=sha,
        file_status=row["status"],
        error=row["error"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        width=row["width"],
        height=row["height"],
        values=values,
        base=revision(history[-1]["id"] if history else None, row["annotation_id"]),
        history=history,
        drafts=drafts,
        record=records_for(conn, [image_id]).get(image_id),
    )

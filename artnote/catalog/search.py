"""Full-text search over what users see now: per content, the newest correction of each
text field, else the current annotation's text.

`search_texts` holds those values (one row per content); on SQLite the FTS5 index
`search_fts` follows it by triggers (migrations/versions/0003). `refresh()` is
called inside the transaction that adds annotations or reviews, so the index is
never behind the catalog. Other databases search search_texts with LIKE.

User input reaches SQL only as bound parameters, and FTS5 queries are re-quoted
word by word so that FTS5's query syntax cannot be injected either.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from artnote.catalog import objects
from artnote.catalog.models import Review, SearchText
from artnote.catalog.queries import annotations, chunks, collections, image_path, images
from artnote.emotions import EMOTIONS

search_texts = cast(Table, SearchText.__table__)
reviews = cast(Table, Review.__table__)

FIELDS = ("alt_text", "description", "explanation")  # searched
COLUMNS = (*FIELDS, "dominant_emotion")  # kept current from annotations and corrections


def refresh(conn: Connection, sha256s: Iterable[str]) -> None:
    """Recompute the current texts, dominant emotion and review status of these contents
    from their annotations and reviews (call inside the write transaction that changed
    them)."""
    a, r = annotations, reviews
    for chunk in chunks(sorted(set(sha256s))):
        current: dict[str, dict[str, str | None]] = {}
        newest = select(func.max(a.c.id)).where(a.c.sha256.in_(chunk)).group_by(a.c.sha256)
        stmt = select(a.c.sha256, *(a.c[f] for f in COLUMNS)).where(a.c.id.in_(newest))
        for sha, *values in conn.execute(stmt):
            current[sha] = {**dict(zip(COLUMNS, values, strict=True)), "status": "draft"}
        history = (
            select(r.c.sha256, r.c.kind, r.c.field, r.c.value)
            .where(r.c.sha256.in_(chunk))
            .order_by(r.c.id)  # the newest correction of a field wins
        )
        for sha, kind, name, value in conn.execute(history):
            values = current.setdefault(sha, {**dict.fromkeys(COLUMNS), "status": "draft"})
            values["status"] = _next_status(values["status"], kind, name)
            if kind != "correction":
                continue
            if name in FIELDS:
                values[name] = value
            elif name == "emotion" and value:
                dist = json.loads(value)
                values["dominant_emotion"] = max(EMOTIONS, key=lambda e: dist.get(e, 0.0))
        if not current:
            continue
        known = set(
            conn.scalars(
                select(search_texts.c.sha256).where(search_texts.c.sha256.in_(list(current)))
            )
        )
        rows = [{"b_sha": sha, **values} for sha, values in current.items() if sha in known]
        if rows:
            conn.execute(
                update(search_texts)
                .where(search_texts.c.sha256 == bindparam("b_sha"))
                .values({f: bindparam(f) for f in (*COLUMNS, "status")}),
                rows,
            )
        new = [{"sha256": sha, **values} for sha, values in current.items() if sha not in known]
        if new:
            conn.execute(insert(search_texts), new)


def _next_status(status: str, kind: str, name: str | None) -> str:
    """A content's review status after one more review (as reviews.review_states)."""
    if kind == "correction":
        return "corrected"
    if name is None:  # the whole annotation approved
        return "approved"
    return "corrected" if status == "draft" else status


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fts5_query(query: str) -> str:
    """Each word of `query` as a quoted FTS5 string (all must match); 'word*' keeps a prefix.

    Quoting makes FTS5 operators, column filters and stray quotes plain text.
    """
    terms = []
    for word in _CONTROL.sub(" ", query).split():
        prefix = word.endswith("*") and len(word) > 1
        word = word.rstrip("*") if prefix else word
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    return " ".join(terms)


_SEARCH_FTS = text(
    """
    SELECT i.id AS image_id, c.root, i.relpath, s.sha256,
           (SELECT max(a.id) FROM annotations AS a WHERE a.sha256 = s.sha256) AS annotation_id,
           s.alt_text, s.description, s.explanation,
           snippet(search_fts, -1, '[', ']', '...', 12) AS snippet,
           bm25(search_fts) AS rank
    FROM search_fts
    JOIN search_texts AS s ON s.id = search_fts.rowid
    JOIN images AS i ON i.id = (
        SELECT min(i2.id) FROM images AS i2
        WHERE i2.sha256 = s.sha256 AND i2.status != 'missing')
    JOIN collections AS c ON c.id = i.collection_id
    WHERE search_fts MATCH :query
    ORDER BY rank
    LIMIT :limit
    """
)


def search(conn: Connection, query: str, limit: int, *, fts: bool) -> list[dict[str, Any]]:
    """Images whose object's current record has every word of `query` in its title or
    maker, then contents whose current texts match every word, best first; each hit has
    image_id, path, sha256, annotation_id, alt_text, description, explanation, snippet,
    rank, and object_number, title, maker (None for an image without a record)."""
    if limit <= 0:
        return []
    if fts:
        match = fts5_query(query)
        rows = (
            conn.execute(_SEARCH_FTS, {"query": match, "limit": limit}).mappings() if match else []
        )
    else:
        rows = _search_like(conn, query, limit)
    hits = _record_hits(conn, query, limit)
    seen = {h["sha256"] or h["image_id"] for h in hits}
    for row in rows:
        hit = dict(row)
        if hit["sha256"] in seen:  # its object's record matched already
            continue
        hit["path"] = image_path(hit.pop("root"), hit.pop("relpath"))
        if not fts:
            hit["snippet"] = _snippet(hit, query)
        hits.append(hit)
    hits = hits[:limit]
    records = objects.records_for(conn, [h["image_id"] for h in hits if "title" not in h])
    for hit in hits:
        if "title" not in hit:
            record = records.get(hit["image_id"])
            hit["object_number"] = record.object_number if record else None
            hit["title"] = record.title if record else None
            hit["maker"] = record.maker if record else None
    return hits


def _like_words(query: str) -> list[str]:
    """The words of `query` escaped for LIKE ... ESCAPE '\\' (a trailing * dropped)."""
    words = [w.rstrip("*") for w in _CONTROL.sub(" ", query).split()]
    return [w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for w in words if w]


def _image_columns(sha256: Any) -> list[Any]:
    """What every hit starts with: image_id, root, relpath, sha256 (as given) and the
    content's current annotation_id."""
    newest = select(func.max(annotations.c.id)).where(annotations.c.sha256 == sha256)
    return [
        images.c.id.label("image_id"),
        collections.c.root,
        images.c.relpath,
        sha256,
        newest.scalar_subquery().label("annotation_id"),
    ]


def _record_hits(conn: Connection, query: str, limit: int) -> list[dict[str, Any]]:
    """Present images linked to an object whose current record has every word of `query`
    in its title or maker: by object number, the primary image first."""
    words = _like_words(query)
    if not words:
        return []
    r = objects.object_records
    o, links = objects.objects, objects.object_images
    matches = and_(
        *(or_(*(r.c[f].ilike(f"%{w}%", escape="\\") for f in ("title", "maker"))) for w in words)
    )
    stmt = (
        select(
            *_image_columns(images.c.sha256),
            *(search_texts.c[f] for f in FIELDS),
            o.c.object_number,
            r.c.title,
            r.c.maker,
        )
        .select_from(r)
        .join(o, o.c.id == r.c.object_id)
        .join(links, links.c.object_id == o.c.id)
        .join(images, images.c.id == links.c.image_id)
        .join(collections, collections.c.id == images.c.collection_id)
        .outerjoin(search_texts, search_texts.c.sha256 == images.c.sha256)
        .where(matches, objects.is_current(r), images.c.status != "missing")
        .order_by(o.c.object_number, links.c.is_primary.desc(), images.c.relpath)
        .limit(limit)
    )
    hits = []
    for row in conn.execute(stmt).mappings():
        hit = dict(row)
        hit["path"] = image_path(hit.pop("root"), hit.pop("relpath"))
        label = ": ".join(v for v in (hit["object_number"], hit["title"]) if v)
        hit["snippet"] = label + (f" ({hit['maker']})" if hit["maker"] else "")
        hit["rank"] = 0.0
        hits.append(hit)
    return hits


def _snippet(hit: dict[str, Any], query: str, width: int = 60) -> str:
    """FTS5's snippet() for LIKE hits: the first field with the first word, around it."""
    word = (_CONTROL.sub(" ", query).split() or [""])[0].rstrip("*").lower()
    for name in FIELDS:
        value = hit.get(name) or ""
        at = value.lower().find(word)
        if at >= 0:
            start = max(0, at - width // 2)
            middle = value[at : at + len(word)]
            before, after = value[start:at], value[at + len(word) : at + len(word) + width // 2]
            return (
                ("..." if start else "")
                + f"{before}[{middle}]{after}"
                + ("..." if at + len(word) + width // 2 < len(value) else "")
            )
    return hit.get("alt_text") or ""


def _search_like(conn: Connection, query: str, limit: int) -> Any:
    """Databases without FTS5: every word must appear in one of the texts (newest first)."""
    escaped = _like_words(query)
    if not escaped:
        return []
    s = search_texts
    fields = [s.c[f] for f in FIELDS]
    matches = and_(*(or_(*(f.ilike(f"%{w}%", escape="\\") for f in fields)) for w in escaped))
    i2 = images.alias("i2")
    first_image = (
        select(func.min(i2.c.id))
        .where(i2.c.sha256 == s.c.sha256, i2.c.status != "missing")
        .scalar_subquery()
    )
    stmt = (
        select(
            *_image_columns(s.c.sha256),
            *fields,
            s.c.alt_text.label("snippet"),
            literal(0.0).label("rank"),
        )
        .select_from(s)
        .join(images, images.c.id == first_image)
        .join(collections, collections.c.id == images.c.collection_id)
        .where(matches)
        .order_by(s.c.id.desc())
        .limit(limit)
    )
    return conn.execute(stmt).mappings()

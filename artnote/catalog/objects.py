"""Collection records in the catalog: museum objects, their catalogue data in append-only
revisions, and the images of each (artnote.catalog.linking says how images are matched).

The current record of an object is its highest revision. An import adds a revision only
for a record that differs from the current one; fields whose column the file lacks keep
their current value (a partial export does not erase what an earlier one said).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, delete, func, insert, select, update

from artnote.catalog.linking import (
    link_unlinked,
    match_key,
    object_files,
    object_images,
    objects,
    record_imports,
    with_images,
)
from artnote.catalog.models import ObjectRecord, utcnow
from artnote.catalog.queries import chunks, collections, image_path, images
from artnote.records import RECORD_FIELDS, CollectionRecord

object_records = cast(Table, ObjectRecord.__table__)

__all__ = [
    "ImportOutcome",
    "IncomingRecord",
    "any_objects",
    "import_records",
    "is_current",
    "object_rows",
    "record_counts",
    "records_for",
]


@dataclass(frozen=True)
class IncomingRecord:
    """One object of a validated import file (artnote.collection_records)."""

    record: CollectionRecord  # its revision is ignored: the catalog numbers revisions
    files: tuple[str, ...] = ()  # file keys its image column lists (linking.file_key), in order
    line: int = 0  # where it is in the file


@dataclass
class ImportOutcome:
    new: int = 0  # objects first seen
    updated: int = 0  # records that changed: a new revision each
    unchanged: int = 0
    linked: int = 0  # images newly linked to an object (by this import's rules or earlier ones)
    unmatched_records: list[str] = field(default_factory=list)  # this file's, without an image
    unmatched_images: list[str] = field(default_factory=list)  # present images without a record


def is_current(records: Table) -> ColumnElement[bool]:
    """`records` (object_records or an alias) is its object's current revision."""
    newest = object_records.alias("newest")
    return records.c.revision == (
        select(func.max(newest.c.revision))
        .where(newest.c.object_id == records.c.object_id)
        .scalar_subquery()
    )


def import_records(
    conn: Connection,
    rows: Sequence[IncomingRecord],
    *,
    source: str,
    key_column: str,
    fields: Sequence[str],
    extra_columns: Sequence[str],
    pattern: str | None = None,
    image_column: str | None = None,
) -> ImportOutcome:
    """Write a validated import (one record per object number) inside the caller's
    transaction, then link every image the stored rules match.

    `fields`: the named fields (artnote.records.RECORD_FIELDS) the file has a column for;
    `extra_columns`: its other columns. Either kind a file lacks keeps its current value.
    `image_column`: the file had one, so each object's listed files are replaced by
    `files` (the rule for later scans too)."""
    numbers = [r.record.object_number for r in rows]
    if len(set(numbers)) != len(numbers):
        raise ValueError("import_records takes one record per object number")
    now = utcnow()
    import_id = conn.execute(
        insert(record_imports).values(
            source=source,
            key_column=key_column,
            image_column=image_column,
            pattern=pattern,
            created_at=now,
        )
    ).inserted_primary_key[0]
    ids: dict[str, int] = {}
    for chunk in chunks(numbers):
        stmt = select(objects.c.object_number, objects.c.id).where(
            objects.c.object_number.in_(chunk)
        )
        ids.update((n, i) for n, i in conn.execute(stmt))
    current = _current_values(conn, list(ids.values()))
    fresh = [
        {"object_number": n, "match_key": match_key(n), "created_at": now}
        for n in numbers
        if n not in ids
    ]
    if fresh:
        stmt = insert(objects).returning(objects.c.object_number, objects.c.id)
        ids.update((n, i) for n, i in conn.execute(stmt, fresh))
    outcome = ImportOutcome()
    named, others = set(fields), set(extra_columns)
    revisions = []
    stamp = {"source": source, "import_id": import_id, "created_at": now}
    for row in rows:
        object_id = ids[row.record.object_number]
        values = {f: getattr(row.record, f) for f in RECORD_FIELDS}
        values["extra"] = dict(row.record.extra)
        old = current.get(object_id)
        if old is None:
            outcome.new += 1
            revision = 1
        else:
            values = {f: values[f] if f in named else old[f] for f in RECORD_FIELDS} | {
                "extra": {k: v for k, v in old["extra"].items() if k not in others}
                | values["extra"]
            }
            if all(values[f] == old[f] for f in (*RECORD_FIELDS, "extra")):
                outcome.unchanged += 1
                continue
            outcome.updated += 1
            revision = old["revision"] + 1
        revisions.append(values | stamp | {"object_id": object_id, "revision": revision})
    if revisions:
        conn.execute(insert(object_records), revisions)
    relisted: set[int] = set()
    if image_column is not None:
        relisted = {ids[n] for n in numbers}
        for chunk in chunks(sorted(relisted)):
            conn.execute(delete(object_files).where(object_files.c.object_id.in_(chunk)))
        listed = [
            {"object_id": ids[r.record.object_number], "name": name, "position": n}
            | {"import_id": import_id}
            for r in rows
            for n, name in enumerate(dict.fromkeys(r.files))
        ]
        if listed:
            conn.execute(insert(object_files), listed)
    outcome.linked = link_unlinked(conn, None, also=relisted)
    with_images = _objects_with_images(conn)
    outcome.unmatched_records = [n for n in numbers if ids[n] not in with_images]
    outcome.unmatched_images = _unlinked_paths(conn)
    counts = {k: getattr(outcome, k) for k in ("new", "updated", "unchanged", "linked")}
    conn.execute(
        update(record_imports).where(record_imports.c.id == import_id).values(counts=counts)
    )
    return outcome


def _current_values(conn: Connection, object_ids: list[int]) -> dict[int, dict[str, Any]]:
    """object id -> its current record's fields, extra and revision."""
    r = object_records
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks(sorted(object_ids)):
        stmt = select(
            r.c.object_id, r.c.revision, r.c.extra, *(r.c[f] for f in RECORD_FIELDS)
        ).where(r.c.object_id.in_(chunk), is_current(r))
        for object_id, revision, extra, *values in conn.execute(stmt):
            out[object_id] = dict(zip(RECORD_FIELDS, values, strict=True)) | {
                "revision": revision,
                "extra": extra or {},
            }
    return out


def _present_links() -> Any:
    return (
        select(object_images.c.object_id, object_images.c.image_id)
        .join(images, images.c.id == object_images.c.image_id)
        .where(images.c.status != "missing")
    )


def _objects_with_images(conn: Connection) -> set[int]:
    return set(conn.scalars(select(_present_links().subquery().c.object_id).distinct()))


def _unlinked() -> tuple[ColumnElement[bool], ...]:
    """Conditions on images: present, and linked to no object."""
    linked = select(object_images.c.id).where(object_images.c.image_id == images.c.id)
    return images.c.status != "missing", ~linked.exists()


def _unlinked_paths(conn: Connection) -> list[str]:
    stmt = (
        select(collections.c.root, images.c.relpath)
        .join(collections, collections.c.id == images.c.collection_id)
        .where(*_unlinked())
        .order_by(collections.c.root, images.c.relpath)
    )
    return [image_path(root, relpath) for root, relpath in conn.execute(stmt)]


def any_objects(conn: Connection) -> bool:
    return conn.scalar(select(objects.c.id).limit(1)) is not None


def record_counts(conn: Connection) -> dict[str, int]:
    """objects, objects_with_images, objects_without_images (present images counted),
    images_without_record (present images)."""
    total = conn.scalar(select(func.count()).select_from(objects)) or 0
    linked = len(_objects_with_images(conn))
    unlinked = conn.scalar(select(func.count()).select_from(images).where(*_unlinked()))
    return {
        "objects": total,
        "objects_with_images": linked,
        "objects_without_images": total - linked,
        "images_without_record": unlinked or 0,
    }


def _record_columns(r: Table) -> list[Any]:
    return [objects.c.object_number, r.c.revision, r.c.extra, *(r.c[f] for f in RECORD_FIELDS)]


def _record(row: Sequence[Any]) -> CollectionRecord:
    number, revision, extra, *values = row
    named = dict(zip(RECORD_FIELDS, values, strict=True))
    return CollectionRecord(number, **named, extra=extra or {}, revision=revision)


def records_for(conn: Connection, image_ids: Sequence[int]) -> dict[int, CollectionRecord]:
    """image id -> the current record of its object, for the linked ones among them."""
    r = object_records
    out: dict[int, CollectionRecord] = {}
    for chunk in chunks(sorted(set(image_ids))):
        stmt = (
            select(object_images.c.image_id, *_record_columns(r))
            .join(objects, objects.c.id == object_images.c.object_id)
            .join(r, r.c.object_id == objects.c.id)
            .where(object_images.c.image_id.in_(chunk), is_current(r))
        )
        for image_id, *row in conn.execute(stmt):
            out[image_id] = _record(row)
    return out


def object_rows(conn: Connection) -> Iterator[dict[str, Any]]:
    """Per object, by object number: object_number, record (CollectionRecord, current
    revision) and images: [{image_id, path, relpath, primary}] of its present images,
    the primary first, then in path order."""
    links: dict[int, list[dict[str, Any]]] = defaultdict(list)
    stmt = (
        with_images(
            object_images.c.object_id,
            object_images.c.image_id,
            object_images.c.is_primary,
            collections.c.root,
            images.c.relpath,
        )
        .where(images.c.status != "missing")
        .order_by(object_images.c.is_primary.desc(), collections.c.root, images.c.relpath)
    )
    for object_id, image_id, primary, root, relpath in conn.execute(stmt):
        links[object_id].append(
            {
                "image_id": image_id,
                "path": image_path(root, relpath),
                "relpath": relpath,
                "primary": bool(primary),
            }
        )
    r = object_records
    stmt = (
        select(objects.c.id, *_record_columns(r))
        .join(r, r.c.object_id == objects.c.id)
        .where(is_current(r))
        .order_by(objects.c.object_number)
    )
    for object_id, *row in conn.execute(stmt):
        record = _record(row)
        yield {
            "object_number": record.object_number,
            "record": record,
            "images": links.get(object_id, []),
        }

"""Read queries of the catalog, as functions of an open connection.

User input only ever reaches SQL as bound parameters; full-text queries are
also re-quoted for FTS5 so that its query syntax cannot be injected either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Exists,
    Select,
    String,
    Table,
    and_,
    case,
    func,
    literal,
    select,
)

from artnote.catalog.models import (
    Annotation,
    Collection,
    CollectionObject,
    Image,
    ObjectImage,
    ObjectRecord,
    Run,
)
from artnote.catalog.rows import ImageInfo, PendingImage
from artnote.emotions import EMOTION_COLUMNS
from artnote.errors import NotFoundError
from artnote.export import CSV_COLUMNS

T = TypeVar("T")

collections = cast(Table, Collection.__table__)
images = cast(Table, Image.__table__)
runs = cast(Table, Run.__table__)
annotations = cast(Table, Annotation.__table__)
_objects = cast(Table, CollectionObject.__table__)
_object_images = cast(Table, ObjectImage.__table__)
_object_records = cast(Table, ObjectRecord.__table__)
OBJECT_COLUMNS = ("object_number", "title", "maker")  # first in exports once records exist

# Bound parameters per IN list: SQLite's default limit is 32766, older builds 999.
CHUNK = 500
EXPORT_BATCH = 2000


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def image_path(root: str, relpath: str) -> str:
    """The absolute path of an image, as exports and messages show it."""
    return root.rstrip("/" + os.sep) + os.sep + relpath.replace("/", os.sep)


def annotated_contents(conn: Connection, sha256s: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(sorted(sha256s)):
        stmt = select(annotations.c.sha256).where(annotations.c.sha256.in_(chunk)).distinct()
        found.update(conn.scalars(stmt))
    return found


def status_from_facts(has_annotation: Exists) -> ColumnElement[str]:
    """The status a present file should have, from what the catalog knows of it."""
    return case(
        (has_annotation, literal("annotated")),
        (images.c.error.is_not(None), literal("failed")),
        else_=literal("pending"),
    )


def pending_images(
    conn: Connection,
    collection_id: int,
    *,
    force: bool,
    limit: int | None,
    reannotate: bool = False,
) -> list[PendingImage]:
    """One present file per content to consider, in path order: those without an
    annotation; with `force`, every one (failed too); with `reannotate`, every one with
    its current annotation's adapter and prompt hash (PendingImage.current), for the
    caller to choose from."""
    wanted = ("pending", "annotated", "failed") if force else ("pending", "annotated")
    conditions = [
        images.c.collection_id == collection_id,
        images.c.status.in_(wanted),
        images.c.sha256.is_not(None),
    ]
    if not force and not reannotate:
        has = select(annotations.c.id).where(annotations.c.sha256 == images.c.sha256).exists()
        conditions.append(~has)
    # The lowest id stands for its content: duplicates are fed to the model once.
    firsts = select(func.min(images.c.id)).where(*conditions).group_by(images.c.sha256)
    columns = [
        images.c.id,
        collections.c.root,
        images.c.relpath,
        images.c.sha256,
        images.c.size,
        images.c.mtime_ns,
    ]
    current = annotations.alias("current")
    stmt = select(*columns).join(collections, collections.c.id == images.c.collection_id)
    if reannotate and not force:
        newest = (
            select(func.max(annotations.c.id))
            .where(annotations.c.sha256 == images.c.sha256)
            .scalar_subquery()
        )
        stmt = stmt.add_columns(current.c.id, current.c.adapter, current.c.prompt_hash).outerjoin(
            current, current.c.id == newest
        )
    stmt = stmt.where(images.c.id.in_(firsts)).order_by(images.c.relpath)
    if not reannotate or force:
        stmt = stmt.limit(limit)
    out = []
    for row in conn.execute(stmt):
        image_id, root, relpath, sha256, size, mtime_ns = row[:6]
        item = PendingImage(image_id, image_path(root, relpath), relpath, sha256, size, mtime_ns)
        if len(row) > 6 and row[6] is not None:
            item = replace(item, current=(row[7], row[8]), reason="")
        elif force:
            item = replace(item, reason="force")
        out.append(item)
    return out


def current_annotation_id() -> Any:
    """Correlated subquery: the id of the newest annotation of an image row's content.

    The (sha256, id) index answers it per row without touching the table.
    """
    return (
        select(func.max(annotations.c.id))
        .where(annotations.c.sha256 == images.c.sha256)
        .correlate(images)
        .scalar_subquery()
    )


def export_rows(
    conn: Connection, provenance: bool = True, objects: bool = False, by_object: bool = False
) -> Iterator[dict[str, Any]]:
    """Rows of present images with their current annotation (reviews not laid over), in
    path order; `objects`: with the object number, title and maker of each image's record
    (None where none) and `primary`; `by_object`: ordered by object (primary image first),
    then the images without one in path order."""
    a = annotations
    stmt = select(
        images.c.id.label("image_id"),
        collections.c.root,
        images.c.relpath,
        images.c.sha256,
        images.c.width,
        images.c.height,
        a.c.id.label("annotation_id"),
        a.c.run_id,
        a.c.alt_text,
        a.c.alt_text_truncated,
        a.c.description,
        a.c.dominant_emotion,
        *(a.c[name] for name in EMOTION_COLUMNS),
        a.c.explanation,
        a.c.model,
        a.c.model_revision,
        a.c.adapter,
        a.c.adapter_name,
        a.c.prompt_version,
        *([a.c.provenance] if provenance else []),  # JSON: parsing it per row is costly
        a.c.created_at,
    )
    stmt = _present_and_current(stmt)
    if objects or by_object:
        stmt = _with_objects(stmt, by_object)
    result = conn.execution_options(yield_per=EXPORT_BATCH).execute(stmt)
    for row in result.mappings():
        out = dict(row)
        root = out["root"]
        created = out.pop("created_at")
        out["path"] = image_path(root, out["relpath"])
        out["annotated_at"] = created.isoformat(timespec="seconds") if created else None
        yield out


def _present_and_current(stmt: Select) -> Select:
    """Each present image joined with its collection and its current annotation, in path order."""
    return (
        stmt.select_from(images)
        .join(collections, collections.c.id == images.c.collection_id)
        .join(annotations, annotations.c.id == current_annotation_id())
        .where(images.c.status != "missing")
        # The (collection_id, relpath) unique index gives this order without a sort.
        .order_by(images.c.collection_id, images.c.relpath)
    )


def _with_objects(stmt: Select, by_object: bool) -> Select:
    """Add each image's object number and current record's title and maker, and whether
    it is the object's primary image (NULLs for an image without a record)."""
    o, oi, r = _objects, _object_images, _object_records
    stmt = _join_objects(
        stmt.add_columns(o.c.object_number, r.c.title, r.c.maker, oi.c.is_primary.label("primary"))
    )
    if by_object:  # objects first (primary image first), then the rest in path order
        stmt = stmt.order_by(None).order_by(
            o.c.object_number.is_(None),
            o.c.object_number,
            oi.c.is_primary.desc(),
            images.c.collection_id,
            images.c.relpath,
        )
    return stmt


def _join_objects(stmt: Select) -> Select:
    """Outer-join each image's object and that object's current record."""
    o, oi, r = _objects, _object_images, _object_records
    later = _object_records.alias("later")
    newest = (
        select(func.max(later.c.revision))
        .where(later.c.object_id == o.c.id)
        .correlate(o)
        .scalar_subquery()
    )
    return (
        stmt.outerjoin(oi, oi.c.image_id == images.c.id)
        .outerjoin(o, o.c.id == oi.c.object_id)
        .outerjoin(r, and_(r.c.object_id == o.c.id, r.c.revision == newest))
    )


def export_table(conn: Connection, objects: bool = False) -> Iterator[list[Sequence[Any]]]:
    """export_rows for CSV, EXPORT_BATCH rows at a time as columns: one sequence of cell
    values per column of artnote.export.CSV_COLUMNS (status and who reviewed it None: the
    caller lays reviews over), after OBJECT_COLUMNS with `objects`; no dict, datetime or
    list per row.

    On SQLite the path and the timestamp are made by SQLite itself.
    """
    a = annotations
    sqlite = conn.dialect.name == "sqlite"
    cells = {
        "path": collections.c.root,  # with relpath below, where SQLite does not join them
        "sha256": images.c.sha256,
        "width": images.c.width,
        "height": images.c.height,
        **{name: a.c[name] for name in ("alt_text", "description", "dominant_emotion")},
        **{name: a.c[name] for name in EMOTION_COLUMNS},
        **{name: a.c[name] for name in ("explanation", "model", "adapter")},
        "annotated_at": a.c.created_at,
        **{name: a.c[name] for name in ("adapter_name", "model_revision", "prompt_version")},
        "image_id": images.c.id,
        "annotation_id": a.c.id,
    }
    if sqlite:  # as image_path() would write it
        relpath = images.c.relpath if os.sep == "/" else func.replace(images.c.relpath, "/", os.sep)
        root = func.rtrim(collections.c.root, "/" + os.sep, type_=String)
        cells["path"] = root.concat(os.sep).concat(relpath)
    # The CSV columns the catalog's row has; the others (all None) are added to each batch.
    columns = [cells[c].label(c) for c in CSV_COLUMNS if c in cells]
    lacking = [at for at, c in enumerate(CSV_COLUMNS) if c not in cells]
    lead = [_objects.c.object_number, _object_records.c.title, _object_records.c.maker]
    stmt = select(*(lead if objects else []), *columns)
    if not sqlite:
        stmt = stmt.add_columns(images.c.relpath)
    stmt = _present_and_current(stmt)
    if objects:
        stmt = _join_objects(stmt)
    first = len(lead) if objects else 0
    path, created_at = first + CSV_COLUMNS.index("path"), first + CSV_COLUMNS.index("annotated_at")
    if sqlite:
        # The driver's rows, from its cursor: that spares SQLAlchemy a Row per row (a tenth
        # of the time), and no column but the timestamp (its stored text) needs converting.
        cursor = conn.execute(stmt).cursor
        batches: Iterator[Sequence[Sequence[Any]]] = iter(
            partial(cursor.fetchmany, EXPORT_BATCH), []
        )
    else:
        batches = conn.execution_options(yield_per=EXPORT_BATCH).execute(stmt).partitions()
    for rows in batches:
        batch: list[Sequence[Any]] = list(zip(*rows, strict=True))
        for at in lacking:
            batch.insert(first + at, [None] * len(rows))
        if sqlite:
            batch[created_at] = _iso_seconds(cursor.connection, batch[created_at])
        else:
            relpaths = batch.pop()
            batch[path] = list(map(image_path, batch[path], relpaths))
            batch[created_at] = [
                None if v is None else v.isoformat(timespec="seconds") for v in batch[created_at]
            ]
        yield batch


# How SQLAlchemy stores a DateTime in SQLite (UTC, microseconds always written).
_STORED_DATETIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")
_ISO_SECONDS = "%Y-%m-%dT%H:%M:%S+00:00"


def _iso_seconds(sqlite: Any, stored: Sequence[str | None]) -> list[str | None]:
    """SQLite's strftime(_ISO_SECONDS, value) of each stored timestamp (None for NULL), made
    once per distinct value: by slicing, for a valid date and time written as SQLAlchemy
    writes them (strftime cuts the seconds, as the slice does), else by asking SQLite
    (`sqlite`: the driver's connection). Calling strftime in the export's query instead
    took 0.2-0.5 s more for 100,000 rows (bench/perf_checks.py export)."""
    text: dict[str | None, str | None] = {}
    for value in dict.fromkeys(stored):
        if value is not None and _STORED_DATETIME.fullmatch(value) and _valid(value):
            text[value] = value[:10] + "T" + value[11:19] + "+00:00"
        else:
            found = sqlite.execute("SELECT strftime(?, ?)", (_ISO_SECONDS, value)).fetchone()
            text[value] = found[0]
    return list(map(text.__getitem__, stored))


def _valid(stored: str) -> bool:
    """Whether a stored timestamp is a real date and time (not 24:00, not 31 February)."""
    try:
        datetime.fromisoformat(stored)
    except ValueError:
        return False
    return True


def status_counts(conn: Connection) -> dict[str, int]:
    by_status: dict[str, int] = {
        status: int(n)
        for status, n in conn.execute(
            select(images.c.status, func.count()).group_by(images.c.status)
        )
    }
    n_runs = conn.scalar(select(func.count()).select_from(runs)) or 0
    return {
        "images": sum(n for status, n in by_status.items() if status != "missing"),
        "annotated": by_status.get("annotated", 0),
        "failed": by_status.get("failed", 0),
        "pending": by_status.get("pending", 0),
        "missing": by_status.get("missing", 0),
        "runs": int(n_runs),
    }


def failures(conn: Connection) -> list[tuple[str, str]]:
    stmt = (
        select(collections.c.root, images.c.relpath, images.c.error)
        .join(collections, collections.c.id == images.c.collection_id)
        .where(images.c.status == "failed")
        .order_by(collections.c.root, images.c.relpath)
    )
    out = [
        (image_path(root, rel), error or "unknown error") for root, rel, error in conn.execute(stmt)
    ]
    latest = conn.scalar(
        select(runs.c.problems)
        .where(runs.c.outcome != "running")
        .order_by(runs.c.id.desc())
        .limit(1)
    )
    out.extend((str(path), str(reason)) for path, reason in latest or ())
    return out


_HEX = re.compile(r"[0-9a-fA-F]{4,64}")


def find_image(conn: Connection, ref: str) -> ImageInfo:
    ref = ref.strip()
    if not ref:
        raise NotFoundError("no image given")
    if ref.isdigit():
        found = _images(conn, images.c.id == int(ref))
        if found:
            return found[0]
    if _HEX.fullmatch(ref):
        prefix = ref.lower()
        # A range, not LIKE: it uses the sha256 index and needs no escaping.
        found = _images(conn, images.c.sha256 >= prefix, images.c.sha256 < prefix + "g", limit=1000)
        contents = {image.sha256 for image in found}
        if len(contents) == 1:
            return min(found, key=lambda image: (image.status == "missing", image.id))
        if len(contents) > 1:
            raise NotFoundError(
                f"sha256 prefix {ref} is ambiguous: it matches {len(contents)} different images; "
                "give more characters"
            )
    image = _find_by_path(conn, ref)
    if image is not None:
        return image
    raise NotFoundError(f"no image {ref!r} in the catalog (give a path, an id or a sha256 prefix)")


def _find_by_path(conn: Connection, ref: str) -> ImageInfo | None:
    candidates = {os.path.abspath(os.path.expanduser(ref))}
    try:
        candidates.add(str(Path(ref).expanduser().resolve()))
    except OSError:
        pass
    for root, collection_id in conn.execute(select(collections.c.root, collections.c.id)):
        base = root.rstrip("/" + os.sep) + os.sep
        for path in candidates:
            if path.startswith(base):
                relpath = path[len(base) :].replace(os.sep, "/")
                found = _images(
                    conn, images.c.collection_id == collection_id, images.c.relpath == relpath
                )
                if found:
                    return found[0]
    return None


def _images(conn: Connection, *where: Any, limit: int | None = None) -> list[ImageInfo]:
    stmt = (
        select(collections.c.root, images)
        .join(collections, collections.c.id == images.c.collection_id)
        .where(*where)
        .order_by(images.c.id)
        .limit(limit)
    )
    out = []
    for row in conn.execute(stmt).mappings():
        out.append(
            ImageInfo(
                id=row["id"],
                collection_id=row["collection_id"],
                path=image_path(row["root"], row["relpath"]),
                relpath=row["relpath"],
                size=row["size"],
                mtime_ns=row["mtime_ns"],
                sha256=row["sha256"],
                width=row["width"],
                height=row["height"],
                format=row["format"],
                mode=row["mode"],
                status=row["status"],
                error=row["error"],
            )
        )
    return out

"""What the catalog knows of a collection's files: the `Catalog`'s file-tracking half.

A scan compares its walk with `known_files` (or, when nothing may have changed, the
cheaper `hashed_files`), records the new and changed files (`record_files`), notes the
ones that come back (`touch_seen`) or are gone (`set_missing`, `mark_missing`), and
stores what decoding learned or why it failed (`set_image_meta`, `record_failures`).
`Catalog` inherits these; they use its `_read` and `_write` transactions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, and_, bindparam, insert, or_, select, update

from artnote.catalog import queries
from artnote.catalog.models import utcnow
from artnote.catalog.queries import annotations, chunks, images
from artnote.catalog.rows import FileState, ImageMeta, KnownFile


class FileTracking:
    """The file-tracking methods of `Catalog` (which supplies `_read` and `_write`)."""

    def known_files(self, collection_id: int) -> dict[str, KnownFile]:
        """relpath -> what the catalog knows of every file ever seen in the collection."""
        stmt = select(
            images.c.relpath,
            images.c.id,
            images.c.size,
            images.c.mtime_ns,
            images.c.sha256,
            images.c.status,
        ).where(images.c.collection_id == collection_id)
        with self._read() as conn:
            rows = conn.execute(stmt).all()  # one fetchall: far cheaper than row by row
        return {row[0]: KnownFile._make(row[1:]) for row in rows}

    def hashed_files(
        self, collection_id: int
    ) -> tuple[dict[tuple[str, int, int], int], dict[str, int]]:
        """What a rescan compares its walk with, without a KnownFile per file: (relpath,
        size, mtime_ns) -> image id of the collection's files that were hashed and are not
        missing (a file found with the same three is unchanged), and how many of the
        collection's files have each status. One query, so the two agree."""
        hashed = and_(images.c.sha256.is_not(None), images.c.sha256 != "")
        stmt = select(
            images.c.relpath, images.c.size, images.c.mtime_ns, images.c.id, images.c.status, hashed
        ).where(images.c.collection_id == collection_id)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        by_status = Counter(row[4] for row in rows)
        keyed = {(r, s, m): i for r, s, m, i, status, h in rows if h and status != "missing"}
        return keyed, dict(by_status)

    def record_files(
        self, collection_id: int, run_id: int, files: Sequence[FileState]
    ) -> dict[str, int]:
        """Insert new files and update changed ones in one transaction; relpath -> image id.

        A file gets status 'failed' (with its error), else 'annotated' when its
        content already has an annotation, else 'pending'; a changed content
        forgets the old width, height, format and mode.
        """
        if not files:
            return {}
        now = utcnow()
        with self._write() as conn:
            existing: dict[str, tuple[int, str | None]] = {}
            for chunk in chunks([f.relpath for f in files]):
                stmt = select(images.c.relpath, images.c.id, images.c.sha256).where(
                    images.c.collection_id == collection_id, images.c.relpath.in_(chunk)
                )
                existing.update((r, (i, s)) for r, i, s in conn.execute(stmt))
            done = queries.annotated_contents(conn, {f.sha256 for f in files if f.sha256})

            def state(f: FileState) -> dict[str, Any]:
                status = "failed" if f.error else "annotated" if f.sha256 in done else "pending"
                return {
                    "size": f.size,
                    "mtime_ns": f.mtime_ns,
                    "sha256": f.sha256,
                    "status": status,
                    "error": f.error,
                    "last_seen_run": run_id,
                    "last_seen_at": now,
                }

            same, changed, new = [], [], []
            for f in files:
                if f.relpath not in existing:
                    new.append(state(f) | _first_seen(collection_id, f.relpath, run_id, now))
                    continue
                image_id, old_sha = existing[f.relpath]
                row = state(f) | {"b_id": image_id}
                (same if f.sha256 is not None and f.sha256 == old_sha else changed).append(row)
            columns = {k: bindparam(k) for k in state(files[0])}
            by_id = images.c.id == bindparam("b_id")
            if same:
                conn.execute(update(images).where(by_id).values(columns), same)
            if changed:
                forget = {"width": None, "height": None, "format": None, "mode": None}
                conn.execute(update(images).where(by_id).values(columns | forget), changed)
            ids = {relpath: image_id for relpath, (image_id, _) in existing.items()}
            if new:
                stmt = insert(images).returning(images.c.relpath, images.c.id)
                ids.update((r, i) for r, i in conn.execute(stmt, new))
            # A content that is already annotated is never decoded again (a renamed or
            # copied file): it takes the size, format and mode its twins were found with.
            twins = _meta_of(conn, {f.sha256 for f in files if f.sha256 in done})
            set_meta(conn, twins, images.c.sha256)
            return ids

    def touch_seen(self, run_id: int, image_ids: Sequence[int]) -> None:
        """Note that unchanged files were seen by this run; files that were missing come back."""
        now = utcnow()
        has_annotation = (
            select(annotations.c.id).where(annotations.c.sha256 == images.c.sha256).exists()
        )
        with self._write() as conn:
            for chunk in chunks(image_ids):
                in_chunk = images.c.id.in_(chunk)
                conn.execute(
                    update(images).where(in_chunk).values(last_seen_run=run_id, last_seen_at=now)
                )
                conn.execute(
                    update(images)
                    .where(in_chunk, images.c.status == "missing")
                    .values(status=queries.status_from_facts(has_annotation))
                )

    def mark_missing(self, collection_id: int, run_id: int, keep_under: Iterable[str] = ()) -> int:
        """Mark files of the collection not seen by `run_id` as missing; return how many.

        `keep_under` lists relpaths of folders discovery could not read: what is
        below them may still exist, so it is left as it was.
        """
        hidden = hidden_by(keep_under)
        with self._write() as conn:
            rows = conn.execute(
                select(images.c.id, images.c.relpath).where(
                    images.c.collection_id == collection_id,
                    images.c.status != "missing",
                    or_(images.c.last_seen_run.is_(None), images.c.last_seen_run != run_id),
                )
            ).all()
            gone = [i for i, relpath in rows if not hidden(relpath)]
            for chunk in chunks(gone):
                conn.execute(update(images).where(images.c.id.in_(chunk)).values(status="missing"))
            return len(gone)

    def set_missing(self, image_ids: Sequence[int]) -> int:
        """Mark these files missing (the caller's walk did not find them); return how many.

        A rescan computes this set from its own walk and the known files, so an
        unchanged collection costs no write per file.
        """
        with self._write() as conn:
            for chunk in chunks(list(image_ids)):
                conn.execute(update(images).where(images.c.id.in_(chunk)).values(status="missing"))
        return len(image_ids)

    def record_failures(
        self, items: Sequence[tuple[int, str]], of_content: Iterable[int] = ()
    ) -> None:
        """image id -> one-line reason; those images become 'failed'. So do the pending
        twins (files of the same bytes) of the ids in `of_content`, whose bytes are at
        fault (corrupt, too large): else each later scan would load the model to fail on
        the next twin. A failure of one path or one moment (cannot open, out of memory)
        stays with its file."""
        if not items:
            return
        reason = dict(items)
        spread = [i for i in of_content if i in reason]
        stmt = (
            update(images)
            .where(images.c.id == bindparam("b_id"))
            .values(status="failed", error=bindparam("b_error"))
        )
        twins = (
            update(images)
            .where(images.c.sha256 == bindparam("b_sha"), images.c.status == "pending")
            .values(status="failed", error=bindparam("b_error"))
        )
        with self._write() as conn:
            conn.execute(stmt, [{"b_id": i, "b_error": r} for i, r in reason.items()])
            by_content = []
            for chunk in chunks(spread):
                rows = conn.execute(
                    select(images.c.id, images.c.sha256).where(
                        images.c.id.in_(chunk), images.c.sha256.is_not(None)
                    )
                )
                by_content += [{"b_sha": sha, "b_error": reason[i]} for i, sha in rows]
            if by_content:
                conn.execute(twins, by_content)

    def set_image_meta(self, items: Sequence[tuple[int, ImageMeta]]) -> None:
        """Store what decoding learned (size after EXIF orientation, format, mode)."""
        if not items:
            return
        with self._write() as conn:
            set_meta(conn, items, images.c.id)


def _first_seen(collection_id: int, relpath: str, run_id: int, now: Any) -> dict[str, Any]:
    return {
        "collection_id": collection_id,
        "relpath": relpath,
        "first_seen_run": run_id,
        "first_seen_at": now,
    }


def hidden_by(unreadable_dirs: Iterable[str]) -> Callable[[str], bool]:
    """relpath -> may that file still exist, unseen because a folder above it (or the
    collection's root: then every file) could not be read? Its absence proves nothing."""
    keep = [p.strip("/") for p in unreadable_dirs]
    if any(p in ("", ".") for p in keep):
        return lambda relpath: True
    prefixes = tuple(p + "/" for p in keep)
    return lambda relpath: bool(prefixes) and relpath.startswith(prefixes)


def _meta_of(conn: Connection, sha256s: set[str]) -> list[tuple[str, ImageMeta]]:
    """(sha256, facts) of these contents, where a decode has recorded them."""
    found: dict[str, ImageMeta] = {}
    for chunk in chunks(sorted(sha256s)):
        rows = conn.execute(
            select(
                images.c.sha256, images.c.width, images.c.height, images.c.format, images.c.mode
            ).where(images.c.sha256.in_(chunk), images.c.width.is_not(None))
        )
        for sha256, *facts in rows:
            found.setdefault(sha256, ImageMeta(*facts))
    return list(found.items())


def set_meta(conn: Connection, items: Sequence[tuple[Any, ImageMeta]], key: Any) -> None:
    """Update width, height, format, mode of the rows whose `key` column equals each item's key."""
    if not items:
        return
    values = {k: bindparam(f"b_{k}") for k in ("width", "height", "format", "mode")}
    params = [{"b_key": k} | {f"b_{f}": v for f, v in asdict(m).items()} for k, m in items]
    conn.execute(update(images).where(key == bindparam("b_key")).values(values), params)

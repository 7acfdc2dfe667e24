"""The `Catalog`: every read and write the pipeline and the CLI make.

How a scan uses it (artnote.pipeline drives this; nothing here calls the model):

1. `cid = ensure_collection(root)`; `run = start_run(settings, model, adapter)`
   (which first marks runs left 'running' by dead processes as 'interrupted').
2. `known = known_files(cid)`; discovery walks the folder and
   `artnote.discover.plan_scan(entries, known)` splits it into unchanged files
   (same relpath, size, mtime_ns: never opened) and new or changed ones. (A rescan
   first tries `hashed_files(cid)`, which is enough when nothing changed.)
3. Hash the new and changed files, `record_files(cid, run, states)`; `touch_seen` only
   the known files that come back after being missing (an unchanged file costs no
   write); `set_missing(ids)` for the known files the walk did not find, except
   those `hidden_by` an unreadable folder. (`mark_missing(cid, run)` does the same
   for a caller that touches every file it sees.)
4. `pending_images(cid)` gives one file per content that has no annotation yet
   (duplicates are annotated once); decode, annotate, then `set_image_meta`,
   `add_annotations(run, ...)` or `record_failures(...)` batch by batch.
5. `finish_run(run, outcome, counts, problems)`.

Annotations belong to contents (sha256): every image with that hash is
'annotated' as soon as one of its files is, including files found later.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from artnote.catalog import linking, objects, queries, reviews, search
from artnote.catalog.engine import WRITE_OPTIONS, translate_errors
from artnote.catalog.export_table import column_batches
from artnote.catalog.models import RUN_OUTCOMES, utcnow
from artnote.catalog.queries import (
    annotations,
    chunks,
    collections,
    images,
    runs,
)
from artnote.catalog.rows import ImageInfo, ImageMeta, PendingImage
from artnote.catalog.tracking import FileTracking, set_meta
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.errors import CatalogError
from artnote.export import CellColumns
from artnote.records import Annotation, CollectionRecord
from artnote.text import TEXT_FIELDS, clean_fields


class Catalog(FileTracking):
    """Queries over one catalog database. Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._write_engine = engine.execution_options(**WRITE_OPTIONS)
        self.where = where  # the path or URL, for messages

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self._engine.dialect.name == "sqlite"

    def close(self) -> None:
        """Close every pooled connection; the Catalog must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with translate_errors(self.where), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; on SQLite it holds the write lock from its first statement."""
        with translate_errors(self.where), self._write_engine.begin() as conn:
            yield conn

    # --- collections and runs -------------------------------------------------

    def ensure_collection(self, root: Path | str) -> int:
        """The id of the collection rooted at `root` (resolved to an absolute path), made if new."""
        key = str(Path(root).expanduser().resolve())
        with self._write() as conn:
            found = conn.scalar(select(collections.c.id).where(collections.c.root == key))
            if found is not None:
                return int(found)
            new = conn.execute(insert(collections).values(root=key, created_at=utcnow()))
            return int(new.inserted_primary_key[0])

    def start_run(self, settings: Mapping[str, Any], model: str, adapter: str | None) -> int:
        """Record a run of this process as 'running' and return its id."""
        self.interrupt_stale_runs()
        with self._write() as conn:
            new = conn.execute(
                insert(runs).values(
                    started_at=utcnow(),
                    outcome="running",
                    settings=dict(settings),
                    model=model,
                    adapter=adapter,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            )
            return int(new.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        outcome: str,
        counts: Mapping[str, Any],
        problems: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Close a run. `problems` are (path, reason) for what discovery could not read."""
        if outcome not in RUN_OUTCOMES or outcome == "running":
            raise ValueError(f"a run cannot finish as {outcome!r}")
        with self._write() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    outcome=outcome,
                    finished_at=utcnow(),
                    counts=dict(counts),
                    problems=[list(p) for p in problems] or None,
                )
            )

    def interrupt_stale_runs(self) -> int:
        """Mark 'running' runs of dead processes on this host as 'interrupted'; return how many.

        Runs of other hosts are left alone: their processes cannot be checked from here.
        """
        host = socket.gethostname()
        with self._write() as conn:
            rows = conn.execute(
                select(runs.c.id, runs.c.pid).where(
                    runs.c.outcome == "running", runs.c.host == host
                )
            ).all()
            dead = [run_id for run_id, pid in rows if not _pid_alive(pid)]
            for chunk in chunks(dead):
                conn.execute(
                    update(runs)
                    .where(runs.c.id.in_(chunk))
                    .values(outcome="interrupted", finished_at=utcnow())
                )
            return len(dead)

    # --- annotations ----------------------------------------------------------

    def annotated_contents(self, sha256s: Iterable[str]) -> set[str]:
        """Which of these contents already have at least one annotation."""
        with self._read() as conn:
            return queries.annotated_contents(conn, set(sha256s))

    def add_annotations(
        self,
        run_id: int | None,
        items: Sequence[tuple[int, Annotation]],
        meta: Mapping[int, ImageMeta] | None = None,
        only_new: bool = False,
    ) -> list[int]:
        """Store annotations of the files with these ids; return the new annotation ids.

        Each annotation belongs to its file's content: every image with that
        sha256 becomes 'annotated', and learns `meta` (size, format, mode) when given.
        With `only_new`, contents that gained an annotation meanwhile (a concurrent
        scan) are skipped, checked under the write lock: never two rows for one content.
        """
        if not items:
            return []
        now = utcnow()
        with self._write() as conn:
            sha_of: dict[int, str | None] = {}
            for chunk in chunks([image_id for image_id, _ in items]):
                stmt = select(images.c.id, images.c.sha256).where(images.c.id.in_(chunk))
                sha_of.update((i, s) for i, s in conn.execute(stmt))
            known = {s for s in sha_of.values() if s}
            taken = queries.annotated_contents(conn, known) if only_new else set()
            rows = []
            for image_id, annotation in items:
                sha = sha_of.get(image_id)
                if sha is None:
                    raise ValueError(f"image {image_id} is not in the catalog or was never hashed")
                if sha in taken:
                    continue
                rows.append(_annotation_row(annotation, sha, image_id, run_id, now))
                if only_new:
                    taken.add(sha)
            if not rows:
                return []
            stmt = insert(annotations).returning(annotations.c.id, sort_by_parameter_order=True)
            new_ids = [int(i) for (i,) in conn.execute(stmt, rows)]
            search.refresh(conn, {r["sha256"] for r in rows})
            for chunk in chunks(sorted({r["sha256"] for r in rows})):
                conn.execute(
                    update(images)
                    .where(images.c.sha256.in_(chunk), images.c.status != "missing")
                    .values(status="annotated", error=None)
                )
            if meta:
                # Every file with the same content has the same pixels.
                by_content = [(sha_of[i], m) for i, m in meta.items() if sha_of.get(i)]
                set_meta(conn, by_content, images.c.sha256)
            return new_ids

    def pending_images(
        self,
        collection_id: int,
        *,
        force: bool = False,
        limit: int | None = None,
        reannotate: bool = False,
        adapter: str | None = None,
        expected_prompts: Callable[[list[PendingImage]], list[str]] | None = None,
    ) -> list[PendingImage]:
        """One present file per content that still needs the model, in path order.

        Contents with an annotation and files that failed are left out unless
        `force` (annotate everything again; the new annotation becomes current),
        or, with `reannotate`, unless their current annotation came from an
        adapter other than `adapter` (a content hash; None is the base model) or
        from another prompt than `expected_prompts` gives for it (the prompt hash
        each image's annotation would have now; None: prompts are not compared).
        PendingImage.reason says which. Reviews are never touched: corrections stay
        laid over any new annotation.
        """
        with self._read() as conn:
            found = queries.pending_images(
                conn, collection_id, force=force, limit=limit, reannotate=reannotate
            )
        if not reannotate or force:
            return found
        expected = expected_prompts(found) if expected_prompts else [None] * len(found)
        out = []
        for item, prompt in zip(found, expected, strict=True):
            if item.current is not None:
                current_adapter, current_prompt = item.current
                if current_adapter != adapter:
                    item = replace(item, reason="adapter")
                elif prompt is not None and current_prompt != prompt:
                    item = replace(item, reason="prompt")
                else:
                    continue
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
        return out

    # --- reviews and adapters ---------------------------------------------------

    def add_reviews(
        self,
        items: Sequence[tuple[int, str, str | None, str | None]],
        *,
        by: str | None,
        source: str,
        expected: Mapping[int, tuple[int, int]] | None = None,
    ) -> int:
        """Append (image_id, kind, field, value) reviews in one transaction; see reviews.py.

        `expected`: image id -> the revision the reviews were based on (newest review id
        of its content, current annotation id; 0 for none). Checked inside the write
        transaction, under the catalog's write lock: ConflictError when one changed."""
        if not items:
            return 0
        with self._write() as conn:
            if expected:
                reviews.check_revisions(conn, expected)
            return reviews.record_reviews(conn, items, by=by, source=source)

    def collection_roots(self) -> list[str]:
        """The absolute roots of every scanned collection."""
        with self._read() as conn:
            return list(conn.scalars(select(collections.c.root).order_by(collections.c.id)))

    def review_states(self, sha256s: Iterable[str]) -> dict[str, reviews.ReviewState]:
        """Net corrections and status of these contents (see reviews.py)."""
        with self._read() as conn:
            return reviews.review_states(conn, sha256s)

    def stale_explanations(self, sha256s: Iterable[str]) -> dict[str, reviews.StaleExplanation]:
        """The contents among these whose explanation was written for another dominant
        emotion than the current one (not approved with them, never curated)."""
        with self._read() as conn:
            return reviews.stale_explanations(conn, sha256s)

    def curated(self) -> list[dict[str, Any]]:
        """Per reviewed content: path, sha256, the fields curators settled (for training) and
        `references` ({field: [curated value first, then every reference text]}, or {});
        see reviews.curated."""
        with self._read() as conn:
            return reviews.curated(conn)

    def add_reference_texts(
        self, items: Iterable[tuple[str, str, str, str | None]], *, source: str
    ) -> int:
        """Append (sha256, field, text, emotion) reference texts for evaluation in one
        transaction, consumed in batches; texts a content already has are skipped. Returns
        how many were added."""
        with self._write() as conn:
            return reviews.add_reference_texts(conn, items, source=source)

    def register_adapter(self, **values: Any) -> int:
        """Record a trained adapter: name, path, content_hash, base_model, family, metrics,
        training_samples."""
        with self._write() as conn:
            return reviews.register_adapter(conn, **values)

    def adapters(self) -> list[dict[str, Any]]:
        """Registered adapters, oldest first."""
        with self._read() as conn:
            return reviews.list_adapters(conn)

    # --- collection records (artnote.catalog.objects) ----------------------------

    def import_records(
        self, rows: Sequence[objects.IncomingRecord], **options: Any
    ) -> objects.ImportOutcome:
        """Write a validated records import in one transaction and link the images its rules
        (and earlier imports') match; `options` as objects.import_records."""
        with self._write() as conn:
            return objects.import_records(conn, rows, **options)

    def link_images(self, collection_id: int | None = None) -> int:
        """Link the present images without an object (of one collection; None: all) by the
        rules imports stored; return how many were linked. Call after recording files."""
        with self._read() as conn:  # no records imported: no write lock taken, per scan
            if not linking.has_rules(conn):
                return 0
        with self._write() as conn:
            return linking.link_unlinked(conn, collection_id)

    def records_for(self, image_ids: Iterable[int]) -> dict[int, CollectionRecord]:
        """image id -> the current record of the object it shows (linked images only)."""
        with self._read() as conn:
            return objects.records_for(conn, list(image_ids))

    def record_counts(self) -> dict[str, int]:
        """objects, objects_with_images, objects_without_images, images_without_record."""
        with self._read() as conn:
            return objects.record_counts(conn)

    def object_rows(self) -> Iterator[dict[str, Any]]:
        """Per object (by object number): object_number, record, images [{image_id, path,
        relpath, primary}], primary first; see objects.object_rows."""
        with self._read() as conn:
            yield from objects.object_rows(conn)

    # --- reports --------------------------------------------------------------

    def export_rows(
        self,
        provenance: bool = True,
        statuses: Collection[str] | None = None,
        *,
        by_object: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """One dict per present image with a current annotation, streamed in path order
        (`by_object`: by object number, each object's primary image first, then the images
        without a record in path order).

        Keys: the CSV columns of artnote.export plus image_id, annotation_id,
        run_id, root, relpath, adapter_name, alt_text_truncated and provenance (dict);
        once records were imported, also object_number, title, maker and primary (None
        for an image without a record). `statuses` (draft, corrected, approved) keeps
        only rows with one of them.
        """
        wanted = _check_statuses(statuses)
        with self._read() as conn:
            states = reviews.review_states(conn)  # few next to images: held in memory
            with_objects = by_object or objects.any_objects(conn)
            for row in queries.export_rows(conn, provenance, with_objects, by_object):
                if wanted is not None and _status(states.get(row["sha256"])) not in wanted:
                    continue
                # Catalogs written before model text was cleaned may hold control characters.
                row, cleaned = clean_fields(row)
                if cleaned and isinstance(row.get("provenance"), dict):
                    before = row["provenance"].get("cleaned") or []
                    names = [f for f in TEXT_FIELDS if f in cleaned or f in before]
                    row["provenance"] = {**row["provenance"], "cleaned": names}
                yield reviews.overlay(row, states.get(row["sha256"]))

    def has_records(self) -> bool:
        """Whether collection records were imported (exports then lead with them)."""
        with self._read() as conn:
            return objects.any_objects(conn)

    def export_table(
        self, statuses: Collection[str] | None = None, *, records: bool = False
    ) -> CellColumns:
        """The CSV export's rows: cell values in artnote.export.CSV_COLUMNS order, reviews
        laid over (corrected values, status), streamed in path order; the fast path of
        `artnote export csv`, equal to export_rows() in content (`statuses` as there).
        `records`: object_number, title and maker first (OBJECT_COLUMNS + CSV_COLUMNS).
        Iterate it for the rows; write_csv_cells takes them a batch of columns at a time."""
        wanted = _check_statuses(statuses)

        def batches() -> Iterator[list[Sequence[Any]]]:
            with self._read() as conn:
                yield from column_batches(conn, wanted, records)

        return CellColumns(batches)

    def status_counts(self) -> dict[str, int]:
        """Counts: images (present), annotated, failed, pending, missing, corrected,
        approved, adapters, runs; and once records were imported, record_counts()'s."""
        with self._read() as conn:
            counts = queries.status_counts(conn)
            counts.update(reviews.review_counts(conn))
            if objects.any_objects(conn):
                counts.update(objects.record_counts(conn))
            return counts

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of failed images, then what the latest finished run could not read."""
        with self._read() as conn:
            return queries.failures(conn)

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Images whose object's record has every word of `query` in its title or maker,
        then contents whose current values (corrections over model output) match every
        word, best first (BM25 on SQLite).

        Each hit: image_id, path, sha256, annotation_id, alt_text, description,
        explanation (current values), snippet, rank, object_number, title, maker.
        """
        with self._read() as conn:
            return search.search(conn, query, limit, fts=self.is_sqlite)

    def find_image(self, ref: str) -> ImageInfo:
        """An image by exported path, numeric id, or unique sha256 prefix (NotFoundError)."""
        with self._read() as conn:
            return queries.find_image(conn, ref)


def _annotation_row(
    annotation: Annotation, sha256: str, image_id: int, run_id: int | None, now: Any
) -> dict[str, Any]:
    prov = annotation.provenance
    emotions = {label.replace(" ", "_"): p for label, p in annotation.emotions.items()}
    missing = [c for c in EMOTION_COLUMNS if c not in emotions]
    if missing:
        raise ValueError(f"annotation lacks emotions {missing}; expected all of {EMOTIONS}")
    return {
        "sha256": sha256,
        "image_id": image_id,
        "run_id": run_id,
        "alt_text": annotation.alt_text,
        "alt_text_truncated": annotation.alt_text_truncated,
        "description": annotation.description,
        **{c: float(emotions[c]) for c in EMOTION_COLUMNS},
        "dominant_emotion": annotation.dominant_emotion,
        "explanation": annotation.explanation,
        "provenance": asdict(prov),
        "model": prov.model,
        "model_revision": prov.revision,
        "adapter": prov.adapter,
        "adapter_name": prov.adapter_name,
        "prompt_version": prov.prompt_version,
        "prompt_hash": prov.prompt_hash,
        "ms": float(prov.ms),
        "created_at": now,
    }


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) sends CTRL_C_EVENT there: never probe, assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    except OSError:
        return False
    return True


STATUSES = ("draft", "corrected", "approved")


def _check_statuses(statuses: Collection[str] | None) -> frozenset[str] | None:
    if not statuses:
        return None
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise CatalogError(f"unknown status {unknown[0]!r}: choose {', '.join(STATUSES)}")
    return frozenset(statuses)


def _status(state: reviews.ReviewState | None) -> str:
    return "draft" if state is None else state.status

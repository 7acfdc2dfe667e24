"""The review page's reads of the catalog, in SQLAlchemy Core on the catalog's engine.

artnote.catalog has no query for these (a filtered, priority-ordered page; one image with
its history), so they are written here over its tables (artnote.catalog.queries and
.reviews); every write still goes through artnote.corrections.

Built for 100,000 images: the grid streams only numbers (ids, the nine probabilities)
from SQL, keeps a bounded heap of the rows up to the page asked for, and reads texts for
those rows alone. Review statuses (few next to images, and append-only) are summarised
once per newest review id. One image's page reads through web.review_image.
"""

from __future__ import annotations

import heapq
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import numpy as np
from sqlalchemy import Connection, and_, case, func, null, or_, select

from artnote.catalog.queries import (
    annotations,
    collections,
    current_annotation_id,
    image_path,
    images,
)
from artnote.catalog.reviews import dominant, reviews
from artnote.catalog.search import search_texts
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS, normalise_emotion

STATUSES = ("draft", "corrected", "approved")
STREAM_BATCH = 2000
SEARCH_LIMIT = 1000  # the best matches of a full-text query that the grid can show
FOLDERS_SHOWN = 500
MAX_ID = 2**63 - 1  # an INTEGER column: larger ids cannot exist
FORM_PREFIX = "f_"  # filters carried through a POST form, apart from its own fields
MAX_TERMS = 16  # words of a full-text query: each costs a pass over the index
MIN_PREFIX = 2  # a prefix term ('a*') shorter than this matches nearly every word


@dataclass(frozen=True)
class Filters:
    status: str = ""
    emotion: str = ""
    folder: str = ""
    q: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], prefix: str = "") -> Filters:
        """Filters from query or form parameters; anything unknown is dropped, not refused.

        `prefix`: the names' prefix (FORM_PREFIX in the image page's forms, whose own
        fields, the dominant emotion among them, must not be taken for filters)."""

        def text(name: str, most: int) -> str:
            value = params.get(prefix + name)
            return value.strip()[:most] if isinstance(value, str) else ""

        status = text("status", 16)
        emotion = normalise_emotion(text("emotion", 32)) or ""
        return cls(
            status if status in STATUSES else "", emotion, text("folder", 4096), text("q", 500)
        )

    def params(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}

    def form_params(self) -> dict[str, str]:
        """params() named as the hidden fields of a form that also edits values."""
        return {FORM_PREFIX + k: v for k, v in self.params().items()}

    def query(self, **extra: object) -> str:
        """The URL query string of these filters (and `extra`), '' when there is none."""
        values = self.params() | {k: str(v) for k, v in extra.items() if v not in (None, "")}
        return urlencode(values)


def priorities(dists: Any) -> tuple[Any, Any]:
    """(entropy, margin) of each row of an (n, 9) array of probabilities: the review order
    is highest entropy first (the model least sure), then the smallest gap between the two
    most likely labels. Rows are normalised first; rounded, so that distributions equal but
    for float noise tie and fall to the margin."""
    p = np.nan_to_num(np.asarray(dists, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    p = np.clip(p, 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    entropy = -(p * logs).sum(axis=1)
    top = np.sort(p, axis=1)
    margin = top[:, -1] - top[:, -2]
    return np.round(entropy, 9), np.round(margin, 9)


def priority(dist: Sequence[float]) -> tuple[float, float]:
    """priorities() of one distribution."""
    entropy, margin = priorities([list(dist)])
    return float(entropy[0]), float(margin[0])


@dataclass(frozen=True)
class Reviewed:
    status: str
    emotion: tuple[str, float, float] | None  # a corrected emotion: (dominant, entropy, margin)


class ReviewIndex:
    """sha256 -> Reviewed for every reviewed content; recomputed when a review is added
    (reviews are append-only, so the newest id tells whether anything changed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest: int | None = None
        self._value: dict[str, Reviewed] = {}

    def get(self, conn: Connection) -> dict[str, Reviewed]:
        newest = conn.scalar(select(func.max(reviews.c.id))) or 0
        with self._lock:
            if newest == self._newest:
                return self._value
        value = _summarise_reviews(conn, newest)
        with self._lock:
            self._newest, self._value = newest, value
        return value


def _summarise_reviews(conn: Connection, newest: int) -> dict[str, Reviewed]:
    # As artnote.catalog.reviews.review_states, without the texts of the corrections.
    r = reviews
    emotion_value = case(
        (and_(r.c.kind == "correction", r.c.field == "emotion"), r.c.value), else_=null()
    )
    stmt = (
        select(r.c.sha256, r.c.kind, r.c.field, emotion_value)
        .where(r.c.id <= newest)
        .order_by(r.c.id)
    )
    status: dict[str, str] = {}
    emotion: dict[str, str] = {}
    for sha, kind, name, value in conn.execution_options(yield_per=STREAM_BATCH).execute(stmt):
        if kind == "correction":
            status[sha] = "corrected"
            if value is not None:
                emotion[sha] = value
        elif name is None:
            status[sha] = "approved"
        elif status.get(sha, "draft") == "draft":
            status[sha] = "corrected"
    out = {}
    for sha, state in status.items():
        corrected = None
        if sha in emotion:
            dist = json.loads(emotion[sha])
            corrected = (dominant(emotion[sha]), *priority([dist[e] for e in EMOTIONS]))
        out[sha] = Reviewed(state, corrected)
    return out


@dataclass
class GridItem:
    image_id: int
    status: str
    emotion: str
    path: str = ""
    alt_text: str = ""


@dataclass
class GridPage:
    items: list[GridItem]
    total: int  # images that pass the filters
    by_status: dict[str, int] = field(default_factory=dict)  # of those, ignoring the status filter


# The grid's order, ascending: (-entropy, margin, image id); unique thanks to the id.
Key = tuple[float, float, int]
Row = tuple[Key, str, str]  # (key, status, dominant emotion)


def _collection_conditions(conn: Connection, folder: str) -> list[Any] | None:
    """SQL conditions for images under `folder` (an absolute path); None: no filter."""
    if not folder:
        return None
    wanted = os.path.normpath(folder)
    out = []
    for cid, root in conn.execute(select(collections.c.id, collections.c.root)):
        base = os.path.normpath(root)
        if base == wanted or base.startswith(wanted.rstrip(os.sep) + os.sep):
            out.append(images.c.collection_id == cid)
        elif wanted.startswith(base.rstrip(os.sep) + os.sep):
            prefix = wanted[len(base.rstrip(os.sep)) + 1 :].replace(os.sep, "/") + "/"
            # Not a range on relpath: under PostgreSQL's non-C collations 'sub/x' does
            # not sort between 'sub/' and 'sub0'. An escaped LIKE ('%' and '_' in a folder
            # name are themselves), and an exact comparison of the start, since SQLite's
            # LIKE ignores case.
            out.append(
                and_(
                    images.c.collection_id == cid,
                    images.c.relpath.startswith(prefix, autoescape=True),
                    func.substr(images.c.relpath, 1, len(prefix)) == prefix,
                )
            )
    return out


def _stream(
    conn: Connection,
    filters: Filters,
    reviewed: Mapping[str, Reviewed],
    matches: Sequence[str] | None,
    *,
    counts: dict[str, int] | None = None,
    only: int | None = None,
) -> Iterator[Row]:
    """Present annotated images that pass the filters, unordered, with their priority."""
    a = annotations
    stmt = (
        select(
            images.c.id, images.c.sha256, a.c.dominant_emotion, *(a.c[c] for c in EMOTION_COLUMNS)
        )
        .select_from(images)
        .join(a, a.c.id == current_annotation_id())
        .where(images.c.status != "missing")
    )
    if only is not None:
        stmt = stmt.where(images.c.id == only)
    else:
        where = _collection_conditions(conn, filters.folder)
        if where is not None:
            if not where:
                return
            stmt = stmt.where(or_(*where))
        if matches is not None:
            if not matches:
                return
            stmt = stmt.where(images.c.sha256.in_(matches))
    result = conn.execution_options(yield_per=STREAM_BATCH).execute(stmt)
    for rows in result.partitions(STREAM_BATCH):
        entropies, margins = priorities([row[3:] for row in rows])
        for (image_id, sha, emotion, *_), entropy, margin in zip(
            rows, entropies.tolist(), margins.tolist(), strict=True
        ):
            review = reviewed.get(sha)
            status = review.status if review else "draft"
            if review is not None and review.emotion is not None:
                emotion, entropy, margin = review.emotion
            if only is None and filters.emotion and emotion != filters.emotion:
                continue
            if counts is not None:
                counts[status] = counts.get(status, 0) + 1
            if only is None and filters.status and status != filters.status:
                continue
            yield ((-entropy, margin, image_id), status, emotion)


class Lister:
    """The grid's queries over one catalog engine (thread-safe: a connection per call)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.reviewed = ReviewIndex()
        self._folders: tuple[int, list[str]] | None = None

    def _matches(self, filters: Filters) -> list[str] | None:
        if not filters.q:
            return None
        query = search_terms(filters.q)[0]
        if not query:
            return None
        return sorted({hit["sha256"] for hit in self.catalog.search(query, SEARCH_LIMIT)})

    def page(self, filters: Filters, page: int, per_page: int) -> GridPage:
        matches = self._matches(filters)
        counts: dict[str, int] = {}
        total = 0
        with self.catalog.engine.connect() as conn:
            reviewed = self.reviewed.get(conn)

            def counted() -> Iterator[Row]:
                nonlocal total
                for row in _stream(conn, filters, reviewed, matches, counts=counts):
                    total += 1
                    yield row

            # A bounded heap: memory for the rows up to this page, never for all of them.
            best = heapq.nsmallest(page * per_page, counted())
            items = [GridItem(key[2], status, emotion) for key, status, emotion in best]
            items = items[(page - 1) * per_page :]
            _add_texts(conn, items)
        return GridPage(items, total, {s: counts.get(s, 0) for s in STATUSES})

    def neighbours(self, filters: Filters, image_id: int) -> tuple[int | None, int | None, int]:
        """(previous, next) image ids around `image_id` in the grid's order under these
        filters, and its position (1-based; 0 when the filters leave it out), in one pass."""
        matches = self._matches(filters)
        with self.catalog.engine.connect() as conn:
            reviewed = self.reviewed.get(conn)
            mine = next(_stream(conn, filters, reviewed, None, only=image_id), None)
            if mine is None:
                return None, None, 0
            key = mine[0]
            before: Key | None = None
            after: Key | None = None
            position, inside = 1, False
            for other, _, _ in _stream(conn, filters, reviewed, matches):
                if other < key:
                    position += 1
                    before = other if before is None or other > before else before
                elif other > key:
                    after = other if after is None or other < after else after
                else:
                    inside = True
        return (
            before[2] if before else None,
            after[2] if after else None,
            position if inside else 0,
        )

    def folders(self) -> list[str]:
        """Folders holding present images (for the filter's suggestions), cached until an
        image is added."""
        with self.catalog.engine.connect() as conn:
            newest = conn.scalar(select(func.max(images.c.id))) or 0
            if self._folders is not None and self._folders[0] == newest:
                return self._folders[1]
            stmt = (
                select(collections.c.root, images.c.relpath)
                .join(collections, collections.c.id == images.c.collection_id)
                .where(images.c.status != "missing")
            )
            found: set[str] = set()
            for root, relpath in conn.execution_options(yield_per=STREAM_BATCH).execute(stmt):
                parent = relpath.rpartition("/")[0]
                found.add(image_path(root, parent) if parent else os.path.normpath(root))
        folders = sorted(found)[:FOLDERS_SHOWN]
        self._folders = (newest, folders)
        return folders


def search_terms(q: str) -> tuple[str, list[str]]:
    """The full-text query the grid runs for `q`, and the words it left out: prefix terms
    shorter than MIN_PREFIX characters ('a*' matches nearly every word) and every word
    after the first MAX_TERMS (each costs a pass over the index)."""
    kept: list[str] = []
    dropped: list[str] = []
    for word in q.split():
        short = word.endswith("*") and len(word.rstrip("*")) < MIN_PREFIX
        if short or len(kept) >= MAX_TERMS:
            dropped.append(word)
        else:
            kept.append(word)
    return " ".join(kept), dropped


def _add_texts(conn: Connection, items: list[GridItem]) -> None:
    if not items:
        return
    a = annotations
    stmt = (
        select(
            images.c.id,
            collections.c.root,
            images.c.relpath,
            func.coalesce(search_texts.c.alt_text, a.c.alt_text),
        )
        .select_from(images)
        .join(collections, collections.c.id == images.c.collection_id)
        .join(a, a.c.id == current_annotation_id())
        .outerjoin(search_texts, search_texts.c.sha256 == images.c.sha256)
        .where(images.c.id.in_([i.image_id for i in items]))
    )
    found = {i: (image_path(root, rel), alt) for i, root, rel, alt in conn.execute(stmt)}
    for item in items:
        item.path, item.alt_text = found.get(item.image_id, ("", ""))

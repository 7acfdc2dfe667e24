"""Which object an image shows: by the file names an export's image column lists, or by a
file name pattern such as `{object_number}_*.jpg`.

Object numbers are matched to file names the way museums write them into file names:
case-insensitively, with `.`, space, `-`, `_`, `/` and `\\` equivalent and runs of them
counting as one, so "1975.1.1" matches "1975_1_1_recto.jpg". An image column's names
match exactly (case-insensitively) an image's file name, or the end of its relative path
when they hold a "/"; a URL counts by its last path segment.

The rules are stored (record_imports.pattern, object_files), and `link_unlinked` applies
them to every present image that has no object yet: at an import, and after a scan.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, Select, Table, bindparam, insert, select, update

from artnote.catalog.models import (
    CollectionObject,
    ObjectFile,
    ObjectImage,
    RecordImport,
    utcnow,
)
from artnote.catalog.queries import chunks, collections, images
from artnote.errors import RecordsError

objects = cast(Table, CollectionObject.__table__)
object_files = cast(Table, ObjectFile.__table__)
object_images = cast(Table, ObjectImage.__table__)
record_imports = cast(Table, RecordImport.__table__)

PLACEHOLDER = "{object_number}"
PATTERN_MAX = 200
_SEPARATORS = re.compile(r"[.\s_\-/\\]+")
_GLOB_TOKENS = re.compile(r"([*?]|[.\s_\-/\\]+)")


def match_key(text: str) -> str:
    """An object number (or a piece of a file name) as file names are compared."""
    return _SEPARATORS.sub("-", text.casefold()).strip("-")


def file_key(name: str) -> str:
    """A file name or relative path from an image column, as compared with relpaths: a
    URL by its last path segment, "\\" as "/", no leading "./" or "/", casefolded."""
    name = name.strip()
    if "://" in name:
        name = unquote(urlsplit(name).path.rsplit("/", 1)[-1])
    name = name.replace("\\", "/")
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name.casefold()


@dataclass(frozen=True)
class FilenamePattern:
    """A compiled --match-filename pattern: `{object_number}` once, `*` any characters, `?`
    one; matched against an image's file name, or its relative path when it holds "/"."""

    text: str
    before: re.Pattern[str]
    after: re.Pattern[str]
    on_path: bool

    def keys(self, relpath: str) -> Iterator[str]:
        """The match keys the object number could have in this image's name, longest
        first (so "1975.1.10" is preferred over "1975.1" when both are objects)."""
        name = relpath if self.on_path else relpath.rsplit("/", 1)[-1]
        # Runs collapsed on both sides (the pattern's literals too), so positions agree.
        text = _SEPARATORS.sub("-", name.casefold())
        ends = [j for j in range(len(text), 0, -1) if self.after.fullmatch(text, j)]
        for i in range(len(text)):
            if not self.before.fullmatch(text, 0, i):
                continue
            for j in ends:
                if j > i and (key := text[i:j].strip("-")):
                    yield key


def compile_pattern(pattern: str) -> FilenamePattern:
    """RecordsError unless `pattern` holds {object_number} exactly once and no other {}."""
    if len(pattern) > PATTERN_MAX:
        raise RecordsError(f"file name pattern longer than {PATTERN_MAX} characters")
    if pattern.count(PLACEHOLDER) != 1:
        raise RecordsError(
            f"file name pattern {pattern!r} must hold {PLACEHOLDER} once, e.g. "
            f"'{PLACEHOLDER}_*.jpg' or '{PLACEHOLDER}.*'"
        )
    before, after = pattern.split(PLACEHOLDER)
    if any(c in before + after for c in "{}"):
        raise RecordsError(f"file name pattern {pattern!r}: only {PLACEHOLDER} may stand in braces")
    return FilenamePattern(pattern, _glob(before), _glob(after), "/" in pattern)


def _glob(part: str) -> re.Pattern[str]:
    out = []
    for token in _GLOB_TOKENS.split(part.casefold()):
        if token == "*":
            out.append(".*")
        elif token == "?":
            out.append(".")
        elif token and _SEPARATORS.fullmatch(token):
            out.append("-")
        elif token:
            out.append(re.escape(token))
    return re.compile("".join(out), re.DOTALL)


@dataclass
class Rules:
    """Every stored linking rule, and the objects' match keys."""

    patterns: list[tuple[int, FilenamePattern]] = field(default_factory=list)  # newest first
    # file key -> {object id: (position, import id)}
    files: dict[str, dict[int, tuple[int, int | None]]] = field(default_factory=dict)
    keys: dict[str, int | None] = field(default_factory=dict)  # match key -> object (None: 2+)

    def __bool__(self) -> bool:
        return bool(self.patterns or self.files)

    def match(self, relpath: str) -> tuple[int, str, int | None] | None:
        """(object id, how, import id) for an image, or None (no rule, or ambiguous)."""
        folded = relpath.casefold()
        parts = folded.split("/")
        for k in range(len(parts)):  # the longest listed suffix of the path wins
            owners = self.files.get("/".join(parts[k:]))
            if owners:
                if len(owners) > 1:
                    return None  # two objects list this file: a curator must decide
                [(object_id, (_, import_id))] = owners.items()
                return object_id, "column", import_id
        for import_id, pattern in self.patterns:
            for key in pattern.keys(relpath):
                if key in self.keys:
                    object_id = self.keys[key]
                    return None if object_id is None else (object_id, "pattern", import_id)
        return None


def has_rules(conn: Connection) -> bool:
    """Whether any import stored a rule (a pattern, or an image column's files)."""
    pattern = select(record_imports.c.id).where(record_imports.c.pattern.is_not(None))
    listed = select(object_files.c.id)
    return any(conn.scalar(q.limit(1)) is not None for q in (pattern, listed))


def load_rules(conn: Connection) -> Rules:
    rules = Rules()
    stmt = (
        select(record_imports.c.id, record_imports.c.pattern)
        .where(record_imports.c.pattern.is_not(None))
        .order_by(record_imports.c.id.desc())
    )
    seen: set[str] = set()
    for import_id, text in conn.execute(stmt):
        if text not in seen:  # validated when stored; the newest import of a pattern names it
            seen.add(text)
            rules.patterns.append((import_id, compile_pattern(text)))
    f = object_files
    for object_id, name, position, import_id in conn.execute(
        select(f.c.object_id, f.c.name, f.c.position, f.c.import_id)
    ):
        rules.files.setdefault(name, {})[object_id] = (position, import_id)
    if rules.patterns:
        for object_id, key in conn.execute(select(objects.c.id, objects.c.match_key)):
            rules.keys[key] = object_id if key not in rules.keys else None
    return rules


def link_unlinked(
    conn: Connection, collection_id: int | None = None, also: Iterable[int] = ()
) -> int:
    """Link every present image without an object (of one collection, or all) that a
    stored rule matches; set the primary image of the objects that gained one, and of
    those in `also` (whose listed files changed). Returns how many images were linked."""
    rules = load_rules(conn)
    also = set(also)
    if not rules:  # no import asked for links: a scan pays one query per table, no more
        if also:
            set_primaries(conn, also, rules)
        return 0
    linked = select(object_images.c.id).where(object_images.c.image_id == images.c.id)
    stmt = select(images.c.id, images.c.relpath).where(
        images.c.status != "missing", ~linked.exists()
    )
    if collection_id is not None:
        stmt = stmt.where(images.c.collection_id == collection_id)
    now = utcnow()
    found = [(i, link) for i, relpath in conn.execute(stmt) if (link := rules.match(relpath))]
    rows: list[dict[str, Any]] = [
        {"image_id": i, "object_id": o, "linked_by": how, "import_id": imp}
        | {"is_primary": False, "created_at": now}  # set_primaries picks the primary
        for i, (o, how, imp) in found
    ]
    if rows:
        conn.execute(insert(object_images), rows)
    set_primaries(conn, {r["object_id"] for r in rows} | also, rules)
    return len(rows)


def with_images(*columns: Any) -> Select[Any]:
    """SELECT `columns` FROM object_images with each link's image and its collection."""
    return (
        select(*columns)
        .select_from(object_images)
        .join(images, images.c.id == object_images.c.image_id)
        .join(collections, collections.c.id == images.c.collection_id)
    )


def set_primaries(conn: Connection, object_ids: Iterable[int], rules: Rules) -> None:
    """One primary image per object: the linked image its image column lists first, else
    the first in path order (collection root, then relative path)."""
    listed: dict[int, dict[str, int]] = defaultdict(dict)  # object -> file key -> position
    for name, owners in rules.files.items():
        for object_id, (position, _) in owners.items():
            listed[object_id][name] = position
    for chunk in chunks(sorted(set(object_ids))):
        stmt = (
            with_images(
                object_images.c.id,
                object_images.c.object_id,
                object_images.c.is_primary,
                images.c.relpath,
                images.c.status,
            )
            .where(object_images.c.object_id.in_(chunk))
            .order_by(collections.c.root, images.c.relpath, images.c.id)
        )
        by_object: dict[int, list[tuple[int, bool, str, bool]]] = defaultdict(list)
        for link_id, object_id, is_primary, relpath, status in conn.execute(stmt):
            by_object[object_id].append((link_id, bool(is_primary), relpath, status == "missing"))
        changes = []
        for object_id, links in by_object.items():
            names = listed.get(object_id, {})
            best = min(  # a present image before a missing one, then as documented
                range(len(links)),
                key=lambda n: (links[n][3], _listed_at(links[n][2], names), n),
            )
            changes += [
                {"b_id": link_id, "b_primary": n == best}
                for n, (link_id, was, _, _) in enumerate(links)
                if was != (n == best)
            ]
        if changes:
            conn.execute(
                update(object_images)
                .where(object_images.c.id == bindparam("b_id"))
                .values(is_primary=bindparam("b_primary")),
                changes,
            )


def _listed_at(relpath: str, names: dict[str, int]) -> int:
    """Where the image column lists this image (its longest listed path suffix); after
    every listed position when it is not listed."""
    parts = relpath.casefold().split("/")
    for k in range(len(parts)):
        position = names.get("/".join(parts[k:]))
        if position is not None:
            return position
    return 1 << 30

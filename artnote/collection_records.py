"""`artnote import records`: what a museum's collection system knows of its objects.

A CSV or JSON Lines export becomes, per object number, a record of catalogue data (title,
maker, date, medium, dimensions, credit line, rights; every other column kept in
`extra`), revisioned in the catalog like corrections: an unchanged record adds nothing,
a changed one adds a revision and keeps the old. Images are linked to objects by an
image column or a file name pattern (artnote.catalog.linking), now and after later scans.

The file is read as the corrections import reads CSV (UTF-8 with or without BOM, UTF-16
with BOM; comma, semicolon or tab) and validated whole before anything is written, in
one transaction: a missing key column, an empty object number, one object number twice
with different values, bad encoding or a line that is not JSON refuse the whole file
with a one-line error naming the line. Its text is untrusted: control characters are
removed (artnote.text) and each value is capped, so a stray export cannot bloat the
catalog or break the exports made from it.
"""

from __future__ import annotations

import ast
import csv
import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artnote.catalog import Catalog
from artnote.catalog.linking import compile_pattern, file_key
from artnote.catalog.objects import ImportOutcome, IncomingRecord
from artnote.corrections import decoded_lines, delimiter, encoding_error, listed, open_text
from artnote.errors import RecordsError
from artnote.records import RECORD_FIELDS, CollectionRecord
from artnote.text import clean_text

FIELD_MAX = 2_000  # characters of one value: a title or a credit line, not a catalogue essay
EXTRA_MAX = 20_000  # characters of all other columns of one record together, as JSON
NUMBER_MAX = 200  # an object number longer than this is not one
NAME_MAX = 200  # a column name
FILE_MAX = 4_096  # a file name or path in the image column
_PARSE_MAX = 100_000  # a JSON-ish cell (Cleveland's creators) longer than this stays text

# Column names recognised without --map, first found wins; compared casefolded, with "_",
# "-" and camelCase humps as spaces: the Met's CSV ("Object Number", "Artist Display
# Name") and API ("accessionNumber"), the Cleveland Museum of Art's ("accession_number",
# "creators", "creditline"), and plain names.
ALIASES: dict[str, tuple[str, ...]] = {
    "object_number": (
        "object number", "accession number", "accession no", "inventory number", "objectnumber",
    ),
    "title": ("title", "object title"),
    "maker": ("artist display name", "creators", "maker", "artist", "creator"),
    "date": ("object date", "creation date", "date", "dated"),
    "medium": ("medium", "technique", "materials"),
    "dimensions": ("dimensions", "measurements"),
    "credit_line": ("credit line", "creditline"),
    "rights": ("rights and reproduction", "copyright", "rights"),
}  # fmt: skip
# Read when a row's own column for the field is empty: both museums name the culture
# where no artist is known, and Cleveland's licence status is "CC0" where no copyright is.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "maker": ("culture",),
    "rights": ("share license status",),
}
_HUMPS = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPACES = re.compile(r"[\s_\-]+")
_LIST_SEPARATORS = re.compile(r"[;|]")


def column_key(name: str) -> str:
    """A column name as aliases are compared: "Credit_Line", "creditLine" -> "credit line"."""
    return _SPACES.sub(" ", _HUMPS.sub(" ", name).casefold()).strip()


class _Recognised:
    """The header names that say "these are records" (for telling the CSV delimiter)."""

    names = frozenset(a for group in (*ALIASES.values(), *FALLBACKS.values()) for a in group)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and column_key(name) in self.names


@dataclass
class RecordsFile:
    """A validated import file: one record per object number."""

    path: Path
    rows: list[IncomingRecord]
    key_column: str
    columns: dict[str, str]  # field -> the column it was read from (recognised or --map)
    extra_columns: list[str]  # every other column, kept in each record's extra
    image_column: str | None = None
    pattern: str | None = None  # --match-filename
    truncated: list[tuple[int, str]] = field(default_factory=list)  # (line, field) cut
    repeated: int = 0  # rows that repeat an object with the same values


@dataclass
class RecordsReport:
    file: RecordsFile
    outcome: ImportOutcome


@dataclass
class _Columns:
    key: str
    fields: dict[str, str]
    fallbacks: dict[str, list[str]]
    image: str | None
    extra: list[str]


def import_records(
    catalog: Catalog,
    path: Path,
    *,
    key: str | None = None,
    image_column: str | None = None,
    match_filename: str | None = None,
    mapping: Mapping[str, str] | None = None,
) -> RecordsReport:
    """Read, validate and import a records file; see read_records and write_records."""
    records = read_records(
        path, key=key, image_column=image_column, match_filename=match_filename, mapping=mapping
    )
    return write_records(catalog, records)


def write_records(catalog: Catalog, records: RecordsFile) -> RecordsReport:
    """Write a validated file in one transaction and link the images the rules match."""
    outcome = catalog.import_records(
        records.rows,
        source=records.path.name,
        key_column=records.key_column,
        fields=[f for f in RECORD_FIELDS if f in records.columns],
        extra_columns=records.extra_columns,
        pattern=records.pattern,
        image_column=records.image_column,
    )
    return RecordsReport(records, outcome)


def read_records(
    path: Path,
    *,
    key: str | None = None,
    image_column: str | None = None,
    match_filename: str | None = None,
    mapping: Mapping[str, str] | None = None,
) -> RecordsFile:
    """Read and validate FILE.csv or FILE.jsonl (nothing is written). `key`: the
    object-number column (default: a recognised one); `mapping`: field -> column, over
    the recognised names; `image_column` and `match_filename`: how images are linked.
    RecordsError (or, for its encoding, CorrectionError) naming the line of the first
    problem."""
    mapping = dict(mapping or {})
    for name in mapping:
        if name not in RECORD_FIELDS:
            hint = " (use --key)" if name == "object_number" else ""
            raise RecordsError(f"cannot map {name!r}{hint}: fields are {', '.join(RECORD_FIELDS)}")
    pattern = compile_pattern(match_filename).text if match_filename is not None else None
    handle, encoding = open_text(path)
    with handle:
        lines = decoded_lines(path, handle, encoding)
        blank: list[str] = []  # leading blank lines, kept for the line numbers
        try:
            first = next(lines, "")
            while first and not first.strip():
                blank.append(first)
                first = next(lines, "")
        except UnicodeDecodeError as exc:
            raise encoding_error(path, None, f"not {encoding} ({exc.reason})") from None
        if "\x00" in first:  # UTF-16 or UTF-32 without a BOM reads as UTF-8 with NULs
            raise encoding_error(path, 1, f"NUL characters, so not {encoding} text")
        start = first.lstrip()
        if not start:
            raise RecordsError(f"{path} is empty: no header line, no records")
        json_name = path.suffix.lower() in (".jsonl", ".ndjson", ".json")
        if start.startswith("[") or (json_name and not start.startswith("{")):
            raise RecordsError(
                f"{path}:{len(blank) + 1}: not JSON Lines (one JSON object per line) nor "
                "CSV; a JSON array must be written one object per line"
            )
        if start.startswith("{"):
            header, rows = _jsonl_rows(path, itertools.chain(blank, [first], lines), encoding)
        else:
            header, rows = _csv_rows(path, first, lines, encoding, len(blank))
        where = f"{path}:{len(blank) + 1}"  # the header, or the first JSON object
        columns = _resolve(where, header, key, mapping, image_column)
        result = RecordsFile(
            path,
            [],
            columns.key,
            dict(columns.fields),
            columns.extra,
            image_column=columns.image,
            pattern=pattern,
        )
        seen: dict[str, IncomingRecord] = {}
        for line, values in rows:
            row = _record(path, line, values, columns, result.truncated)
            before = seen.get(row.record.object_number)
            if before is None:
                seen[row.record.object_number] = row
            elif _same(before, row):
                result.repeated += 1
            else:
                raise RecordsError(
                    f"{path}:{line}: object number {row.record.object_number!r} is also on "
                    f"line {before.line}, with another {_difference(before, row)}"
                )
    if not seen:
        raise RecordsError(f"{path} has a header but no records")
    result.rows = list(seen.values())
    return result


def _csv_rows(
    path: Path, first: str, lines: Iterator[str], encoding: str, skipped: int
) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """The header (from `first`, after `skipped` blank lines) and the rows, read lazily."""
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter(first, _Recognised()))
    try:
        header = [_name(n) for n in next(reader)]
    except csv.Error as exc:
        raise RecordsError(f"{path}:{skipped + 1}: unreadable header: {exc}") from None
    _check_header(path, header, skipped + 1)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        while True:
            line = reader.line_num + 1 + skipped
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise RecordsError(f"{path}:{line}: unreadable row: {exc}") from None
            except UnicodeDecodeError as exc:  # decoded a block ahead: the line is not exact
                raise encoding_error(
                    path, None, f"not {encoding} after line {line - 1} ({exc.reason})"
                ) from None
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
                raise RecordsError(
                    f"{path}:{line}: {len(cells)} cells but the header has {len(header)} "
                    "columns (a quote missing?)"
                )
            yield line, {n: c for n, c in zip(header, cells, strict=False) if n}

    return header, rows()


def _jsonl_rows(
    path: Path, lines: Iterator[str], encoding: str
) -> tuple[list[str], Iterator[tuple[int, dict[str, Any]]]]:
    """Every line parsed first: the columns are the keys of all objects, in order."""
    parsed: list[tuple[int, dict[str, Any]]] = []
    header: dict[str, None] = {}
    number = 0
    try:
        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError) as exc:
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                raise RecordsError(f"{path}:{number}: not JSON ({why})") from None
            if not isinstance(value, dict):
                raise RecordsError(
                    f"{path}:{number}: a JSON object per line expected, found "
                    f"{type(value).__name__}"
                )
            obj = {_name(k): v for k, v in value.items()}
            header.update(dict.fromkeys(k for k in obj if k))
            parsed.append((number, obj))
    except UnicodeDecodeError as exc:
        raise encoding_error(
            path, None, f"not {encoding} after line {number} ({exc.reason})"
        ) from None
    return list(header), iter(parsed)


def _name(name: str) -> str:
    """A column name as kept: one line, no control characters, capped."""
    return clean_text(name, multiline=False)[0].strip()[:NAME_MAX]


def _check_header(path: Path, header: list[str], line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            raise RecordsError(f"{path}:{line}: column {name!r} appears twice")
        seen.add(name)


def _find(header: list[str], name: str) -> str | None:
    """The header's column called `name`: exactly, else as column_key compares names."""
    if name in header:
        return name
    wanted = column_key(name)
    return next((h for h in header if h and column_key(h) == wanted), None)


def _resolve(
    where: str,
    header: list[str],
    key: str | None,
    mapping: Mapping[str, str],
    image_column: str | None,
) -> _Columns:
    def given(name: str, option: str) -> str:
        found = _find(header, name)
        if found is None:
            raise RecordsError(f"{where}: no column {name!r} ({option}); found: {listed(header)}")
        return found

    def recognised(aliases: tuple[str, ...]) -> str | None:
        keys = {column_key(h): h for h in reversed(header) if h}  # the first of equals wins
        return next((keys[a] for a in aliases if a in keys), None)

    key_column = given(key, "--key") if key is not None else recognised(ALIASES["object_number"])
    if key_column is None:
        raise RecordsError(
            f"{where}: no object-number column (give --key COLUMN); found: {listed(header)}"
        )
    fields: dict[str, str] = {}
    fallbacks: dict[str, list[str]] = {}
    for name in RECORD_FIELDS:
        column = (
            given(mapping[name], f"--map {name}=") if name in mapping else recognised(ALIASES[name])
        )
        if column is not None and column != key_column:
            fields[name] = column
        if name not in mapping:
            backup = [recognised((a,)) for a in FALLBACKS.get(name, ())]
            fallbacks[name] = [c for c in backup if c is not None and c != column]
    image = given(image_column, "--image-column") if image_column is not None else None
    used = {key_column, *fields.values()}
    extra = [h for h in header if h and h not in used]
    for name, backup in fallbacks.items():  # a fallback alone also says the file has it
        if backup and name not in fields:
            fields[name] = backup[0]
            fallbacks[name] = backup[1:]
    return _Columns(key_column, fields, fallbacks, image, extra)


def _record(
    path: Path,
    line: int,
    values: Mapping[str, Any],
    columns: _Columns,
    truncated: list[tuple[int, str]],
) -> IncomingRecord:
    number = _text(values.get(columns.key), multiline=False)
    if not number:
        raise RecordsError(f"{path}:{line}: empty object number (column {columns.key!r})")
    if len(number) > NUMBER_MAX:
        raise RecordsError(
            f"{path}:{line}: object number of {len(number)} characters, over {NUMBER_MAX}"
        )
    named: dict[str, str | None] = {}
    for name in RECORD_FIELDS:
        sources = [columns.fields[name]] if name in columns.fields else []
        sources += columns.fallbacks.get(name, [])
        value = next((v for v in (_display(name, values.get(c)) for c in sources) if v), None)
        if value is not None and len(value) > FIELD_MAX:
            value = _cut(value, FIELD_MAX)
            truncated.append((line, name))
        named[name] = value
    extra: dict[str, Any] = {}
    budget = EXTRA_MAX
    for column in columns.extra:
        value = _kept(values.get(column))
        if value is None:
            continue
        size = len(json.dumps({column: value}, ensure_ascii=False))
        if size > FIELD_MAX or size > budget:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            room = min(FIELD_MAX, budget - len(column) - 8)
            truncated.append((line, column))
            if room < 16:  # no room left worth a fragment: the column is left out
                continue
            value = _cut(text, room)
            size = len(json.dumps({column: value}, ensure_ascii=False))
            if size > budget:  # escapes made it longer than it looked
                continue
        extra[column] = value
        budget -= size
    files = tuple(_files(values.get(columns.image))) if columns.image else ()
    record = CollectionRecord(number, **named, extra=extra)
    return IncomingRecord(record, files, line)


def _text(value: Any, *, multiline: bool) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False)
    return clean_text(value, multiline=multiline)[0].strip()


def _display(name: str, value: Any) -> str | None:
    """A named field's value as a label shows it; None when empty. A list (of a JSON
    export, or written as a JSON or Python literal in a cell, as Cleveland's creators and
    culture are) becomes its items' descriptions or texts, joined by "; "; the Met's
    several makers ("A|B") likewise."""
    if isinstance(value, str) and name == "maker" and value.lstrip()[:1] in ("[", "{"):
        parsed = _literal(value.strip())
        value = value if parsed is None else parsed
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        parts = [_describe(v) for v in value]
        value = "; ".join(p for p in parts if p)
    text = _text(value, multiline=False)
    if name == "maker" and "|" in text:
        text = "; ".join(p.strip() for p in text.split("|") if p.strip())
    return text or None


def _describe(item: Any) -> str:
    if isinstance(item, dict):
        for key in ("description", "name", "full_name", "display_name", "title"):
            if isinstance(item.get(key), str) and item[key].strip():
                return item[key].strip()
        return ""
    return "" if item is None else item.strip() if isinstance(item, str) else json.dumps(item)


def _literal(text: str) -> Any:
    """A JSON or Python literal (Cleveland's CSV writes lists of dicts as Python's repr),
    or None. literal_eval evaluates literals only, never code."""
    if len(text) > _PARSE_MAX:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _kept(value: Any) -> Any:
    """An extra column's value as stored: strings cleaned (lines kept), JSON values
    cleaned throughout; None for an empty one."""
    if value is None:
        return None
    if isinstance(value, str):
        return _text(value, multiline=True) or None
    if isinstance(value, list):
        items = [_kept(v) for v in value]
        return [v for v in items if v is not None] or None
    if isinstance(value, dict):
        items = {_name(str(k)): _kept(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not None} or None
    return value  # numbers, booleans


def _cut(text: str, limit: int) -> str:
    return text[: limit - 1].rstrip() + "…"


def _files(value: Any) -> Iterator[str]:
    """The file keys an image column's cell lists: names separated by ";" or "|", or a
    JSON list of them."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            continue
        for part in _LIST_SEPARATORS.split(clean_text(item, multiline=False)[0]):
            name = file_key(part)
            if name and len(name) <= FILE_MAX:
                yield name


def _same(a: IncomingRecord, b: IncomingRecord) -> bool:
    return a.record == b.record and a.files == b.files


def _difference(a: IncomingRecord, b: IncomingRecord) -> str:
    """What differs between two rows of one object, for the error message."""
    for name in RECORD_FIELDS:
        if getattr(a.record, name) != getattr(b.record, name):
            return name.replace("_", " ")
    for column in dict.fromkeys([*a.record.extra, *b.record.extra]):
        if a.record.extra.get(column) != b.record.extra.get(column):
            return f"{column!r}"
    return "image files"

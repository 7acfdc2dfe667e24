"""Write current annotations as CSV (for spreadsheets) or JSON Lines (for programs).

Rows come from `Catalog.export_rows()`; both writers stream, so a million rows
never sit in memory.

CSV follows RFC 4180 (CRLF line ends; every text cell in double quotes, quotes
inside doubled, so commas and newlines in descriptions need no scan) and is safe
to open in a spreadsheet: a text cell that starts with =, +, -, @, a tab or a
carriage return gets a leading apostrophe, so it is shown as text instead of
being run as a formula (OWASP "CSV injection"); so does one whose leading
apostrophes come before such a character, so that the rule can be undone.
Numbers are never quoted or altered; probabilities are written with full
precision (repr), so the nine of a row still sum to 1. An empty cell is a
missing value. Whoever imports an edited CSV back must drop that one leading
apostrophe (artnote.corrections does).
JSON Lines carries every field, full provenance included, unaltered.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from itertools import islice, repeat
from operator import getitem
from pathlib import PurePath
from typing import Any, TextIO

from artnote.emotions import EMOTION_COLUMNS

CSV_COLUMNS: tuple[str, ...] = (
    "path",
    "sha256",
    "width",
    "height",
    "alt_text",
    "description",
    "dominant_emotion",
    *EMOTION_COLUMNS,
    "explanation",
    "model",
    "adapter",  # adapter content hash; empty for the base model
    "status",  # draft | corrected | approved
    "annotated_at",
    "reviewed_by",  # who last corrected or approved the row; empty for drafts
    "reviewed_at",  # and when (UTC)
    # Extras, after the documented columns: which annotation a spreadsheet row shows.
    "adapter_name",
    "model_revision",
    "prompt_version",
    "image_id",
    "annotation_id",
)
# Once collection records were imported, every export leads with these (the museum's key):
OBJECT_COLUMNS: tuple[str, ...] = ("object_number", "title", "maker")
IMAGES_COLUMN = "object_images"  # --group-by object: every image of the object, primary first
NUMERIC_COLUMNS = frozenset({"width", "height", *EMOTION_COLUMNS, "image_id", "annotation_id"})
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
DEFAULT_STATUS = "draft"  # until corrections exist


def csv_columns(records: bool = False, grouped: bool = False) -> tuple[str, ...]:
    """The export's columns: with records, the object's first; grouped, its images next."""
    lead = OBJECT_COLUMNS if records or grouped else ()
    return lead + ((IMAGES_COLUMN,) if grouped else ()) + CSV_COLUMNS


def write_csv(
    rows: Iterable[Mapping[str, Any]], out: TextIO, columns: Sequence[str] = CSV_COLUMNS
) -> int:
    """Write a header and one line per row dict to `out` (open it with newline='').

    Returns the count. Missing keys are empty cells; status defaults to draft; a list
    (an object's images) is one cell, its items joined by "; ".
    """
    return write_csv_cells(([row.get(c) for c in columns] for row in rows), out, columns)


def write_csv_cells(
    rows: Iterable[Sequence[Any]], out: TextIO, columns: Sequence[str] = CSV_COLUMNS
) -> int:
    """Like write_csv, for rows that are already cell values in `columns` order.

    `Catalog.export_table()` gives such rows; this is the fast path of `artnote export csv`.
    Rows are formatted a batch at a time, column by column (see _csv_lines); rows that
    come as batches of columns already (`CellColumns`) are taken as they come.
    """
    out.write(",".join(columns) + "\r\n")
    numeric = [c in NUMERIC_COLUMNS for c in columns]
    status_at = list(columns).index("status")
    batches = rows.column_batches() if isinstance(rows, CellColumns) else _columns_of(rows, columns)
    count = 0
    with gc_paused():  # a tuple per row and cell, none cyclic: 100,000 rows, 0.2 s of collections
        for batch in batches:
            if len(batch) != len(columns):
                raise ValueError(f"{len(batch)} cells per row for {len(columns)} columns")
            if batch and len(batch[0]):
                out.write(_csv_lines(batch, numeric, status_at))
                count += len(batch[0])
    return count


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for loops that make many small objects, none of
    them cyclic (refcounting frees each), whose collection passes would only walk every
    object in the process again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class CellColumns:
    """Rows of cell values (iterate it) that also come a batch at a time as columns, one
    sequence of cells per column, all of one length: `write_csv_cells` takes them so,
    without making a list per row. `Catalog.export_table()` returns one."""

    def __init__(self, batches: Callable[[], Iterator[list[Sequence[Any]]]]) -> None:
        self._batches = batches

    def column_batches(self) -> Iterator[list[Sequence[Any]]]:
        return self._batches()

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self._batches():
            yield from map(list, zip(*batch, strict=True))


def _columns_of(rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> Iterator[list[Any]]:
    """Rows, _LINES_PER_WRITE at a time, as columns; ValueError for a row of another length."""
    width = len(columns)
    it = iter(rows)
    while batch := list(islice(it, _LINES_PER_WRITE)):
        if any(len(row) != width for row in batch):
            bad = next(len(row) for row in batch if len(row) != width)
            raise ValueError(f"a row of {bad} cells for {width} columns")
        yield list(zip(*batch, strict=True))


def _csv_lines(batch: Sequence[Sequence[Any]], numeric: Sequence[bool], status_at: int) -> str:
    """The CSV lines (each ending in CRLF) of a batch of rows given as its columns: what
    _number_cell and _text_cell give for each cell (an empty status cell: DEFAULT_STATUS),
    made by one %-template per batch. A column takes a slot in the template (see _slot),
    so the loops over its cells run in C, not in Python calls per cell."""
    slots: list[str] = []
    values: list[Sequence[Any]] = []
    for at, (cells, is_number) in enumerate(zip(batch, numeric, strict=True)):
        slot, cells = _slot(cells, is_number, DEFAULT_STATUS if at == status_at else "")
        slots.append(slot)
        if cells is not None:
            values.append(cells)
    line = ",".join(slots) + "\r\n"
    if not values:  # every cell of every row is the same
        return (line % ()) * len(batch[0])
    return "".join(map(line.__mod__, zip(*values, strict=True)))


def _slot(cells: Sequence[Any], numeric: bool, empty: str) -> tuple[str, Sequence[Any] | None]:
    """A column's slot in a line's %-template and the values that fill it, or None when the
    slot is the cell itself (every cell None). `empty`: the cell for None."""
    kinds = set(map(type, cells))
    if kinds == {_NONE}:
        return empty.replace("%", "%%"), None
    if numeric and kinds <= _NUMBERS:  # repr(int) is str(int)
        return "%r", cells
    if kinds == {str} and _SUSPECT_FIRST.isdisjoint(map(getitem, cells, repeat(_FIRST))):
        # Text the formula rule leaves alone (a number as text too): only quotes change.
        if any(map(str.__contains__, cells, repeat('"'))):
            cells = list(map(str.replace, cells, repeat('"'), repeat('""')))
        return '"%s"', cells
    cell = _number_cell if numeric else _text_cell
    return "%s", [cell(v) or empty for v in cells]


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """One JSON object per line: the object's number, title and maker (once records exist),
    the CSV columns, then every other field. Returns the count."""
    count = 0
    for row in rows:
        ordered = {c: row[c] for c in (*OBJECT_COLUMNS, IMAGES_COLUMN) if c in row}
        ordered.update((column, _value(row, column)) for column in CSV_COLUMNS)
        ordered.update((k, v) for k, v in row.items() if k not in ordered)
        out.write(json.dumps(ordered, ensure_ascii=False, allow_nan=False, default=_to_json))
        out.write("\n")
        count += 1
    return count


def _value(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    if column == "status" and value is None:
        return DEFAULT_STATUS
    if column == "annotated_at" and isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _number_cell(value: Any) -> str:
    kind = type(value)
    if kind is float:
        return repr(value)  # the shortest text that reads back as the same float
    if kind is int:
        return str(value)
    if value is None:
        return ""
    return _text_cell(value)  # a number that arrived as text


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        if isinstance(value, list | tuple):
            value = "; ".join(map(str, value))
        elif isinstance(value, bool):
            value = "true" if value else "false"
        else:
            value = _to_json(value) if isinstance(value, datetime | date | PurePath) else str(value)
    if value[:1] in _FORMULA_FIRST or (
        value[:1] == "'" and value.lstrip("'")[:1] in _FORMULA_FIRST
    ):
        # A value that already starts with quotes before a formula character gets one more,
        # so that an import, which takes one off, gives it back unchanged.
        return "\"'" + value.replace('"', '""') + '"'
    return '"' + value.replace('"', '""') + '"'


_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)
# A text that starts with one of these may take the formula rule's apostrophe: _text_cell decides.
_SUSPECT_FIRST = frozenset((*FORMULA_PREFIXES, "'"))
_FIRST = slice(0, 1)  # a text's first character, "" for an empty one
_NONE = type(None)
_NUMBERS = frozenset({int, float})
_LINES_PER_WRITE = 1000


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def group_by_object(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows in Catalog.export_rows(by_object=True) order -> one row per object: its
    primary image's (the first), with IMAGES_COLUMN listing the paths of all its images;
    an image without a record stays a row of its own (its one path listed)."""
    current: dict[str, Any] | None = None
    for row in rows:
        number = row.get("object_number")
        if current is not None and number is not None and number == current["object_number"]:
            current[IMAGES_COLUMN].append(row["path"])
            continue
        if current is not None:
            yield current
        current = {**row, IMAGES_COLUMN: [row["path"]]}
    if current is not None:
        yield current

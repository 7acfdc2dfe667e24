"""Write current annotations as CSV (for spreadsheets) or JSON Lines (for programs).

Rows come from `Catalog.export_rows()`; both writers stream, so a million rows
never sit in memory.

CSV follows RFC 4180 (quoted where needed, CRLF line ends) and is safe to open
in a spreadsheet: a text cell that starts with =, +, -, @, a tab or a carriage
return gets a leading apostrophe, so it is shown as text instead of being run
as a formula (OWASP "CSV injection"). Numeric columns are never altered;
probabilities are written with full precision, so the nine of a row still sum
to 1. Whoever imports an edited CSV back must drop that one leading apostrophe.
JSON Lines carries every field, full provenance included, unaltered.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import operator
from collections.abc import Iterable, Mapping
from datetime import date, datetime
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
    # Extras, after the documented columns: which annotation a spreadsheet row shows.
    "adapter_name",
    "model_revision",
    "prompt_version",
    "image_id",
    "annotation_id",
)
NUMERIC_COLUMNS = frozenset({"width", "height", *EMOTION_COLUMNS, "image_id", "annotation_id"})
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
DEFAULT_STATUS = "draft"  # until corrections exist


def write_csv(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Write a header and one line per row to `out` (open it with newline=''); return the count.

    The hot loop touches only what needs it: csv writes None as '' and ints and
    floats with repr (exact) by itself, so just text cells are checked for formulas.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    cells = [(c, _number_cell if c in NUMERIC_COLUMNS else _text_cell) for c in CSV_COLUMNS]
    pick = operator.itemgetter(*CSV_COLUMNS)
    count = 0
    for row in rows:
        try:
            line = list(pick(row))
        except KeyError:  # a partial row: the careful path
            line = [to_cell(row.get(column)) for column, to_cell in cells]
        else:
            _neutralise(line)
        if line[_STATUS] in (None, ""):
            line[_STATUS] = DEFAULT_STATUS
        writer.writerow(line)
        count += 1
    return count


def _neutralise(line: list[Any]) -> None:
    for i in _TEXT_INDEXES:
        value = line[i]
        if type(value) is str:
            if value and value[0] in _FORMULA_FIRST:
                line[i] = "'" + value
        elif value is not None:
            line[i] = _text_cell(value)
    for i in _NUMERIC_INDEXES:
        value = line[i]
        if value is not None and type(value) not in (int, float):
            line[i] = _number_cell(value)


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """One JSON object per line: CSV columns first, then every other field. Returns the count."""
    count = 0
    for row in rows:
        ordered = {column: _value(row, column) for column in CSV_COLUMNS}
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
    return _text_cell(value)  # None, or a number that arrived as text


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        if isinstance(value, bool):
            return "true" if value else "false"
        value = _to_json(value) if isinstance(value, datetime | date | PurePath) else str(value)
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


_STATUS = CSV_COLUMNS.index("status")
_FORMULA_FIRST = "".join(FORMULA_PREFIXES)
_NUMERIC_INDEXES = [i for i, c in enumerate(CSV_COLUMNS) if c in NUMERIC_COLUMNS]
_TEXT_INDEXES = [i for i, c in enumerate(CSV_COLUMNS) if c not in NUMERIC_COLUMNS]


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

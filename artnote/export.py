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
import json
from collections.abc import Iterable, Mapping, Sequence
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
    "reviewed_by",  # who last corrected or approved the row; empty for drafts
    "reviewed_at",  # and when (UTC)
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
    """Write a header and one line per row dict to `out` (open it with newline='').

    Returns the count. Missing keys are empty cells; status defaults to draft.
    """
    return write_csv_cells(
        ([row.get(c) for c in CSV_COLUMNS] for row in rows),
        out,
    )


def write_csv_cells(rows: Iterable[Sequence[Any]], out: TextIO) -> int:
    """Like write_csv, for rows that are already cell values in CSV_COLUMNS order.

    `Catalog.export_table()` gives such rows; this is the fast path of `artnote export csv`.
    """
    out.write(",".join(CSV_COLUMNS) + "\r\n")
    formatters = [_number_cell if c in NUMERIC_COLUMNS else _text_cell for c in CSV_COLUMNS]
    count = 0
    lines: list[str] = []
    for row in rows:
        cells = [f(v) for f, v in zip(formatters, row, strict=True)]
        if not cells[_STATUS]:
            cells[_STATUS] = DEFAULT_STATUS
        lines.append(",".join(cells))
        if len(lines) == _LINES_PER_WRITE:
            lines.append("")
            out.write("\r\n".join(lines))
            count += len(lines) - 1
            lines.clear()
    if lines:
        lines.append("")
        out.write("\r\n".join(lines))
        count += len(lines) - 1
    return count


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
    if value is None:
        return ""
    return _text_cell(value)  # a number that arrived as text


def _text_cell(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        if isinstance(value, bool):
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


_STATUS = CSV_COLUMNS.index("status")
_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)
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

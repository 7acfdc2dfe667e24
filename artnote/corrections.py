"""Curators' corrections and approvals: from the command line or an edited CSV export.

Everything is appended as reviews (artnote.catalog.reviews); nothing is
overwritten. A CSV import is validated whole first and written in one
transaction, so a file with one bad row imports nothing (unless skip_bad).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from artnote.catalog import Catalog
from artnote.catalog.reviews import emotion_value
from artnote.emotions import EMOTIONS, normalise_emotion
from artnote.errors import ArtnoteError
from artnote.export import FORMULA_PREFIXES

ALT_TEXT_MAX = 250  # IPTC: aim for 125, never over 250
TEXT_MAX = 20_000  # a description longer than this is a paste error, not a description
# CSV column -> review field
COLUMNS = {
    "alt_text": "alt_text",
    "description": "description",
    "dominant_emotion": "emotion",
    "explanation": "explanation",
}
_FORMULA_FIRST = frozenset(FORMULA_PREFIXES)
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CorrectionError(ArtnoteError):
    """A correction that cannot be accepted (unknown image, bad emotion, too long)."""


@dataclass
class ImportReport:
    rows: int = 0
    corrections: int = 0
    approvals: int = 0
    unchanged_rows: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    imported: bool = False


def check_value(review_field: str, value: str) -> str:
    """The value to store for a corrected field; CorrectionError when it cannot be."""
    value = value.strip()
    if review_field == "emotion":
        label = normalise_emotion(value)
        if label is None:
            raise CorrectionError(f"emotion {value!r} is not one of: {', '.join(EMOTIONS)}")
        return emotion_value({label: 1.0})
    if not value:
        raise CorrectionError(f"{review_field} is empty")
    limit = ALT_TEXT_MAX if review_field == "alt_text" else TEXT_MAX
    if len(value) > limit:
        raise CorrectionError(
            f"{review_field} has {len(value)} characters, over the limit of {limit}"
        )
    return value


def correct(catalog: Catalog, ref: str, values: dict[str, str | None], by: str | None) -> int:
    """Correct fields of one image (IMAGE as path, id or sha256 prefix); return how many."""
    image = catalog.find_image(ref)
    items = [
        (image.id, "correction", name, check_value(name, value))
        for name, value in values.items()
        if value is not None
    ]
    if not items:
        raise CorrectionError(
            "nothing to correct: give --alt-text, --description, --emotion or --explanation"
        )
    return catalog.add_reviews(items, by=by, source="cli")


def approve(catalog: Catalog, refs: list[str], by: str | None) -> int:
    ids = [catalog.find_image(ref).id for ref in refs]
    return catalog.add_reviews([(i, "approval", None, None) for i in ids], by=by, source="cli")


def import_csv(
    catalog: Catalog, path: Path, by: str | None, skip_bad: bool = False
) -> ImportReport:
    """Turn the cells of an edited export that differ from the catalog into corrections."""
    current = list(catalog.export_rows())
    by_sha = {r["sha256"]: r for r in current}
    by_path = {r["path"]: r for r in current}
    roots = catalog.collection_roots()
    report = ImportReport()
    items: list[tuple[int, str, str | None, str | None]] = []
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CorrectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except (StopIteration, csv.Error, UnicodeDecodeError):
            raise CorrectionError(f"{path} is not a CSV export of artnote (no header)") from None
        if not {"sha256", "path"} & set(header) or not set(COLUMNS) & set(header):
            raise CorrectionError(
                f"{path} needs a sha256 or path column and at least one of {', '.join(COLUMNS)}"
            )
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                report.bad.append((line, f"unreadable row: {exc}"))
                break
            if not any(c.strip() for c in cells):
                continue
            report.rows += 1
            record = dict(zip(header, cells, strict=False))
            try:
                row_items = _row_items(record, by_sha, by_path, roots)
            except CorrectionError as exc:
                report.bad.append((line, str(exc)))
                continue
            report.unchanged_rows += not row_items
            items += row_items
    if report.bad and not skip_bad:
        return report
    report.corrections = sum(1 for i in items if i[1] == "correction")
    report.approvals = sum(1 for i in items if i[1] == "approval")
    catalog.add_reviews(items, by=by, source="csv")
    report.imported = True
    return report


def _row_items(record, by_sha, by_path, roots) -> list[tuple[int, str, str | None, str | None]]:
    sha = (record.get("sha256") or "").strip()
    path = _plain(record.get("path") or "").strip()
    if path and not _inside(path, roots):
        raise CorrectionError(f"path {path!r} is outside the catalog's collections")
    row = by_sha.get(sha) if sha else None
    if row is None and _SHA256.fullmatch(sha.lower()):
        # The content this row describes is gone: its path (if still there) holds another
        # image now, whose annotation the row's unedited cells would all "correct".
        raise CorrectionError(
            f"image {path or sha[:12]} changed since this export (its sha256 {sha[:12]} is no "
            "longer in the catalog); export again and redo this row"
        )
    if row is None and path:  # no sha256 column, or a cell a spreadsheet mangled
        row = by_path.get(path)
    if row is None:
        raise CorrectionError(f"unknown image (sha256 {sha[:12] or '-'}, path {path or '-'})")
    out: list[tuple[int, str, str | None, str | None]] = []
    for column, review_field in COLUMNS.items():
        if column not in record:
            continue
        cell = _plain(record[column])
        now = row[column] or ""
        if review_field == "emotion":
            if normalise_emotion(cell) == normalise_emotion(now) or (not cell.strip() and not now):
                continue
        elif cell.strip() == now.strip():
            continue
        out.append((row["image_id"], "correction", review_field, check_value(review_field, cell)))
    status = (record.get("status") or "").strip().lower()
    if status not in ("", "draft", "corrected", "approved"):
        raise CorrectionError(f"status {status!r} is not draft, corrected or approved")
    if status == "approved" and (row["status"] != "approved" or out):
        out.append((row["image_id"], "approval", None, None))
    return out


def _plain(cell: str) -> str:
    """Undo the export's formula neutralising: one leading quote, before quotes and then
    = + - @ tab or CR (artnote.export neutralises exactly those cells)."""
    if cell[:1] == "'" and cell.lstrip("'")[:1] in _FORMULA_FIRST:
        return cell[1:]
    return cell


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.normpath(path)
    return any(
        os.path.commonpath([real, os.path.normpath(r)]) == os.path.normpath(r)
        for r in roots
        if os.path.isabs(real)
    )

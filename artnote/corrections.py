"""Curators' corrections and approvals: from the command line or an edited CSV export.

Everything is appended as reviews (artnote.catalog.reviews); nothing is
overwritten. A CSV import is validated whole first and written in one
transaction, so a file with one bad row imports nothing (unless skip_bad).

A CSV file comes back the way the curator's spreadsheet saved it: comma, semicolon
(Excel where the decimal mark is a comma) or tab separated ("Unicode Text"), in UTF-8
with or without BOM or in UTF-16 with BOM. Legacy code pages (Excel's plain "CSV" on
Windows) are refused, not guessed: Excel writes "?" for every character the code page
lacks, and those cells would then differ from the catalog and come back as corrections.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import re
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from artnote.catalog import Catalog
from artnote.catalog.models import REVIEW_FIELDS
from artnote.catalog.reviews import StaleExplanation, emotion_value
from artnote.emotions import EMOTIONS, normalise_emotion
from artnote.errors import ArtnoteError
from artnote.export import CSV_COLUMNS, FORMULA_PREFIXES
from artnote.text import clean_field

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
# Comma first: the export's own, so it wins a tie (a header of one column).
DELIMITERS = (",", ";", "\t")
_KNOWN_COLUMNS = frozenset(CSV_COLUMNS)
_BOMS = (  # (BOM, codec, name in messages); the utf-16 codec reads the BOM's byte order
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)
_WORKBOOKS = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")  # .xlsx (a zip), .xls (OLE)
_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes surrogateescape could not decode
_SAVE_AS = (
    'save it from the spreadsheet as "CSV UTF-8" or "Unicode Text" (artnote reads UTF-8, '
    "with or without BOM, and UTF-16 with BOM)"
)


class CorrectionError(ArtnoteError):
    """A correction that cannot be accepted (unknown image, bad emotion, too long)."""


ReviewItem = tuple[int, str, str | None, str | None]  # Catalog.add_reviews: id, kind, field, value


@dataclass
class ImportReport:
    rows: int = 0
    corrections: int = 0
    approvals: int = 0
    unchanged_rows: int = 0
    # (line number, or the task of a Label Studio export, reason)
    bad: list[tuple[int, str]] = field(default_factory=list)
    imported: bool = False
    # (line number, why): rows approved whose explanation was written for another emotion
    held_back: list[tuple[int, StaleExplanation]] = field(default_factory=list)
    by: str | None = None  # whom the reviews were recorded for


@dataclass
class ApprovalReport:
    approved: int = 0  # images
    # (IMAGE as given, why): images approved except their explanation, written for
    # another dominant emotion than the current one
    held_back: list[tuple[str, StaleExplanation]] = field(default_factory=list)


def check_value(review_field: str, value: str) -> str:
    """The value to store for a corrected field; CorrectionError when it cannot be."""
    value = value.strip()
    if review_field == "emotion":
        label = normalise_emotion(value)
        if label is None:
            raise CorrectionError(f"emotion {value!r} is not one of: {', '.join(EMOTIONS)}")
        return emotion_value({label: 1.0})
    value = clean_field(review_field, value)[0]  # no control characters, as model text
    if not value:
        raise CorrectionError(f"{review_field} is empty")
    limit = ALT_TEXT_MAX if review_field == "alt_text" else TEXT_MAX
    if len(value) > limit:
        raise CorrectionError(
            f"{review_field} has {len(value)} characters, over the limit of {limit}"
        )
    return value


def correct(
    catalog: Catalog,
    ref: str,
    values: dict[str, str | None],
    by: str | None,
    *,
    source: str = "cli",
    expected: tuple[int, int] | None = None,
    then_approve: bool = False,
) -> int:
    """Correct fields of one image (IMAGE as path, id or sha256 prefix); return how many.

    `source`: where the edit was made ('cli', 'web'), kept with each review.
    `expected`: the revision the edit is based on (newest review id of the content and
    current annotation id, 0 for none); checked in the write transaction, ConflictError
    when the image has changed since. `then_approve`: approve the image as it then
    stands, in the same transaction."""
    image = catalog.find_image(ref)
    items: list[tuple[int, str, str | None, str | None]] = [
        (image.id, "correction", name, check_value(name, value))
        for name, value in values.items()
        if value is not None
    ]
    if not items:
        raise CorrectionError(
            "nothing to correct: give --alt-text, --description, --emotion or --explanation"
        )
    count = len(items)
    if then_approve:
        items.append((image.id, "approval", None, None))
    catalog.add_reviews(
        items,
        by=by,
        source=source,
        expected=None if expected is None else {image.id: expected},
    )
    return count


def approve(
    catalog: Catalog,
    refs: list[str],
    by: str | None,
    fields: Iterable[str] | None = None,
    *,
    source: str = "cli",
    expected: Mapping[str, tuple[int, int]] | None = None,
) -> ApprovalReport:
    """Approve images (IMAGE as path, id or sha256 prefix) as they stand: every current
    field, or only `fields` (review field names: alt_text, description, emotion,
    explanation). An explanation written for another dominant emotion than the current
    one is approved only when named in `fields`; the report lists the images where it
    was held back. `expected`: IMAGE -> the revision the approval is based on (see
    correct()), checked in the write transaction."""
    names = list(dict.fromkeys(fields)) if fields is not None else [None]
    unknown = [n for n in names if n is not None and n not in REVIEW_FIELDS]
    if unknown or not names:
        raise CorrectionError(
            f"cannot approve {', '.join(map(repr, unknown)) or 'no field'}; "
            f"fields are: {', '.join(REVIEW_FIELDS)}"
        )
    found = {ref: catalog.find_image(ref) for ref in refs}
    catalog.add_reviews(
        [(image.id, "approval", name, None) for image in found.values() for name in names],
        by=by,
        source=source,
        expected=None
        if expected is None
        else {found[ref].id: seen for ref, seen in expected.items() if ref in found},
    )
    report = ApprovalReport(approved=len({image.id for image in found.values()}))
    if None in names:
        stale = catalog.stale_explanations(i.sha256 for i in found.values() if i.sha256)
        report.held_back = [(ref, stale[i.sha256]) for ref, i in found.items() if i.sha256 in stale]
    return report


def stale_explanation(catalog: Catalog, ref: str) -> StaleExplanation | None:
    """Whether an image's explanation was written for another dominant emotion than its
    current one (so an approval would not approve it)."""
    sha = catalog.find_image(ref).sha256
    return catalog.stale_explanations([sha]).get(sha) if sha else None


def import_csv(
    catalog: Catalog, path: Path, by: str | None, skip_bad: bool = False
) -> ImportReport:
    """Turn the cells of an edited export that differ from the catalog into corrections."""
    matcher = RowMatcher(catalog)
    report = ImportReport()
    items: list[ReviewItem] = []
    approved_on: dict[int, int] = {}  # image id -> line of the row that approved it
    handle, encoding = open_text(path)
    with handle:
        lines = decoded_lines(path, handle, encoding)
        try:
            first = next(lines, "")
        except UnicodeDecodeError as exc:
            raise encoding_error(path, None, f"not {encoding} ({exc.reason})") from None
        if not first:
            raise CorrectionError(f"{path} is not a CSV export of artnote (no header)")
        if "\x00" in first:  # UTF-16 or UTF-32 without a BOM reads as UTF-8 with NULs
            raise encoding_error(path, 1, f"NUL characters, so not {encoding} text")
        separator = delimiter(first)
        reader = csv.reader(itertools.chain([first], lines), delimiter=separator)
        try:
            header = [name.strip() for name in next(reader)]
        except (StopIteration, csv.Error):
            raise CorrectionError(f"{path} is not a CSV export of artnote (no header)") from None
        if not {"sha256", "path"} & set(header) or not set(COLUMNS) & set(header):
            raise CorrectionError(
                f"{path} needs a sha256 or path column and at least one of "
                f"{', '.join(COLUMNS)}; found: {listed(header)}"
            )
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                report.bad.append((line, f"unreadable row: {exc}"))
                break
            except UnicodeDecodeError as exc:
                # Decoded a block ahead of the reader, so the line is not known exactly.
                raise encoding_error(
                    path, None, f"not {encoding} after line {line - 1} ({exc.reason})"
                ) from None
            if not any(c.strip() for c in cells):
                continue
            report.rows += 1
            record = dict(zip(header, cells, strict=False))
            try:
                row_items = matcher.items(record)
            except CorrectionError as exc:
                report.bad.append((line, str(exc)))
                continue
            report.unchanged_rows += not row_items
            items += row_items
            approved_on.update((i[0], line) for i in row_items if i[1] == "approval")
    return finish_import(
        catalog, matcher, report, items, approved_on, by=by, source="csv", skip_bad=skip_bad
    )


class RowMatcher:
    """The catalog's current rows, against which edited records become reviews."""

    def __init__(self, catalog: Catalog) -> None:
        self.current = list(catalog.export_rows())
        self.by_sha = {r["sha256"]: r for r in self.current}
        self.by_path = {r["path"]: r for r in self.current}
        self.roots = catalog.collection_roots()

    def items(self, record: Mapping[str, str], *, from_csv: bool = True) -> list[ReviewItem]:
        """The reviews an edited record asks for: corrections for the fields (CSV columns:
        alt_text, description, dominant_emotion, explanation) that differ from the catalog,
        an approval for status "approved"; the image by sha256, then path. CorrectionError
        for an unknown image or a value check_value refuses. `from_csv`: undo the CSV
        export's formula neutralising first."""
        return _row_items(record, self.by_sha, self.by_path, self.roots, from_csv)


def finish_import(
    catalog: Catalog,
    matcher: RowMatcher,
    report: ImportReport,
    items: list[ReviewItem],
    approved_on: dict[int, int],
    *,
    by: str | None,
    source: str,
    skip_bad: bool,
) -> ImportReport:
    """Write a validated import in one transaction, unless it had bad records and not
    `skip_bad`. `approved_on`: image id -> the record (line) that approved it."""
    if report.bad and not skip_bad:
        return report
    report.corrections = sum(1 for i in items if i[1] == "correction")
    report.approvals = sum(1 for i in items if i[1] == "approval")
    catalog.add_reviews(items, by=by, source=source)
    report.imported, report.by = True, by
    if approved_on:
        sha_of = {
            r["image_id"]: r["sha256"] for r in matcher.current if r["image_id"] in approved_on
        }
        stale = catalog.stale_explanations(set(sha_of.values()))
        report.held_back = sorted(
            ((line, stale[sha_of[i]]) for i, line in approved_on.items() if sha_of[i] in stale),
            key=lambda item: item[0],
        )
    return report


def open_text(path: Path) -> tuple[io.TextIOWrapper, str]:
    """The file as text in the encoding its BOM names (UTF-8 without one), and that name.

    Undecodable bytes become lone surrogates (surrogateescape), so that decoded_lines
    can say on which line they are instead of failing somewhere in a block read ahead.
    """
    try:
        raw = open(path, "rb")  # closed by the TextIOWrapper it is handed to
    except OSError as exc:
        raise CorrectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        start = raw.read(4)
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise CorrectionError(f"cannot read {path}: {exc.strerror or exc}") from None
    if start.startswith(_WORKBOOKS):
        raw.close()
        raise CorrectionError(f"{path} is a spreadsheet workbook, not CSV; {_SAVE_AS}")
    codec, name = next(((c, n) for bom, c, n in _BOMS if start.startswith(bom)), ("utf-8", "UTF-8"))
    return io.TextIOWrapper(raw, encoding=codec, errors="surrogateescape", newline=""), name


def decoded_lines(path: Path, lines: Iterable[str], encoding: str) -> Iterator[str]:
    """The lines as the csv reader takes them; CorrectionError at the first one holding
    bytes that are not `encoding`. Lines are counted as csv's line_num counts them."""
    for number, line in enumerate(lines, 1):
        if not line.isascii() and (bad := _UNDECODED.search(line)):
            byte = ord(bad.group()) - 0xDC00
            raise encoding_error(path, number, f"byte 0x{byte:02x} is not {encoding}")
        yield line


def encoding_error(path: Path, line: int | None, what: str) -> CorrectionError:
    where = f"{path}:{line}" if line else str(path)
    return CorrectionError(f"{where}: {what}; {_SAVE_AS}")


def delimiter(header_line: str, known: Container[str] = _KNOWN_COLUMNS) -> str:
    """The delimiter that splits the header into the most `known` column names (artnote's
    export columns by default), then into the most fields, for the error that lists them.

    The header is the one line whose content is known, and no column name holds a comma,
    semicolon or tab; guessing from data rows instead (csv.Sniffer) can be swayed by
    descriptions full of semicolons or commas, and gives up on a few such rows.
    """

    def score(delimiter: str) -> tuple[int, int]:
        try:
            names = next(csv.reader([header_line], delimiter=delimiter), [])
        except csv.Error:
            return (0, 0)
        return (sum(n.strip() in known for n in names), len(names))

    return max(DELIMITERS, key=score)


def listed(names: list[str], most: int = 12, width: int = 40) -> str:
    if not any(names):
        return "no column names"
    shown = [
        (n if len(n) <= width else n[: width - 1] + "…") if n else "(empty)" for n in names[:most]
    ]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(shown) + more


def _row_items(
    record: Mapping[str, str],
    by_sha: Mapping[str, dict],
    by_path: Mapping[str, dict],
    roots: list[str],
    from_csv: bool = True,
) -> list[ReviewItem]:
    plain = _plain if from_csv else str
    sha = (record.get("sha256") or "").strip()
    path = plain(record.get("path") or "").strip()
    if path and not _inside(path, roots):
        raise CorrectionError(f"path {path!r} is outside the catalog's collections")
    row = by_sha.get(sha) if sha else None
    if row is None and _SHA256.fullmatch(sha.lower()):
        # The content this row describes is gone: its path (if still there) holds another
        # image now, whose annotation the row's unedited cells would all "correct".
        raise CorrectionError(
            f"image {path or sha[:12]} changed since this export (its sha256 {sha[:12]} is no "
            "longer in the catalog); export again and redo its changes there"
        )
    if row is None and path:  # no sha256 column, or a cell a spreadsheet mangled
        row = by_path.get(path)
    if row is None:
        raise CorrectionError(f"unknown image (sha256 {sha[:12] or '-'}, path {path or '-'})")
    out: list[ReviewItem] = []
    for column, review_field in COLUMNS.items():
        if column not in record:
            continue
        cell = plain(record[column])
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

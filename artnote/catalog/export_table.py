"""The CSV export's table, a batch of columns at a time: `Catalog.export_table()`.

queries.export_table reads the catalog's cells as columns; here the status filter,
the cleaning of text from catalogs older than cleaning, and the reviews are applied,
as Catalog.export_rows() applies them to its dicts, so the two give the same cells.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import compress
from typing import Any

from sqlalchemy import Connection

from artnote.catalog import queries, reviews
from artnote.export import CSV_COLUMNS, OBJECT_COLUMNS
from artnote.text import MULTILINE_FIELDS, TEXT_FIELDS, clean_text


def column_batches(
    conn: Connection, wanted: frozenset[str] | None, records: bool
) -> Iterator[list[Sequence[Any]]]:
    """Batches of export rows as columns (CSV_COLUMNS, after OBJECT_COLUMNS with `records`),
    reviews laid over; `wanted`: the review statuses to keep (None: all)."""
    lead = len(OBJECT_COLUMNS) if records else 0
    status, sha = lead + CSV_COLUMNS.index("status"), lead + CSV_COLUMNS.index("sha256")
    texts = [(lead + CSV_COLUMNS.index(f), f in MULTILINE_FIELDS) for f in TEXT_FIELDS]
    states = reviews.review_states(conn)  # few next to images: held in memory
    for batch in queries.export_table(conn, records):
        found = list(map(states.get, batch[sha]))
        if wanted is not None:
            keep = [("draft" if s is None else s.status) in wanted for s in found]
            if not any(keep):
                continue
            batch = [list(compress(column, keep)) for column in batch]
            found = list(compress(found, keep))
        for at, multiline in texts:  # as export_rows: for catalogs from before cleaning
            if not _all_printable(batch[at]):
                batch[at] = [
                    clean_text(v, multiline=multiline)[0] if isinstance(v, str) else v
                    for v in batch[at]
                ]
        batch[status] = ["draft"] * len(found)
        if any(found):
            batch[lead:] = _overlaid(batch[lead:], found)
        yield batch


def _overlaid(
    batch: Sequence[Sequence[Any]], found: Sequence[reviews.ReviewState | None]
) -> list[list[Any]]:
    """The CSV_COLUMNS of a batch, reviews.overlay laid on each row with a review state."""
    columns = [list(column) for column in batch]
    for i, state in enumerate(found):
        if state is not None:
            row = {name: column[i] for name, column in zip(CSV_COLUMNS, columns, strict=True)}
            row = reviews.overlay(row, state)
            for column, name in zip(columns, CSV_COLUMNS, strict=True):
                column[i] = row[name]
    return columns


def _all_printable(texts: Sequence[Any]) -> bool:
    """Whether every cell is a printable str (then none needs cleaning), in C loops: of
    ASCII text, bytes.translate drops the printable characters, and none may be left
    (eight times faster than str.isprintable on 100,000 descriptions)."""
    try:
        joined = " ".join(texts)
    except TypeError:  # None, or not a str
        return False
    if joined.isascii():
        return not joined.encode("ascii").translate(None, _PRINTABLE_ASCII)
    return joined.isprintable()


_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))  # what str.isprintable() passes of ASCII

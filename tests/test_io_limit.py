"""Issue 19, goal 6: the fast paths of `artnote export csv` (columns formatted a batch at a
time) and of a rescan (Catalog.hashed_files, discover.plan_folder) give exactly what the
plain paths give."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from artnote import discover, pipeline
from artnote.catalog import FileState, open_catalog, queries
from artnote.catalog.queries import annotations, images
from artnote.cli import app
from artnote.config import Settings
from artnote.emotions import EMOTIONS
from artnote.export import (
    CSV_COLUMNS,
    DEFAULT_STATUS,
    NUMERIC_COLUMNS,
    _csv_lines,
    _number_cell,
    _text_cell,
    csv_columns,
    write_csv,
    write_csv_cells,
)
from artnote.records import Annotation, Provenance

# Texts that each take another branch of the CSV rules: the formula rule, apostrophes before
# it, quotes, separators, line ends, non-ASCII, %-template characters, empty.
HOSTILE = [
    "=SUM(A1)",
    "+1",
    "-minus",
    "@at",
    "\tTab first",
    "\rCR first",
    "'quoted",
    "'=x",
    "''-x",
    'say "hi", then',
    "a, b",
    "two\nlines",
    "",
    "Œuvre — 北斎 🌊",
    "%s %r %% %(x)s",
    "plain",
]
# Control characters that clean_text changes: only a catalog from before cleaning holds them.
UNCLEAN = ["bell\x07ring", "esc\x1bbyte", "line\u2028sep", "vt\x0btab\x0c"]


def reference_csv(rows, columns) -> str:
    """The row-by-row formatter that write_csv_cells was before it took column batches."""
    out = [",".join(columns) + "\r\n"]
    status_at = list(columns).index("status")
    for row in rows:
        cells = [
            (_number_cell if c in NUMERIC_COLUMNS else _text_cell)(v)
            for c, v in zip(columns, row, strict=True)
        ]
        if not cells[status_at]:
            cells[status_at] = DEFAULT_STATUS
        out.append(",".join(cells) + "\r\n")
    return "".join(out)


def test_column_batches_format_as_row_by_row() -> None:
    """Each kind of column (all None, numbers, numbers and None, text the formula rule
    leaves, hostile text, other types) formats as the per-cell functions do."""
    n = len(HOSTILE)
    columns = ("path", "width", "awe", "status", "alt_text", "model", "image_id", "fear")
    when = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    others = [True, when, PurePosixPath("/a/b"), ["x", "=y"], 7, 0.5, None, "'"]
    batches = [
        [
            [f"/m/{i}.jpg" for i in range(n)],
            [None] * n,
            [0.1, 1e-7, 1 / 3, 1, 0.0, 2.5e300, -0.0, 5e-324] * (n // 8),
            [None] * n,
            HOSTILE,
            ["same %s"] * n,
            list(range(n)),
            [None, 1, 0.1, None, 3, 1e-7, None, 1 / 3] * (n // 8),
        ],
        [
            ["plain", 'with "quotes"', "x,y", "é"] * 2,
            [640, 480, None, 1, 2, 3, 4, 5],
            ["0.25", "=1", None, 1.5, 2, 3, 4, 5],  # numbers that arrived as text
            ["approved", "", None, "corrected", "draft", "x", "'", "="],
            others,
            [None, "", "a", "b", "c", "d", "e", "f"],
            [1, 2, 3, 4, 5, 6, 7, 8],
            [None] * 8,
        ],
    ]
    for batch in batches:
        numeric = [c in NUMERIC_COLUMNS for c in columns]
        lines = _csv_lines(batch, numeric, columns.index("status"))
        rows = list(zip(*batch, strict=True))
        assert ",".join(columns) + "\r\n" + lines == reference_csv(rows, columns)


def test_write_csv_cells_takes_rows_or_columns() -> None:
    rows = [
        ["/a.jpg", *([None] * (len(CSV_COLUMNS) - 1))],
        ["/b.jpg", *(["=x"] * 3), *([None] * (len(CSV_COLUMNS) - 4))],
    ]
    out = io.StringIO(newline="")
    assert write_csv_cells(rows, out) == 2
    assert out.getvalue() == reference_csv(rows, CSV_COLUMNS)
    with pytest.raises(ValueError):
        write_csv_cells([["too", "short"]], io.StringIO())


def _hostile_catalog(url: str, folder: Path) -> dict[str, int]:
    """A catalog of len(HOSTILE) images whose texts, numbers and reviews are hostile;
    some texts hold control characters, as a catalog from before cleaning may."""
    n = len(HOSTILE)
    with open_catalog(url) as cat:
        cid = cat.ensure_collection(folder)
        run = cat.start_run({}, "tiny/llava", None)
        states = [FileState(f"{i:02d}.jpg", i, i, f"{i:064x}") for i in range(n)]
        for state in states:
            (folder / state.relpath).write_bytes(b"%d" % state.size)
        ids = cat.record_files(cid, run, states)
        items = []
        for i, state in enumerate(states):
            probs = [0.1, 1e-7, 1 / 3, 0.05, 0.2, 0.01, 0.0, 0.3, 0.0]
            probs[-1] = 1 - sum(probs)
            emotions = dict(zip(EMOTIONS, probs, strict=True))
            adapter = None if i % 3 else "ad" * 8  # a column of text and None
            prov = Provenance("tiny/llava", None if i % 2 else "r1", "llava", adapter,
                              adapter and "v2", "1", "ph", {}, "onnx", "cpu", 2.0)  # fmt: skip
            texts = (HOSTILE[i], HOSTILE[-i - 1], "contentment", HOSTILE[(5 * i) % n])
            items.append((ids[state.relpath], Annotation(*texts[:2], emotions, *texts[2:], prov)))
        cat.add_annotations(run, items)
        cat.finish_run(run, "completed", {})
        emotion = json.dumps({e: 1.0 if e == "fear" else 0.0 for e in EMOTIONS})
        cat.add_reviews(
            [
                (ids["00.jpg"], "correction", "description", '=corrected, "really"\nyes'),
                (ids["00.jpg"], "correction", "emotion", emotion),
                (ids["03.jpg"], "approval", None, None),
                (ids["07.jpg"], "correction", "alt_text", "'@ fixed"),
                (ids["07.jpg"], "approval", None, None),
            ],
            by='curator, "chief"',
            source="test",
        )
        with cat.engine.begin() as conn:  # as written before text was cleaned
            for i, text in enumerate(UNCLEAN):
                conn.execute(
                    update(annotations)
                    .where(annotations.c.sha256 == f"{i + 9:064x}")
                    .values(alt_text=text, description=text + "\n" + text, explanation=text)
                )
            conn.execute(update(images).where(images.c.id == ids["01.jpg"]).values(width=640))
    return ids


@pytest.mark.parametrize("batch", [4, 5000])
def test_export_table_equals_the_row_path_on_hostile_data(
    catalog_url, tmp_path, monkeypatch, batch
) -> None:
    """Catalog.export_table() through write_csv_cells writes what export_rows() through
    write_csv does, and what the row-by-row formatter does, byte for byte: with every
    status filter, with and without collection records, over batches that the filter
    empties (batch=4) or that hold every row."""
    monkeypatch.setattr(queries, "EXPORT_BATCH", batch)
    folder = tmp_path / "collection"
    folder.mkdir()
    _hostile_catalog(catalog_url, folder)
    for records in (False, True):
        if records:
            sheet = tmp_path / "records.csv"
            with open(sheet, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["Object Number", "Title", "Artist Display Name", "Image"])
                writer.writerow(["=A.1", 'Waves, "big"', "", "00.jpg; 05.jpg"])
                writer.writerow(["B.2", "Ünïcode\ttitle", "@maker", "07.jpg"])
            result = CliRunner().invoke(
                app,
                [
                    "import",
                    "records",
                    str(sheet),
                    "--image-column",
                    "Image",
                    "--catalog",
                    catalog_url,
                ],  # fmt: skip
            )
            assert result.exit_code == 0, result.output
        columns = csv_columns(records)
        with open_catalog(catalog_url) as cat:
            assert cat.has_records() == records
            for statuses in (None, ["draft"], ["approved"], ["corrected", "approved"]):
                by_rows, by_table = io.StringIO(newline=""), io.StringIO(newline="")
                rows = cat.export_rows(provenance=False, statuses=statuses)
                count = write_csv(rows, by_rows, columns)
                table = cat.export_table(statuses, records=records)
                assert write_csv_cells(table, by_table, columns) == count
                assert by_table.getvalue() == by_rows.getvalue(), (records, statuses)
                assert by_table.getvalue() == reference_csv(table, columns)
                if statuses is None:
                    text = by_table.getvalue()
                    assert count == len(HOSTILE) and "\x07" not in text and "\x1b" not in text
                    assert '"\'=corrected, ""really""\nyes"' in text
                    parsed = list(csv.DictReader(io.StringIO(text)))
                    assert {r["status"] for r in parsed} == {"draft", "corrected", "approved"}
                    assert {r["awe"] for r in parsed} >= {"1e-07"}
                    assert {r["contentment"] for r in parsed} >= {str(1 / 3)}
                    assert parsed[1]["width"] == "640" and parsed[2]["width"] == ""
                if records and statuses is None:
                    assert '"\'=A.1"' in by_table.getvalue()


# --- the rescan fast path -------------------------------------------------------------


def _collection(tmp_path: Path) -> tuple[Path, str]:
    """Twelve tiny image files in three folders, recorded and annotated without a model."""
    from conftest import annotate_files, peaked

    folder = tmp_path / "collection"
    files = {}
    for k in range(12):
        relpath = f"box{k % 3}/{k:02d}.jpg"
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        (folder / relpath).write_bytes(b"image %d" % k)
        files[relpath] = peaked(k, 0.5)
    db = tmp_path / "catalog.db"
    annotate_files(db, folder, files)
    return folder, str(db)


def _no_model():
    raise AssertionError("these rescans leave new files pending: no model")


def _leave_pending(*args) -> None:
    """An engine that annotates nothing: what was pending stays so."""


def _set_status(db: str, relpaths: list[str], status: str) -> None:
    with open_catalog(db) as cat, cat.engine.begin() as conn:
        conn.execute(update(images).where(images.c.relpath.in_(relpaths)).values(status=status))


def _remove(folder: Path, relpath: str, keep: Path) -> None:
    keep.mkdir(exist_ok=True)
    shutil.move(folder / relpath, keep / Path(relpath).name)


def _change(tmp_path: Path, folder: Path, db: str, case: str, monkeypatch) -> None:
    """Bring the collection into the state of `case` before the measured rescan."""
    keep = tmp_path / "kept"
    if case == "one changed":
        (folder / "box1/04.jpg").write_bytes(b"another image")
    elif case == "one removed":
        (folder / "box2/05.jpg").unlink()
    elif case == "missing come back":
        _remove(folder, "box0/03.jpg", keep)
        _scan(folder, db)  # marks it missing
        shutil.move(keep / "03.jpg", folder / "box0/03.jpg")  # same size and mtime
    elif case == "failed and pending":
        _set_status(db, ["box0/00.jpg"], "failed")
        _set_status(db, ["box1/01.jpg", "box1/07.jpg"], "pending")
    elif case == "failed only":
        _set_status(db, ["box2/02.jpg"], "failed")
    elif case == "folder unreadable":
        (folder / "box2/08.jpg").unlink()  # hidden by its unreadable folder: not missing
        real = discover._open_dir

        def unreadable(path: str):
            if path.endswith(os.sep + "box2"):
                raise PermissionError(13, "Permission denied", path)
            return real(path)

        monkeypatch.setattr(discover, "_open_dir", unreadable)


def _scan(folder: Path, db: str) -> pipeline.ScanSummary:
    with open_catalog(db) as cat:
        return pipeline.scan(
            folder,
            Settings(),
            cat,
            pipeline.AnnotatorFactory(_no_model),
            model_name="tiny-model",
            engine=_leave_pending,
        )


def _state(db: str, folder: Path) -> dict[str, tuple]:
    with open_catalog(db) as cat:
        known = cat.known_files(cat.ensure_collection(folder))
    # mtime_ns left out: the two copies' files were written at different times
    return {rel: (k.image_id, k.size, k.sha256, k.status) for rel, k in known.items()}


CASES = [
    "nothing changed",
    "one changed",
    "one removed",
    "missing come back",
    "failed and pending",
    "failed only",
    "folder unreadable",
]


@pytest.mark.parametrize("case", CASES)
def test_rescan_fast_path_agrees_with_the_slow_path(tmp_path, monkeypatch, case) -> None:
    """The same ScanSummary counts and catalog state whether _discover takes the fast path
    (a walk compared with Catalog.hashed_files) or reads every KnownFile."""
    results = {}
    for path in ("fast", "slow"):
        with monkeypatch.context() as patch:
            taken = []
            real = pipeline._nothing_changed

            def spy(plan, by_status, real=real, taken=taken, path=path):
                taken.append(real(plan, by_status))
                return taken[-1] and path == "fast"

            patch.setattr(pipeline, "_nothing_changed", spy)
            base = tmp_path / path
            folder, db = _collection(base)
            _change(base, folder, db, case, patch)
            taken.clear()
            summary = _scan(folder, db)
        counts = {k: v for k, v in summary.counts().items() if k not in ("seconds", "run_id")}
        problems = [(Path(p).name, reason) for p, reason in summary.problems]
        results[path] = (counts, problems, _state(db, folder), taken[-1])
    assert results["fast"][:3] == results["slow"][:3]
    counts = results["fast"][0]
    assert counts["seen"] == sum(
        counts[k] for k in ("annotated", "duplicates", "unchanged", "pending", "failed")
    )
    # The fast path is taken exactly when nothing changed and nothing waits for the model.
    assert results["fast"][3] == (case in ("nothing changed", "failed only"))
    expected = {
        "nothing changed": {"seen": 12, "unchanged": 12, "missing": 0},
        "one changed": {"seen": 12, "unchanged": 11, "pending": 1},
        "one removed": {"seen": 11, "unchanged": 11, "missing": 1},
        "missing come back": {"seen": 12, "unchanged": 12, "missing": 0},
        "failed and pending": {"seen": 12, "failed": 1, "pending": 2, "unchanged": 9},
        "failed only": {"seen": 12, "failed": 1, "unchanged": 11},
        "folder unreadable": {"seen": 8, "unchanged": 8, "missing": 0},
    }[case]
    assert {k: counts[k] for k in expected} == expected
    if case == "folder unreadable":
        assert [p for p, _ in results["fast"][1]] == ["box2"]


def test_iso_seconds_agrees_with_sqlite_strftime() -> None:
    """The export's timestamps, made in Python for the values SQLAlchemy writes, are what
    SQLite's strftime gives for every stored value, odd ones included."""
    import sqlite3

    stored = [
        "2026-12-03 12:15:49.904069",
        "2026-12-03 12:15:49.904069",  # twice: made once
        "2024-02-29 23:59:59.999999",  # a leap day; seconds cut, not rounded
        "2023-02-29 10:00:00.000000",  # no such day
        "2023-02-31 10:00:00.000000",
        "2024-01-01 24:00:00.000000",
        "2024-13-01 10:00:00.000000",
        "2024-01-01T10:00:00",
        "2024-01-01 10:00:00",
        "2024-01-01 10:00:00.5",
        " 2024-01-01 10:00:00.000000",
        "0000-01-01 00:00:00.000000",
        "garbage",
        "",
        None,
    ]
    conn = sqlite3.connect(":memory:")
    expected = [
        conn.execute("SELECT strftime(?, ?)", (queries._ISO_SECONDS, v)).fetchone()[0]
        for v in stored
    ]
    assert queries._iso_seconds(conn, stored) == expected
    assert expected[0] == "2026-12-03T12:15:49+00:00" and expected[-1] is None

"""Corrections come back in whatever shape the curator's spreadsheet saved them: Excel's
semicolon CSV (decimal-comma locales), its tab-separated UTF-16 "Unicode Text", UTF-8
with or without BOM. No model is needed: the catalog is filled through its own API and
the files are written the way Excel writes them (CRLF, quotes only where needed)."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.corrections import CorrectionError, import_csv
from artnote.emotions import EMOTIONS
from artnote.export import NUMERIC_COLUMNS, write_csv_cells
from artnote.records import Annotation, Provenance

PROV = Provenance("tiny/llava", "r1", "llava", None, "v2", "1", "ph", {}, "onnx", "cpu", 2.0)
ALTS = {  # name -> alt text the model "wrote"; awkward on purpose
    "a.jpg": "A ship; a storm, at night",
    "b.jpg": "=SUM(A1) looks like a formula",
    "c.jpg": "Éventail à Tōkyō 🌊",
}
DESCRIPTION = 'Waves; foam, "spray"\tand a tab.\nSecond line; more, text.'
# Excel's "Unicode Text", "CSV UTF-8" and the CSV of decimal-comma locales, and plain UTF-8.
FORMATS = {
    "unicode_text": ("utf-16", "\t"),
    "csv_utf8_semicolon": ("utf-8-sig", ";"),
    "csv_utf8": ("utf-8-sig", ","),
    "utf8_no_bom": ("utf-8", ","),
}


@pytest.fixture
def cat(tmp_path):
    with open_catalog(str(tmp_path / "catalog.db")) as catalog:
        root = tmp_path / "collection"
        root.mkdir()
        cid = catalog.ensure_collection(root)
        run = catalog.start_run({}, "tiny/llava", None)
        states = []
        for name in ALTS:
            data = b"content " + name.encode()
            (root / name).write_bytes(data)
            info = (root / name).stat()
            states.append(
                FileState(name, info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())
            )
        ids = catalog.record_files(cid, run, states)
        probs = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
        catalog.add_annotations(
            run,
            [
                (ids[name], Annotation(alt, DESCRIPTION, probs, "awe", "Awe, because.", PROV))
                for name, alt in ALTS.items()
            ],
        )
        yield catalog


def _exported(cat) -> list[list[str]]:
    """The export as the spreadsheet reads it: the header, then one list of cells per row."""
    out = io.StringIO(newline="")
    write_csv_cells(cat.export_table(), out)
    return list(csv.reader(io.StringIO(out.getvalue(), newline="")))


def _save(rows: list[list[str]], path: Path, encoding: str, delimiter: str) -> Path:
    """Write rows as Excel saves them: CRLF, minimal quoting, numbers with a decimal comma
    where the list separator is a semicolon."""
    if delimiter == ";":
        numeric = [i for i, name in enumerate(rows[0]) if name in NUMERIC_COLUMNS]
        rows = [rows[0]] + [
            [c.replace(".", ",") if i in numeric else c for i, c in enumerate(row)]
            for row in rows[1:]
        ]
    with open(path, "w", encoding=encoding, newline="") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return path


def _edit(rows: list[list[str]], row: int, **cells: str) -> list[list[str]]:
    header = rows[0]
    edited = [list(r) for r in rows]
    for column, value in cells.items():
        edited[row][header.index(column)] = value
    return edited


def _current(cat) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in cat.export_rows(provenance=False)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_unedited_resave_changes_nothing(cat, tmp_path, fmt):
    """Every cell (commas, semicolons, tabs, quotes, newlines, an emoji, a neutralised
    formula) must come back as it went out, whatever the encoding and delimiter."""
    encoding, delimiter = FORMATS[fmt]
    path = _save(_exported(cat), tmp_path / "export.csv", encoding, delimiter)
    report = import_csv(cat, path, by="curator")
    assert report.imported and not report.bad
    assert report.rows == 3 and report.unchanged_rows == 3
    assert report.corrections == 0 and report.approvals == 0


def test_semicolon_csv_from_excel_imports(cat, tmp_path):
    rows = _edit(
        _exported(cat),
        1,
        alt_text="A small ship, in a storm",
        description="Dark sea, white foam, one mast.",
        status="approved",
    )
    path = _save(rows, tmp_path / "export.csv", "utf-8-sig", ";")
    assert path.read_bytes().startswith(codecs.BOM_UTF8 + b"path;sha256;")
    report = import_csv(cat, path, by="curator")
    assert report.imported and not report.bad
    assert report.corrections == 2 and report.approvals == 1
    row = _current(cat)["a.jpg"]
    assert row["alt_text"] == "A small ship, in a storm"
    assert row["description"] == "Dark sea, white foam, one mast."
    assert row["status"] == "approved"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_tab_separated_utf16_unicode_text_imports(cat, tmp_path, encoding):
    rows = _edit(_exported(cat), 3, alt_text="Un éventail; 東京の波 🌊", dominant_emotion="Fear")
    path = _save(rows, tmp_path / "export.txt", encoding, "\t")
    if encoding != "utf-16":  # a codec with an explicit byte order writes no BOM
        bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
        path.write_bytes(bom + path.read_bytes())
    report = import_csv(cat, path, by="curator")
    assert report.imported and not report.bad
    assert report.corrections == 2 and report.unchanged_rows == 2
    row = _current(cat)["c.jpg"]
    assert row["alt_text"] == "Un éventail; 東京の波 🌊" and row["dominant_emotion"] == "fear"


def test_utf8_without_bom_imports(cat, tmp_path):
    rows = _edit(_exported(cat), 2, explanation="Ça me rend curieux, à cause du « = ».")
    path = _save(rows, tmp_path / "export.csv", "utf-8", ",")
    assert not path.read_bytes().startswith(codecs.BOM_UTF8)
    report = import_csv(cat, path, by="curator")
    assert report.imported and report.corrections == 1 and not report.bad
    assert _current(cat)["b.jpg"]["explanation"] == "Ça me rend curieux, à cause du « = »."


@pytest.mark.parametrize(("delimiter", "other"), [(d, o) for d in ",;\t" for o in ",;\t" if o != d])
def test_a_description_containing_semicolons_and_commas_survives(cat, tmp_path, delimiter, other):
    """Texts that quote inscriptions between another delimiter (and hold their own) make
    a guess from the data rows (csv.Sniffer's, on this very file) pick that other one;
    the header decides."""
    text = (
        f'Inscribed{other} "Le Havre"{other} signed{other} "C. Monet"{other} dated{other} '
        f'"1872"{other} lower left{delimiter} framed'
    )
    rows = _exported(cat)
    for i in range(1, len(rows)):
        rows = _edit(rows, i, alt_text=f"{text} {i}", description=f"{text}. {i}")
    path = _save(rows, tmp_path / "export.csv", "utf-8-sig", delimiter)
    report = import_csv(cat, path, by="curator")
    assert report.imported and not report.bad and report.corrections == 6
    current = _current(cat)
    one_line = text.replace("\t", " ")  # alt text is one line: a tab in it becomes a space
    assert [current[n]["alt_text"] for n in ALTS] == [f"{one_line} {i}" for i in (1, 2, 3)]
    assert [current[n]["description"] for n in ALTS] == [f"{text}. {i}" for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("a;b;c\r\n1;2;3\r\n", "found: a, b, c"),
        ("title\talt_text\r\nx\ty\r\n", "found: title, alt_text"),
        ("path,sha256,width\r\n", "found: path, sha256, width"),
        ("\r\npath,alt_text\r\n", "found: no column names"),
    ],
)
def test_wrong_file_error_names_the_columns_found(cat, tmp_path, content, found):
    path = tmp_path / "x.csv"
    path.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(CorrectionError) as exc:
        import_csv(cat, path, by="curator")
    message = str(exc.value)
    assert message == (
        f"{path} needs a sha256 or path column and at least one of alt_text, description, "
        f"dominant_emotion, explanation; {found}"
    )


def test_a_wrong_file_with_many_long_columns_gets_a_short_error(cat, tmp_path):
    path = tmp_path / "x.csv"
    names = [f"column number {i} " + "x" * 60 for i in range(30)]
    path.write_text(";".join(names) + "\r\n", encoding="utf-8")
    with pytest.raises(CorrectionError) as exc:
        import_csv(cat, path, by="curator")
    message = str(exc.value)
    assert "found: column number 0 xxx" in message and "and 18 more" in message
    assert len(message) < 800 and "\n" not in message


@pytest.mark.parametrize(("encoding", "delimiter"), [("utf-16", ";"), ("utf-8", ",")])
def test_bad_row_line_numbers_count_physical_lines_in_any_format(
    cat, tmp_path, encoding, delimiter
):
    """Row 1's edited description has a CRLF, row 2's the export's LF: row 3 starts on
    line 6, and it is the bad one."""
    rows = _edit(_exported(cat), 1, description="First line;\r\nsecond, line")
    rows = _edit(rows, 2, alt_text="fixed alt text")
    rows = _edit(rows, 3, dominant_emotion="boredom")
    path = _save(rows, tmp_path / "export.csv", encoding, delimiter)
    report = import_csv(cat, path, by="curator")
    assert not report.imported
    ((line, reason),) = report.bad
    assert line == 6 and "emotion 'boredom' is not one of" in reason
    assert _current(cat)["b.jpg"]["alt_text"] == ALTS["b.jpg"]  # all or nothing

    report = import_csv(cat, path, by="curator", skip_bad=True)
    assert report.imported and report.corrections == 2 and report.bad == [(6, reason)]
    assert _current(cat)["b.jpg"]["alt_text"] == "fixed alt text"


def test_a_stale_row_is_refused_in_a_semicolon_file(cat, tmp_path):
    rows = _exported(cat)
    rows = _edit(rows, 1, sha256="f" * 64, alt_text="edited")
    path = _save(rows, tmp_path / "export.csv", "utf-8-sig", ";")
    report = import_csv(cat, path, by="curator")
    assert not report.imported
    ((line, reason),) = report.bad
    assert line == 2 and "changed since this export" in reason


def test_a_legacy_code_page_file_is_refused_naming_the_line_and_the_encodings(cat, tmp_path):
    """Excel's plain "CSV" on Windows is cp1252; guessing it would take the "?" it writes
    for characters cp1252 lacks as corrections, so the file is refused at its first such
    byte, before anything is written."""
    rows = _edit(_exported(cat), 1, alt_text="Ship at sea")
    rows = _edit(rows, 2, alt_text="Café du port")
    # path, sha256, alt_text; not c.jpg, whose emoji cp1252 cannot hold
    rows = [r[:2] + [r[rows[0].index("alt_text")]] for r in rows[:3]]
    path = _save(rows, tmp_path / "export.csv", "cp1252", ";")
    with pytest.raises(CorrectionError) as exc:
        import_csv(cat, path, by="curator")
    message = str(exc.value)
    assert message.startswith(f"{path}:3: byte 0xe9 is not UTF-8;")
    assert '"CSV UTF-8"' in message and "UTF-16 with BOM" in message and "\n" not in message
    assert _current(cat)["a.jpg"]["alt_text"] == ALTS["a.jpg"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-32"])
def test_wide_text_without_a_utf16_bom_is_refused(cat, tmp_path, encoding):
    path = _save(_exported(cat), tmp_path / "export.txt", encoding, "\t")
    with pytest.raises(CorrectionError, match=r":1: NUL characters, so not UTF-(8|16) text; save"):
        import_csv(cat, path, by="curator")


def test_a_truncated_utf16_file_is_refused(cat, tmp_path):
    path = _save(_exported(cat), tmp_path / "export.txt", "utf-16", "\t")
    path.write_bytes(path.read_bytes() + b"A")  # an odd byte: not UTF-16
    with pytest.raises(CorrectionError, match=r"is not UTF-16|not UTF-16 after line"):
        import_csv(cat, path, by="curator")


@pytest.mark.parametrize("start", [b"PK\x03\x04\x14\x00\x06\x00", b"\xd0\xcf\x11\xe0\xa1\xb1"])
def test_an_excel_workbook_is_refused_as_not_csv(cat, tmp_path, start):
    path = tmp_path / "export.xlsx"
    path.write_bytes(start + bytes(range(256)))
    with pytest.raises(CorrectionError, match=r"is a spreadsheet workbook, not CSV; save it"):
        import_csv(cat, path, by="curator")


def test_an_empty_file_has_no_header(cat, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(codecs.BOM_UTF16_LE)
    with pytest.raises(CorrectionError, match=r"is not a CSV export of artnote \(no header\)"):
        import_csv(cat, path, by="curator")


def test_the_cli_imports_a_semicolon_file_and_names_a_wrong_files_columns(
    cat, tmp_path, monkeypatch
):
    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    rows = _edit(_exported(cat), 1, alt_text="Ship, storm; night")
    good = _save(rows, tmp_path / "good.csv", "utf-8-sig", ";")
    result = CliRunner().invoke(app, ["corrections", "import", str(good), "--by", "ana"])
    assert result.exit_code == 0, result.output
    assert "imported 1 corrections and 0 approvals from 3 rows" in result.stderr

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("titel;beschreibung\r\nA;B\r\n", encoding="utf-8-sig")
    result = CliRunner().invoke(app, ["corrections", "import", str(wrong)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {wrong} needs a sha256 or path column and at least one of alt_text, "
        "description, dominant_emotion, explanation; found: titel, beschreibung"
    ]

"""`artnote import records`: collection records (object numbers and catalogue data) linked to
the sample paintings, on SQLite and PostgreSQL.

The exports are tests/fixtures/records/met.csv and cleveland.csv, hand-written in the real
column layouts of the Met's and the Cleveland Museum of Art's open-access files; the
paintings are copied under the file names a museum's photo studio would give them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from alembic import command
from conftest import annotate_files, peaked
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.catalog.linking import compile_pattern, file_key, match_key
from artnote.catalog.migrate import alembic_config
from artnote.catalog.models import Base
from artnote.cli import app
from artnote.collection_records import EXTRA_MAX, FIELD_MAX, import_records, read_records
from artnote.errors import ArtnoteError, RecordsError

RECORDS = Path(__file__).parent / "fixtures" / "records"
MET, CLEVELAND = RECORDS / "met.csv", RECORDS / "cleveland.csv"
PATTERN = "{object_number}_*.jpg"

# file name in the collection -> painting (file name prefix in tests/fixtures/art)
MET_FILES = {
    "JP1847_recto.jpg": "hokusai",
    "JP1847_verso.jpg": "matisse",  # a second image of one object
    "prints/1998_325_2_recto.jpg": "monet",  # "_" for "." in the object number
    "29.100.5_front.JPG": "turner",
    "29.100.50_recto.jpg": "munch",  # no such object: 29.100.5 must not take it
    "van-gogh_the-starry-night_1889.jpg": "van-gogh",  # no record
}
CLEVELAND_FILES = {
    "1985.349_web.jpg": "hokusai",
    "scans/1962.1_web.jpg": "munch",
    "1999.12_web.jpg": "picabia",
    "sakai-hoitsu_flowers_c1820.jpg": "sakai-hoitsu",
}


def _collection(
    root: Path, art_paths: list[Path], files: dict[str, str]
) -> dict[str, dict[str, float]]:
    """Copy the paintings under `root` by the names in `files`; relpath -> emotions."""
    by_painter = {p.name.split("_")[0]: p for p in art_paths}
    out = {}
    for k, (relpath, painter) in enumerate(files.items()):
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(by_painter[painter], root / relpath)
        out[relpath] = peaked(k, 0.5)
    return out


def _met(url: str, tmp_path: Path, art_paths: list[Path]) -> tuple[str, Path, dict[str, int]]:
    """(catalog URL, collection folder, {relpath: image id}) of the Met-named copies."""
    folder = tmp_path / "collection"
    return url, folder, annotate_files(url, folder, _collection(folder, art_paths, MET_FILES))


@pytest.fixture
def met(tmp_path, art_paths, catalog_url):
    return _met(catalog_url, tmp_path, art_paths)


def _dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (and the schema revision), for before/after comparisons."""
    with open_catalog(url) as cat, cat.engine.connect() as conn:
        out = {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in Base.metadata.sorted_tables
        }
        out["alembic_version"] = conn.exec_driver_sql("SELECT * FROM alembic_version").all()
        return out


def _rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a fixture CSV with `change(rows)` applied to its list of dict rows."""
    with open(source, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    header, rows = change(header, rows) or (header, rows)
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    return target


# --- linking by a file name pattern and by an image column ------------------------------


def test_met_export_links_images_by_a_file_name_pattern(met):
    url, folder, ids = met
    with open_catalog(url) as cat:
        report = import_records(cat, MET, match_filename=PATTERN)
        out = report.outcome
        assert (out.new, out.updated, out.unchanged, out.linked) == (5, 0, 0, 4)
        assert out.unmatched_records == ["1975.1.1", "17.190.1"]  # in the file's order
        assert out.unmatched_images == [
            str(folder / "29.100.50_recto.jpg"),
            str(folder / "van-gogh_the-starry-night_1889.jpg"),
        ]
        assert report.file.key_column == "Object Number"
        assert report.file.columns == {
            "title": "Title", "maker": "Artist Display Name", "date": "Object Date",
            "medium": "Medium", "dimensions": "Dimensions", "credit_line": "Credit Line",
            "rights": "Rights and Reproduction",
        }  # fmt: skip
        records = cat.records_for(ids.values())
        wave = records[ids["JP1847_recto.jpg"]]
        assert wave.title.startswith("Under the Wave off Kanagawa")
        assert (wave.maker, wave.date) == ("Katsushika Hokusai", "ca. 1830–32")
        assert wave.medium == "Polychrome woodblock print; ink and color on paper"
        assert wave.revision == 1 and wave.rights is None
        assert wave.extra["Department"] == "Asian Art" and wave.extra["Tags"].startswith("Boats")
        assert not {"Object Number", "Title", "Artist Display Name"} & set(wave.extra)
        assert "Gallery Number" not in wave.extra  # empty cells are not kept
        assert records[ids["JP1847_verso.jpg"]] == wave
        assert records[ids["prints/1998_325_2_recto.jpg"]].maker == "Claude Monet"
        assert records[ids["29.100.5_front.JPG"]].title == "The Shipwreck of the Minotaur"
        assert set(records) == {ids[r] for r in list(MET_FILES)[:4]}
        objects = {row["object_number"]: row for row in cat.object_rows()}
        assert [i["relpath"] for i in objects["JP1847"]["images"]] == [
            "JP1847_recto.jpg",
            "JP1847_verso.jpg",
        ]
        assert [i["primary"] for i in objects["JP1847"]["images"]] == [True, False]
        assert objects["1975.1.1"]["record"].maker == "Robert Peaston; William Peaston"  # "|"
        assert objects["17.190.1"]["record"].maker == "Byzantine"  # no artist: the culture
        assert objects["17.190.1"]["images"] == []
        assert cat.record_counts() == {
            "objects": 5, "objects_with_images": 3, "objects_without_images": 2,
            "images_without_record": 2,
        }  # fmt: skip


def test_cleveland_export_links_images_by_its_image_column(tmp_path, art_paths, catalog_url):
    folder = tmp_path / "collection"
    ids = annotate_files(catalog_url, folder, _collection(folder, art_paths, CLEVELAND_FILES))
    with open_catalog(catalog_url) as cat:
        report = import_records(cat, CLEVELAND, image_column="image_web")
        assert report.file.key_column == "accession_number"
        assert report.file.columns == {
            "title": "title", "maker": "creators", "date": "creation_date",
            "medium": "technique", "dimensions": "measurements", "credit_line": "creditline",
            "rights": "copyright",
        }  # fmt: skip
        out = report.outcome
        assert (out.new, out.linked) == (4, 3)
        assert out.unmatched_records == ["1915.100"]
        assert out.unmatched_images == [str(folder / "sakai-hoitsu_flowers_c1820.jpg")]
        records = cat.records_for(ids.values())
        wave = records[ids["1985.349_web.jpg"]]
        assert wave.object_number == "1985.349" and wave.title == "The Great Wave off Kanagawa"
        assert wave.maker == "Katsushika Hokusai (Japanese, 1760–1849)"  # the description
        assert wave.rights == "CC0"  # no copyright: the licence status
        assert wave.medium == "color woodblock print" and wave.date == "c. 1830–33"
        assert wave.dimensions.startswith("Sheet: 25.4") and wave.extra["type"] == "Print"
        assert records[ids["scans/1962.1_web.jpg"]].rights == "© test rights holder"
        bowl = next(r for r in cat.object_rows() if r["object_number"] == "1915.100")["record"]
        assert bowl.maker == "China, Southern Song dynasty (1127-1279)"  # creators []: culture


def test_an_image_column_lists_several_files_the_first_primary(tmp_path, art_paths, catalog_url):
    folder = tmp_path / "collection"
    files = {"a_detail.jpg": "hokusai", "b_whole.jpg": "monet", "later/c.jpg": "munch"}
    ids = annotate_files(catalog_url, folder, _collection(folder, art_paths, files))
    export = tmp_path / "export.csv"  # semicolons, as Excel writes where "," is the decimal
    export.write_text(
        "Inventory Number;Object Title;Images\n"
        "A 1;Wave;B_WHOLE.jpg | a_detail.jpg\n"
        "B 2;Scream;later/c.jpg\n",
        encoding="utf-8",
    )
    with open_catalog(catalog_url) as cat:
        report = import_records(cat, export, image_column="images")  # names: any case
        assert report.outcome.linked == 3 and report.file.columns == {"title": "Object Title"}
        rows = {r["object_number"]: r for r in cat.object_rows()}
        assert [(i["relpath"], i["primary"]) for i in rows["A 1"]["images"]] == [
            ("b_whole.jpg", True),  # listed first, though second in path order
            ("a_detail.jpg", False),
        ]
        assert [i["image_id"] for i in rows["B 2"]["images"]] == [ids["later/c.jpg"]]


# --- re-imports: revisions, nothing lost -----------------------------------------------


def test_a_changed_title_is_a_new_revision_and_the_old_one_stays(met, tmp_path):
    url, _, ids = met
    changed = _rewrite(
        MET, tmp_path / "met-2.csv", lambda h, rows: rows[1].update(Title="Water Lilies (1919)")
    )
    with open_catalog(url) as cat:
        import_records(cat, MET, match_filename=PATTERN)
        again = import_records(cat, MET).outcome  # the stored pattern still applies
        assert (again.new, again.updated, again.unchanged, again.linked) == (0, 0, 5, 0)
        second = import_records(cat, changed).outcome
        assert (second.new, second.updated, second.unchanged) == (0, 1, 4)
        monet = cat.records_for([ids["prints/1998_325_2_recto.jpg"]])
        [record] = monet.values()
        assert (record.title, record.revision, record.maker) == (
            "Water Lilies (1919)",
            2,
            "Claude Monet",
        )
        with cat.engine.connect() as conn:
            titles = conn.exec_driver_sql(
                "SELECT r.revision, r.title, r.source FROM object_records AS r"
                " JOIN objects AS o ON o.id = r.object_id"
                " WHERE o.object_number = '1998.325.2' ORDER BY r.revision"
            ).all()
        assert [tuple(t) for t in titles] == [
            (1, "Water Lilies", "met.csv"),
            (2, "Water Lilies (1919)", "met-2.csv"),
        ]
        # An export of fewer columns changes only what it holds: the maker stays.
        partial = tmp_path / "titles.csv"
        partial.write_text("Object Number,Title\n1998.325.2,Nymphéas\nJP1847,", encoding="utf-8")
        assert import_records(cat, partial).outcome.updated == 2
        [record] = cat.records_for([ids["prints/1998_325_2_recto.jpg"]]).values()
        assert (record.title, record.maker, record.revision) == ("Nymphéas", "Claude Monet", 3)
        assert record.extra["Department"] == "European Paintings"
        [wave] = cat.records_for([ids["JP1847_recto.jpg"]]).values()
        assert wave.title is None and wave.maker == "Katsushika Hokusai"  # emptied, kept old


# --- malformed files: one line, nothing written ------------------------------------------


def _malformed(tmp_path: Path) -> list[tuple[Path, dict, str]]:
    """(file, import options, what the one-line error must say)."""
    conflict = _rewrite(
        MET, tmp_path / "conflict.csv", lambda h, rows: rows.append(dict(rows[0], Title="Other"))
    )
    empty_key = _rewrite(
        MET, tmp_path / "empty-key.csv", lambda h, rows: rows[2].update({"Object Number": " "})
    )
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("Object Number,Title\nJP1847,Vague\n1.2,Café\n".encode("latin-1"))
    array = tmp_path / "records.json"
    array.write_text(json.dumps([{"Object Number": "1"}]), encoding="utf-8")
    bad_json = tmp_path / "records.jsonl"
    bad_json.write_text('{"Object Number": "1"}\n{"Object Number": \n', encoding="utf-8")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("Object Number,Title\nA,Wave,oops\n", encoding="utf-8")
    workbook = tmp_path / "records.xlsx"
    workbook.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    return [
        (MET, {"key": "Accession Number"}, "1: no column 'Accession Number' (--key)"),
        (MET, {"image_column": "Filename"}, "no column 'Filename' (--image-column)"),
        (MET, {"mapping": {"title": "Name"}}, "no column 'Name' (--map title=)"),
        (MET, {"match_filename": "*.jpg"}, "must hold {object_number} once"),
        (conflict, {}, "conflict.csv:7: object number 'JP1847' is also on line 2, with another "
                       "title"),
        (empty_key, {}, "empty-key.csv:4: empty object number (column 'Object Number')"),
        (latin1, {}, "latin1.csv:3: byte 0xe9 is not UTF-8"),
        (array, {}, "records.json:1: not JSON Lines"),
        (bad_json, {}, "records.jsonl:2: not JSON"),
        (ragged, {}, "ragged.csv:2: 3 cells but the header has 2 columns"),
        (workbook, {}, "is a spreadsheet workbook, not CSV"),
        (tmp_path / "absent.csv", {}, "cannot read"),
    ]  # fmt: skip


def test_a_malformed_file_is_one_line_and_changes_nothing(met, tmp_path):
    url, _, _ = met
    with open_catalog(url) as cat:
        import_records(cat, CLEVELAND, image_column="image_web")
    before = _dump(url)
    for path, options, message in _malformed(tmp_path):
        with open_catalog(url) as cat, pytest.raises(ArtnoteError) as caught:
            import_records(cat, path, **options)
            pytest.fail(f"{path.name} {options} imported")
        text = str(caught.value)
        assert message in text and "\n" not in text, (path.name, text)
        assert _dump(url) == before, path.name
    same = _rewrite(MET, tmp_path / "same.csv", lambda h, rows: rows.append(dict(rows[0])))
    with open_catalog(url) as cat:  # a row repeated with the same values is no conflict
        report = import_records(cat, same)
        assert report.file.repeated == 1 and report.outcome.new == 5


def test_unknown_fields_and_placeholders_are_refused():
    with pytest.raises(RecordsError, match="use --key"):
        read_records(MET, mapping={"object_number": "Object ID"})
    with pytest.raises(RecordsError, match="fields are title, maker"):
        read_records(MET, mapping={"artist": "Artist Display Name"})
    for bad in ("{accession}_*.jpg", "{object_number}_{object_number}.jpg", "{object_number}{"):
        with pytest.raises(RecordsError):
            compile_pattern(bad)


# --- encodings, JSON Lines, untrusted text ------------------------------------------------


def test_the_met_file_as_utf16_tab_separated_imports_alike(tmp_path):
    text = MET.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    out = io.StringIO()
    csv.writer(out, delimiter="\t").writerows(rows)  # Excel's "Unicode Text"
    utf16 = tmp_path / "met.txt"
    utf16.write_bytes(codecs.BOM_UTF16_LE + out.getvalue().encode("utf-16-le"))
    a, b = read_records(MET), read_records(utf16)
    assert [r.record for r in a.rows] == [r.record for r in b.rows] and len(a.rows) == 5


def test_json_lines_and_hostile_text(tmp_path):
    met_api = {  # the Met's API names, camelCase
        "accessionNumber": "JP1847", "title": "Under\x00 the\x1b Wave\r\noff Kanagawa",
        "artistDisplayName": "Katsushika Hokusai", "objectDate": 1831,
        "medium": "x" * (FIELD_MAX + 50), "tags": [{"term": "Waves"}], "isHighlight": True,
        "notes": "line one\nline two\x07",
    }  # fmt: skip
    cleveland_api = {  # creators: a list of objects
        "accession_number": "1985.349",
        "creators": [{"description": "Katsushika Hokusai (Japanese)"}, {"description": "Pub"}],
        "culture": ["Japan"], "citations": ["c" * 1500] * 40,
    }  # fmt: skip
    found = []
    for name, value in (("met.jsonl", met_api), ("cma.ndjson", cleveland_api)):
        path = tmp_path / name
        path.write_text("\n" + json.dumps(value) + "\n\n", encoding="utf-8")
        found.append(read_records(path))
    first, second = (f.rows[0].record for f in found)
    assert first.title == "Under the Wave off Kanagawa" and first.date == "1831"
    assert len(first.medium) == FIELD_MAX and first.medium.endswith("…")
    assert first.extra["notes"] == "line one\nline two"  # lines kept, controls gone
    assert first.extra["tags"] == [{"term": "Waves"}] and first.extra["isHighlight"] is True
    assert second.maker == "Katsushika Hokusai (Japanese); Pub"
    assert len(json.dumps(second.extra, ensure_ascii=False)) <= EXTRA_MAX
    assert found[0].truncated == [(2, "medium")] and found[1].truncated == [(2, "citations")]
    assert found[0].rows[0].line == 2


def test_file_name_rules():
    assert match_key(" 1975.1.1 ") == "1975-1-1" == match_key("1975_1__1")
    assert match_key("B.1977/3") == match_key("b 1977-3")
    recto = compile_pattern("{object_number}_*.jpg")
    assert "1975-1-1" in recto.keys("1975_1_1_recto.jpg")
    assert list(recto.keys("1975.1.10_recto.JPG"))[0] == "1975-1-10"  # the longest first
    assert "1975-1-1" not in recto.keys("1975.1.10_recto.jpg")
    assert list(recto.keys("1975.1.1.png")) == []
    anything = compile_pattern("{object_number}.*")
    assert list(anything.keys("JP1847.tif"))[0] == "jp1847"
    nested = compile_pattern("scans/{object_number}/*")
    assert "jp-1847" in nested.keys("scans/JP-1847/front.jpg")
    assert file_key("https://cdn.example/1985.349/1985.349_web.jpg?x=1") == "1985.349_web.jpg"
    assert file_key(" .\\Prints\\A.JPG") == "prints/a.jpg"


# --- after the import: scans, status, search, the review page -----------------------------


def test_images_scanned_after_an_import_are_linked(tmp_path, art_paths, catalog_url):
    folder = tmp_path / "collection"
    first = dict(list(MET_FILES.items())[:1])
    annotate_files(catalog_url, folder, _collection(folder, art_paths, first))
    with open_catalog(catalog_url) as cat:
        assert cat.link_images() == 0  # no import yet: nothing to link by
        import_records(cat, MET, match_filename=PATTERN)
        import_records(cat, CLEVELAND, image_column="image_web")
        assert cat.record_counts()["objects_with_images"] == 1
    later = {**MET_FILES, **CLEVELAND_FILES}
    ids = annotate_files(catalog_url, folder, _collection(folder, art_paths, later))
    with open_catalog(catalog_url) as cat:
        cid = cat.ensure_collection(folder)
        assert cat.link_images(cid + 1) == 0  # another collection: none of these
        assert cat.link_images(cid) == 6  # 3 by the pattern, 3 by Cleveland's column
        assert cat.link_images(cid) == 0
        records = cat.records_for(ids.values())
        assert records[ids["JP1847_verso.jpg"]].object_number == "JP1847"
        assert records[ids["scans/1962.1_web.jpg"]].title == "The Scream"
        assert ids["29.100.50_recto.jpg"] not in records
        assert cat.record_counts() == {
            "objects": 9, "objects_with_images": 6, "objects_without_images": 3,
            "images_without_record": 3,
        }  # fmt: skip


def test_status_shows_record_counts_and_the_cli_lists_unmatched(met):
    url, folder, _ = met
    runner = CliRunner()
    plain = runner.invoke(app, ["status", "--json", "--catalog", url])
    assert "objects" not in json.loads(plain.stdout)  # no records: status as before
    result = runner.invoke(
        app,
        ["import", "records", str(MET), "--key", "object number", "--catalog", url]
        + ["--match-filename", PATTERN, "--map", "rights=Is Public Domain"],
    )
    assert result.exit_code == 0, result.output
    assert "imported 5 records from met.csv: 5 new, 0 updated, 0 unchanged; 4 images linked" in (
        result.stderr
    )
    assert "2 records without an image:\n  1975.1.1\n  17.190.1" in result.stderr
    assert f"2 images without a record:\n  {folder / '29.100.50_recto.jpg'}" in result.stderr
    assert "rights <- Is Public Domain" in result.stderr
    counts = json.loads(runner.invoke(app, ["status", "--json", "--catalog", url]).stdout)
    assert {k: counts[k] for k in ("objects", "objects_with_images")} == {
        "objects": 5,
        "objects_with_images": 3,
    }
    assert (counts["objects_without_images"], counts["images_without_record"]) == (2, 2)
    text = runner.invoke(app, ["status", "--catalog", url]).stdout
    assert "objects_without_images: 2" in text and "images_without_record: 2" in text


def test_the_cli_refuses_bad_files_and_options_before_making_a_catalog(tmp_path):
    db = tmp_path / "new.db"
    runner = CliRunner()
    bad = runner.invoke(app, ["import", "records", str(MET), "--key", "Nope", "--catalog", db])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1 and "no column 'Nope'" in bad.stderr
    usage = runner.invoke(app, ["import", "records", str(MET), "--map", "title", "--catalog", db])
    assert usage.exit_code == 2 and "FIELD=COLUMN" in usage.output
    assert not db.exists()
    good = runner.invoke(app, ["import", "records", str(CLEVELAND), "--catalog", db])
    assert good.exit_code == 0 and "4 new" in good.stderr and db.exists()  # records first


def test_search_finds_titles_and_makers(met):
    url, folder, ids = met
    with open_catalog(url) as cat:
        import_records(cat, MET, match_filename=PATTERN)
        hits = cat.search("Minotaur")
        assert [h["image_id"] for h in hits] == [ids["29.100.5_front.JPG"]]
        assert hits[0]["title"] == "The Shipwreck of the Minotaur"
        assert hits[0]["path"] == str(folder / "29.100.5_front.JPG")
        assert [h["image_id"] for h in cat.search("claude monet")] == [
            ids["prints/1998_325_2_recto.jpg"]
        ]
        both = cat.search("kanagawa hokusai")  # a title word and a maker word
        assert [h["image_id"] for h in both] == [ids["JP1847_recto.jpg"], ids["JP1847_verso.jpg"]]
        assert cat.search("Minotaur Monet") == []  # every word must match
        assert cat.search("%") == [] and cat.search("_") == []  # LIKE's wildcards are text
        text_hit = cat.search("gogh")  # the model's words still found, and no record
        assert [h["object_number"] for h in text_hit] == [None]
        by_alt = cat.search("JP1847")  # alt text "A painting by JP1847." and the record
        assert by_alt[0]["title"].startswith("Under the Wave")


def test_the_review_page_shows_the_record_escaped(tmp_path, art_paths):
    url, _, ids = _met(str(tmp_path / "catalog.db"), tmp_path, art_paths)
    export = tmp_path / "hostile.csv"
    export.write_text(
        "Object Number,Title,Artist Display Name,Object Date,Medium\n"
        'JP1847,"<script>window.pwned=1</script>Wave",<b>Hokusai</b>,ca. 1831,Woodblock\n',
        encoding="utf-8",
    )
    with open_catalog(url) as cat:
        import_records(cat, export, match_filename=PATTERN)
    from web.app import create_app

    web = create_app(url, by="ana", allowed_hosts=["testserver"], cache_dir=tmp_path / "cache")
    with TestClient(web) as client:
        page = client.get(f"/image/{ids['JP1847_recto.jpg']}").text
        assert '<dd id="object-number">JP1847</dd>' in page
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;Wave" in page
        assert "<script>window.pwned" not in page
        assert '<dd id="record-maker">&lt;b&gt;Hokusai&lt;/b&gt;</dd>' in page
        assert '<dd id="record-date">ca. 1831</dd>' in page
        other = client.get(f"/image/{ids['van-gogh_the-starry-night_1889.jpg']}").text
        assert 'id="record"' not in other


def test_models_match_migrations_on_postgresql_too(catalog_url):
    with open_catalog(catalog_url) as cat, cat.engine.connect() as conn:
        command.check(alembic_config(conn))


def test_the_revision_0006_fixture_keeps_its_record_and_link(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "catalog_rev0006.db", path)
    with open_catalog(path) as cat:
        [(image_id, record)] = cat.records_for([1, 2]).items()
        assert (image_id, record.title, record.revision) == (1, "Under the Wave off Kanagawa", 2)
        assert record.extra == {"Department": "Asian Art"}
        assert cat.status_counts()["objects_with_images"] == 1

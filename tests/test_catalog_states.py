"""Catalog states across scans and imports: what a stale spreadsheet, an unreadable root,
a renamed file and byte-identical twins must (and must not) change. No model is needed:
the catalog is filled through its own API."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from artnote.catalog import FileState, ImageMeta, open_catalog
from artnote.config import Settings
from artnote.corrections import import_csv
from artnote.emotions import EMOTIONS
from artnote.export import write_csv_cells
from artnote.pipeline import AnnotatorFactory, scan
from artnote.records import Annotation, Provenance

PROV = Provenance("tiny/llava", "r1", "llava", None, "v2", "1", "ph", {}, "onnx", "cpu", 2.0)


def _annotation(alt: str, description: str = "A description.") -> Annotation:
    probs = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
    return Annotation(alt, description, probs, "awe", "It makes me feel awe because.", PROV)


def _files(folder: Path, contents: dict[str, bytes]) -> list[FileState]:
    """Write the files and return their states as a scan would record them."""
    folder.mkdir(parents=True, exist_ok=True)
    states = []
    for name, data in contents.items():
        path = folder / name
        path.write_bytes(data)
        info = path.stat()
        states.append(
            FileState(name, info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())
        )
    return states


def _annotate(cat, run, ids, states, alts, meta=None):
    items = [(ids[s.relpath], _annotation(alt)) for s, alt in zip(states, alts, strict=True)]
    cat.add_annotations(run, items, meta=meta)


def _annotated(cat, root: Path, alts: dict[str, str], meta=None):
    """A collection at root whose files (name -> alt text; content b"content " + name)
    are annotated: (collection id, run id, relpath -> image id)."""
    cid = cat.ensure_collection(root)
    run = cat.start_run({}, "tiny/llava", None)
    states = _files(root, {name: b"content " + name.encode() for name in alts})
    ids = cat.record_files(cid, run, states)
    wanted = {ids[n]: m for n, m in (meta or {}).items()}
    _annotate(cat, run, ids, states, list(alts.values()), meta=wanted)
    return cid, run, ids


def _export(cat, path: Path) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_csv_cells(cat.export_table(), f)
    return path


def test_a_stale_row_does_not_correct_the_image_now_at_its_path(catalog_url, tmp_path):
    """An export row of content A, imported after A's file was replaced by content B, must
    not turn A's unedited text into curator corrections of B."""
    root = tmp_path / "collection"
    with open_catalog(catalog_url) as cat:
        cid, run, _ = _annotated(cat, root, {"p.jpg": "alt A", "q.jpg": "alt Q"})
        csv_file = _export(cat, tmp_path / "export.csv")
        (new,) = _files(root, {"p.jpg": b"content B, rewritten"})
        ids = cat.record_files(cid, run, [new])
        _annotate(cat, run, ids, [new], ["alt B"])

        report = import_csv(cat, csv_file, by="curator")
        assert not report.imported and report.corrections == 0
        ((line, reason),) = report.bad
        assert line == 2 and "changed since this export" in reason and "p.jpg" in reason
        # With --skip-bad the good row (q.jpg, unedited) imports, and p.jpg keeps B's text.
        report = import_csv(cat, csv_file, by="curator", skip_bad=True)
        assert report.imported and report.corrections == 0
        rows = {Path(r["path"]).name: r for r in cat.export_rows(provenance=False)}
    assert rows["p.jpg"]["alt_text"] == "alt B" and rows["p.jpg"]["status"] == "draft"


def test_a_mangled_sha256_cell_still_finds_the_row_by_path(catalog_url, tmp_path):
    with open_catalog(catalog_url) as cat:
        _annotated(cat, tmp_path / "collection", {"p.jpg": "alt A"})
        csv_file = _export(cat, tmp_path / "export.csv")
        sha = hashlib.sha256(b"content p.jpg").hexdigest()
        text = csv_file.read_text(encoding="utf-8")
        edited = text.replace(sha, "5.26E+63").replace('"alt A"', '"alt, corrected"')
        csv_file.write_text(edited, encoding="utf-8")
        report = import_csv(cat, csv_file, by="curator")
    assert report.imported and report.corrections == 1 and not report.bad


@pytest.mark.parametrize("alt", ["'-starts with a quote", "''=two quotes", "'plain", "=sum()"])
def test_cells_with_leading_apostrophes_round_trip(catalog_url, tmp_path, alt):
    """Formula neutralising adds one apostrophe and the import takes one off: a value that
    already starts with apostrophes must come back as it was (no correction)."""
    with open_catalog(catalog_url) as cat:
        _annotated(cat, tmp_path / "collection", {"p.jpg": alt})
        report = import_csv(cat, _export(cat, tmp_path / "export.csv"), by="curator")
        assert report.imported and not report.bad
        assert report.corrections == 0 and report.unchanged_rows == 1


def test_an_unreadable_root_marks_nothing_missing(catalog_url, tmp_path, monkeypatch):
    from artnote import discover

    root = tmp_path / "collection"
    with open_catalog(catalog_url) as cat:
        cid, run, _ = _annotated(cat, root, {"a.jpg": "alt A", "b.jpg": "alt B"})
        cat.finish_run(run, "completed", {})
        real_open = discover._open_dir

        def refuse_root(path):
            if path == str(root.resolve()):
                raise PermissionError(13, "Permission denied")
            return real_open(path)

        monkeypatch.setattr(discover, "_open_dir", refuse_root)

        def no_model():
            raise AssertionError("nothing is pending")

        summary = scan(root, Settings(), cat, AnnotatorFactory(no_model), model_name="m")
        assert summary.missing == 0
        assert summary.problems == [(str(root.resolve()), "permission denied")]
        assert {k.status for k in cat.known_files(cid).values()} == {"annotated"}


def test_a_renamed_or_copied_file_keeps_its_size_and_format(catalog_url, tmp_path):
    """A content already annotated is not decoded again: a renamed or copied file takes the
    facts its twin was decoded with (also in the fast CSV path)."""
    root = tmp_path / "collection"
    with open_catalog(catalog_url) as cat:
        meta = {"p.jpg": ImageMeta(640, 480, "JPEG", "RGB")}
        cid, run, _ = _annotated(cat, root, {"p.jpg": "alt A"}, meta=meta)
        (root / "p.jpg").rename(root / "renamed.jpg")
        (renamed,) = _files(root, {"renamed.jpg": b"content p.jpg"})
        (copy,) = _files(root / "sub", {"copy.jpg": b"content p.jpg"})
        copy = FileState("sub/copy.jpg", copy.size, copy.mtime_ns, copy.sha256)
        cat.record_files(cid, run, [renamed, copy])
        info = cat.find_image(str(root.resolve() / "renamed.jpg"))
        out = io.StringIO(newline="")
        write_csv_cells(cat.export_table(), out)
    assert (info.width, info.height, info.format, info.mode) == (640, 480, "JPEG", "RGB")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all(",640,480," in line for line in lines[1:])


def test_twins_of_a_content_that_fails_fail_with_it(catalog_url, tmp_path):
    """Byte-identical files fail the same way: one failure marks them all, so later scans
    do not load the model once per twin."""
    root = tmp_path / "collection"
    with open_catalog(catalog_url) as cat:
        cid = cat.ensure_collection(root)
        run = cat.start_run({}, "tiny/llava", None)
        states = _files(root, {"a.jpg": b"same", "b.jpg": b"same", "c.jpg": b"other"})
        ids = cat.record_files(cid, run, states)
        assert len(cat.pending_images(cid)) == 2  # one per content
        # A failure of one path or moment (the file vanished) stays with that file...
        cat.record_failures([(ids["a.jpg"], "file disappeared")])
        assert cat.known_files(cid)["b.jpg"].status == "pending"
        # ...one of the bytes themselves fails every pending twin.
        cat.record_failures([(ids["a.jpg"], "truncated or corrupt")], of_content=[ids["a.jpg"]])
        known = cat.known_files(cid)
        pending = cat.pending_images(cid)
        twin = cat.find_image(str(ids["b.jpg"]))
    assert known["a.jpg"].status == known["b.jpg"].status == "failed"
    assert twin.error == "truncated or corrupt"
    assert known["c.jpg"].status == "pending"
    assert [p.image_id for p in pending] == [ids["c.jpg"]]


def test_write_transactions_wait_for_each_other(catalog_url, tmp_path):
    """Two processes adding the same new folder at once: the second waits for the first's
    transaction and then finds its row (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
    lock), instead of reading "not there" and failing on the unique key."""
    import threading

    from sqlalchemy import insert

    from artnote.catalog.models import utcnow
    from artnote.catalog.queries import collections

    root = (tmp_path / "collection").resolve()
    first, second = open_catalog(catalog_url), open_catalog(catalog_url)
    outcome: dict[str, object] = {}

    def add_the_same_folder():
        try:
            outcome["id"] = second.ensure_collection(root)
        except Exception as exc:  # reported below, not lost in the thread
            outcome["error"] = exc

    try:
        with first._write() as conn:
            conn.execute(insert(collections).values(root=str(root), created_at=utcnow()))
            other = threading.Thread(target=add_the_same_folder)
            other.start()
            other.join(0.5)
            assert other.is_alive(), outcome  # waiting for this transaction
        other.join(10)
        assert "error" not in outcome, outcome["error"]
        assert outcome["id"] == first.ensure_collection(root)
    finally:
        first.close()
        second.close()


def test_a_write_that_waits_too_long_is_a_one_line_error(catalog_url, tmp_path, monkeypatch):
    """A client stuck inside a write transaction does not hang every other writer: after the
    busy timeout the waiting write fails with one line (SQLite and PostgreSQL alike)."""

    from artnote.catalog import engine
    from artnote.errors import CatalogError

    monkeypatch.setattr(engine, "BUSY_TIMEOUT_S", 0.5)
    first, second = open_catalog(catalog_url), open_catalog(catalog_url)
    try:
        with first._write():
            with pytest.raises(CatalogError) as err:  # gives up, instead of waiting forever
                second.ensure_collection(tmp_path / "elsewhere")
        assert "\n" not in str(err.value)
        assert second.ensure_collection(tmp_path / "elsewhere")  # free again afterwards
    finally:
        first.close()
        second.close()

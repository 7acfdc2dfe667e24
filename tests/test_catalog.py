"""Catalog: migrations, SQLite settings, and the queries the pipeline and CLI use."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from artnote.catalog import Catalog, FileState, ImageMeta, open_catalog
from artnote.catalog import search as search_module
from artnote.catalog.migrate import alembic_config, head_revisions
from artnote.emotions import EMOTION_COLUMNS, EMOTIONS
from artnote.errors import CatalogError, NotFoundError
from artnote.records import Annotation, Provenance

FIXTURES = Path(__file__).parent / "fixtures"
SHA = {k: k * 64 for k in "abcdef"}


def annotation(alt: str, description: str = "A painting.", dominant: str = "awe") -> Annotation:
    emotions = {e: 0.02 for e in EMOTIONS}
    emotions[dominant] = 1 - 0.02 * 8
    prov = Provenance(
        model="tiny/llava",
        revision="r1",
        family="llava",
        adapter="ad" * 8,
        adapter_name="curated-v1",
        prompt_version="1",
        prompt_hash="ph",
        generation={"alt_text_tokens": 48},
        encoder="torch",
        device="cpu",
        ms=12.5,
    )
    return Annotation(alt, description, emotions, dominant, f"It makes me feel {dominant}.", prov)


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    catalog = open_catalog(tmp_path / "cat.db")
    yield catalog
    catalog.close()


def scan(cat: Catalog, root: Path, files: list[FileState]) -> tuple[int, int, dict[str, int]]:
    cid = cat.ensure_collection(root)
    run = cat.start_run({"batch_size": 2}, "tiny/llava", None)
    return cid, run, cat.record_files(cid, run, files)


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


# --- migrations -------------------------------------------------------------


def test_blank_catalog_has_the_whole_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_catalog(str(path)).close()
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"alembic_version", "collections", "images", "runs", "annotations"} <= tables
    assert {"search_texts", "search_fts"} <= tables and "annotations_fts" not in tables
    cols = {t: [r[1] for r in db.execute(f"PRAGMA table_info({t})")] for t in tables}
    assert cols["annotations"][:8] == [
        "id",
        "sha256",
        "image_id",
        "run_id",
        "alt_text",
        "alt_text_truncated",
        "description",
        "amusement",
    ]
    assert set(EMOTION_COLUMNS) <= set(cols["annotations"])
    for needed in ("model", "model_revision", "adapter", "adapter_name", "prompt_hash", "ms"):
        assert needed in cols["annotations"]
    assert set(cols["images"]) >= {
        "collection_id", "relpath", "size", "mtime_ns", "sha256", "width", "height", "format",
        "mode", "status", "error", "first_seen_run", "last_seen_run", "first_seen_at",
        "last_seen_at",
    }  # fmt: skip
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"ix_annotations_sha256_id", "ix_images_sha256"} <= indexes
    triggers = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    assert triggers == {"search_fts_ai", "search_fts_ad", "search_fts_au"}
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
        (h,) for h in head_revisions()
    ]
    db.close()


def test_models_and_migrations_do_not_drift(cat: Catalog) -> None:
    # The equivalent of `alembic check`: autogenerate finds nothing to do at head.
    with cat.engine.connect() as conn:
        command.check(alembic_config(conn))


def test_drift_would_be_reported(cat: Catalog) -> None:
    with cat.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN stray INTEGER")
    with cat.engine.connect() as conn:
        with pytest.raises(Exception, match="New upgrade operations detected"):
            command.check(alembic_config(conn))


def test_old_catalog_fixture_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "catalog_rev0001.db", path)
    with open_catalog(path) as cat:
        rows = list(cat.export_rows())
        assert [r["path"] for r in rows] == ["/museum/prints/hokusai/wave.jpg"]
        assert rows[0]["alt_text"] == "A great wave towers over three boats."
        assert rows[0]["awe"] == 0.6 and rows[0]["provenance"]["ms"] == 812.5
        assert rows[0]["annotated_at"] == "2025-01-02T03:05:00+00:00"
        assert cat.status_counts()["images"] == 2 and cat.status_counts()["runs"] == 1
        assert cat.search("boats")[0]["image_id"] == 1
        assert cat.find_image("b" * 10).relpath == "munch scream.tif"
    db = sqlite3.connect(path)
    assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
        (h,) for h in head_revisions()
    ]
    db.close()


def test_catalog_from_newer_artnote_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    open_catalog(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
        db.execute("ALTER TABLE images ADD COLUMN future_thing TEXT")
    db.close()
    before = dump(path)
    with pytest.raises(CatalogError, match="9999_from_the_future.*newer artnote"):
        open_catalog(path)
    assert dump(path) == before


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.close()
    with pytest.raises(CatalogError, match="not an artnote catalog"):
        open_catalog(path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CatalogError, match="not a database"):
        open_catalog(junk)


def test_missing_folder_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog(tmp_path / "no" / "such" / "cat.db")
    with pytest.raises(CatalogError, match="does not exist"):
        open_catalog(f"sqlite:///{tmp_path}/nope/cat.db")
    with pytest.raises(CatalogError):
        open_catalog("notadialect://x/y")


def test_sqlite_settings(cat: Catalog) -> None:
    with cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    with pytest.raises(Exception, match="FOREIGN KEY"):
        with cat.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO images (collection_id, relpath, size, mtime_ns, status,"
                    " first_seen_at, last_seen_at) VALUES (999, 'x', 1, 1, 'pending', 0, 0)"
                )
            )


def test_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    # record_files reads, then writes. Begun as a plain (deferred) transaction, its
    # read snapshot would be stale once the first writer commits, and SQLite would
    # fail it at once with "database is locked" instead of letting it wait.
    path = tmp_path / "busy.db"
    first, second = open_catalog(path), open_catalog(path)
    cid = first.ensure_collection(tmp_path)
    run = first.start_run({}, "m", None)
    held, released = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with first._write() as conn:  # a long write transaction
            conn.execute(text("UPDATE runs SET model = 'changed'"))
            held.set()
            time.sleep(0.5)  # time for the second writer to try, and wait
            released.set()  # just before this transaction commits

    holder = threading.Thread(target=hold_lock)
    holder.start()
    held.wait()
    second.record_files(cid, run, [FileState("a.jpg", 1, 1, SHA["a"])])
    assert released.is_set()  # it waited for the first writer's commit, and did not fail
    holder.join()
    assert list(second.known_files(cid)) == ["a.jpg"]
    first.close()
    second.close()


def test_two_processes_create_the_same_catalog(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    code = "import sys; from artnote.catalog import open_catalog; open_catalog(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    with open_catalog(path) as cat:
        assert cat.status_counts()["images"] == 0


# --- files and runs ---------------------------------------------------------


def test_record_files_and_changes(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(
        cat,
        tmp_path,
        [
            FileState("a.jpg", 10, 100, SHA["a"]),
            FileState("sub/b.jpg", 20, 200, SHA["b"]),
            FileState("locked.jpg", 5, 5, None, "permission denied"),
        ],
    )
    known = cat.known_files(cid)
    assert known["a.jpg"].image_id == ids["a.jpg"] and known["a.jpg"].status == "pending"
    assert known["locked.jpg"].status == "failed"
    cat.set_image_meta([(ids["a.jpg"], ImageMeta(40, 30, "JPEG", "CMYK"))])
    # a.jpg changes content, locked.jpg becomes readable: both pending again, error cleared.
    again = cat.record_files(
        cid,
        run,
        [FileState("a.jpg", 11, 101, SHA["c"]), FileState("locked.jpg", 5, 6, SHA["d"])],
    )
    assert again["a.jpg"] == ids["a.jpg"]
    known = cat.known_files(cid)
    assert (known["a.jpg"].size, known["a.jpg"].sha256) == (11, SHA["c"])
    assert known["locked.jpg"].status == "pending"
    info = cat.find_image(str(ids["a.jpg"]))
    assert info.width is None and info.error is None  # new content forgets old pixels
    assert cat.failures() == []


def test_missing_files_and_their_return(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(
        cat,
        tmp_path,
        [FileState("a.jpg", 1, 1, SHA["a"]), FileState("dir/b.jpg", 1, 1, SHA["b"])],
    )
    cat.add_annotations(run, [(ids["a.jpg"], annotation("Blue sea."))])
    run2 = cat.start_run({}, "m", None)
    assert cat.mark_missing(cid, run2, keep_under=["."]) == 0  # the root was unreadable
    assert cat.mark_missing(cid, run2, keep_under=["dir"]) == 1  # dir was unreadable
    assert cat.known_files(cid)["a.jpg"].status == "missing"
    assert cat.status_counts()["missing"] == 1
    assert list(cat.export_rows()) == []
    run3 = cat.start_run({}, "m", None)
    cat.touch_seen(run3, [ids["a.jpg"], ids["dir/b.jpg"]])
    assert cat.mark_missing(cid, run3) == 0
    known = cat.known_files(cid)
    assert known["a.jpg"].status == "annotated" and known["dir/b.jpg"].status == "pending"


def test_runs_and_stale_runs(cat: Catalog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = cat.start_run({"x": 1}, "m", "adapterhash")
    with cat.engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET pid = :pid WHERE id = :id"), {"pid": dead.pid, "id": run}
        )
    mine = cat.start_run({}, "m", None)  # start_run interrupts the dead one
    cat.finish_run(mine, "completed", {"annotated": 0}, [("/x/unreadable", "permission denied")])
    with cat.engine.connect() as conn:
        outcomes = dict(conn.execute(text("SELECT id, outcome FROM runs")).all())
    assert outcomes == {run: "interrupted", mine: "completed"}
    assert cat.failures() == [("/x/unreadable", "permission denied")]
    assert cat.status_counts()["runs"] == 2
    with pytest.raises(ValueError):
        cat.finish_run(mine, "running", {})


# --- annotations, export, search -------------------------------------------


def test_annotations_belong_to_content(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(
        cat,
        tmp_path,
        [
            FileState("a.jpg", 1, 1, SHA["a"]),
            FileState("copy of a.jpg", 1, 1, SHA["a"]),
            FileState("b.jpg", 1, 1, SHA["b"]),
        ],
    )
    pending = cat.pending_images(cid)
    assert [p.relpath for p in pending] == ["a.jpg", "b.jpg"]  # duplicates once
    assert pending[0].path == str(tmp_path / "a.jpg")
    meta = {ids["a.jpg"]: ImageMeta(640, 480, "JPEG", "RGB")}
    new = cat.add_annotations(run, [(ids["a.jpg"], annotation("First."))], meta=meta)
    assert len(new) == 1
    assert cat.annotated_contents([SHA["a"], SHA["b"]]) == {SHA["a"]}
    assert [p.relpath for p in cat.pending_images(cid)] == ["b.jpg"]
    assert len(cat.pending_images(cid, force=True)) == 2
    copy = cat.find_image(str(ids["copy of a.jpg"]))
    assert (copy.status, copy.width, copy.height) == ("annotated", 640, 480)
    # A renamed file keeps its annotation; a newer annotation becomes current.
    cat.record_files(cid, run, [FileState("renamed.jpg", 1, 1, SHA["a"])])
    assert cat.known_files(cid)["renamed.jpg"].status == "annotated"
    cat.add_annotations(run, [(ids["copy of a.jpg"], annotation("Second."))])
    rows = {r["relpath"]: r for r in cat.export_rows()}
    assert set(rows) == {"a.jpg", "copy of a.jpg", "renamed.jpg"}
    assert {r["alt_text"] for r in rows.values()} == {"Second."}
    row = rows["a.jpg"]
    assert row["adapter"] == "ad" * 8 and row["adapter_name"] == "curated-v1"
    assert row["status"] == "draft" and row["image_id"] == ids["a.jpg"]
    assert abs(sum(row[c] for c in EMOTION_COLUMNS) - 1) < 1e-9
    assert row["provenance"]["prompt_hash"] == "ph"
    assert cat.status_counts() == {
        "images": 4, "annotated": 3, "failed": 0, "pending": 1, "missing": 0,
        "corrected": 0, "approved": 0, "adapters": 0, "runs": 1,
    }  # fmt: skip


def test_record_failures(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(cat, tmp_path, [FileState("x.png", 1, 1, SHA["e"])])
    cat.record_failures([(ids["x.png"], "not an image (unrecognised format)")])
    assert cat.failures() == [(str(tmp_path / "x.png"), "not an image (unrecognised format)")]
    assert cat.pending_images(cid) == []
    assert cat.status_counts()["failed"] == 1


def test_search_ranks_and_resists_injection(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(
        cat,
        tmp_path,
        [FileState(f"{k}.jpg", 1, 1, SHA[k]) for k in "abc"],
    )
    cat.add_annotations(
        run,
        [
            (ids["a.jpg"], annotation("A wave over boats.", "A wave, a wave, a great wave.")),
            (ids["b.jpg"], annotation("A scream on a bridge.", "Orange sky and a wave of fear.")),
            (ids["c.jpg"], annotation("Old text about lilies.")),
        ],
    )
    cat.add_annotations(run, [(ids["c.jpg"], annotation("Water lilies at dusk."))])
    hits = cat.search("wave")
    assert [h["path"] for h in hits] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert "[wave]" in hits[0]["snippet"]
    assert [h["image_id"] for h in cat.search("WAVE fear")] == [ids["b.jpg"]]
    assert cat.search("Old") == []  # only current annotations are searched
    assert cat.search("lil*")[0]["alt_text"] == "Water lilies at dusk."
    for nasty in ["x'); DROP TABLE images;--", '"unbalanced', "NEAR(wave", "a:b", "*", "", "\x00"]:
        assert isinstance(cat.search(nasty), list)
    assert cat.status_counts()["images"] == 3
    with cat.engine.connect() as conn:  # what other databases run: LIKE, same answers
        like = search_module.search(conn, "wave", 10, fts=False)
        assert {h["image_id"] for h in like} == {ids["a.jpg"], ids["b.jpg"]}
        assert search_module.search(conn, "100%_", 10, fts=False) == []


def test_find_image(cat: Catalog, tmp_path: Path) -> None:
    cid, run, ids = scan(
        cat,
        tmp_path,
        [
            FileState("a.jpg", 1, 1, "abcd1" + "0" * 59),
            FileState("dup.jpg", 1, 1, "abcd1" + "0" * 59),
            FileState("b.jpg", 1, 1, "abcd2" + "0" * 59),
        ],
    )
    assert cat.find_image(str(tmp_path / "b.jpg")).id == ids["b.jpg"]
    assert cat.find_image(str(ids["b.jpg"])).relpath == "b.jpg"
    assert cat.find_image("ABCD2").id == ids["b.jpg"]
    assert cat.find_image("abcd1").id == ids["a.jpg"]  # one content, two files: the first
    with pytest.raises(NotFoundError, match="ambiguous.*2 different"):
        cat.find_image("abcd")
    with pytest.raises(NotFoundError):
        cat.find_image("abce")
    with pytest.raises(NotFoundError):
        cat.find_image(str(tmp_path / "nope.jpg"))
    os.chdir(tmp_path)
    assert cat.find_image("a.jpg").id == ids["a.jpg"]  # relative to the working folder

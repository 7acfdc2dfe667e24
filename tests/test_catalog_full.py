"""A full catalog during a scan: SQLite writes from C, out of the Python hooks' reach, so
the disk is made full for real with `PRAGMA max_page_count` on the scan's connections
(SQLite then fails with SQLITE_FULL exactly as on a full volume)."""

from __future__ import annotations

from test_reliability_crash import artnote_env, count, finish, integrity, make_images, query, start

from artnote.catalog.engine import _is_full


def test_a_full_catalog_stops_the_scan_in_one_line_and_the_rerun_completes(
    tiny_models, tmp_path, onnx_cache
):
    folder = tmp_path / "collection"
    files = make_images(folder, 40)
    db = tmp_path / "catalog.db"
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    scan = ["scan", folder, "--batch-size", "4", "--quiet"]
    code, err = finish(start([*scan, "--limit", "8"], env))  # every file recorded, 8 annotated
    assert code == 0, err
    kept = query(db, "SELECT id, sha256, alt_text FROM annotations ORDER BY id")
    (pages,) = query(db, "PRAGMA page_count")[0]

    code, err = finish(start(scan, env, {"max_page_count": pages + 2}))
    assert code == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith(f"Error: catalog {db}: database or disk is full (")
    assert "free on its volume" in lines[0] and "run the same command again" in lines[0]
    integrity(db)
    done = count(db, "annotations")
    assert 8 <= done < len(files), "the catalog never filled: nothing was tested"
    assert query(db, "SELECT id, sha256, alt_text FROM annotations ORDER BY id")[:8] == kept

    code, err = finish(start(scan, env))  # space freed (no limit): the same command
    assert code == 0, err
    integrity(db)
    per_content = dict(query(db, "SELECT sha256, count(*) FROM annotations GROUP BY sha256"))
    assert set(per_content) == set(files.values()) and set(per_content.values()) == {1}
    outcomes = [o for (o,) in query(db, "SELECT outcome FROM runs ORDER BY id")]
    assert outcomes[0] == "completed" and outcomes[-1] == "completed"
    assert outcomes[1] in ("failed", "interrupted")  # closed as failed, or found dead later


def test_full_is_recognised_for_sqlite_and_postgresql():
    import sqlite3

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t (x)")
    con.execute("PRAGMA max_page_count=2")
    try:
        con.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        assert _is_full(exc)
    else:
        raise AssertionError("max_page_count did not fill the database")
    assert not _is_full(sqlite3.OperationalError("database is locked"))

    class PgDiskFull(Exception):
        sqlstate = "53100"

    assert _is_full(PgDiskFull()) and not _is_full(ValueError())

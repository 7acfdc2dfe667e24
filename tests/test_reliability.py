"""Reliability and security, the quick checks: SQLite on network filesystems, hostile
files and fields, nothing unpickled or run that should not be, old and future catalogs,
`artnote catalog check` and `backup`.

The slow ones, with real processes killed and racing, are in test_reliability_crash.py
and test_reliability_files.py.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.catalog import FileState, engine, open_catalog
from artnote.catalog.maintenance import backup_catalog
from artnote.cli import app
from artnote.corrections import TEXT_MAX, import_csv
from artnote.emotions import EMOTIONS
from artnote.errors import AdapterError, CatalogError, ModelNotFoundError
from artnote.records import Annotation, Provenance

FIXTURES = Path(__file__).parent / "fixtures"


def cli(*args: object, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def small_catalog(db: Path, root: Path, n: int = 2) -> list[str]:
    """A catalog with `n` annotated images under `root` (made-up files and annotations)."""
    emotions = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
    prov = Provenance("tiny", None, "idefics3", None, None, "1", "ph", {}, "torch", "cpu", 1.0)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    with open_catalog(db) as cat:
        cid = cat.ensure_collection(root)
        run = cat.start_run({}, "tiny", None)
        ids = cat.record_files(
            cid, run, [FileState(f"{i}.jpg", 1, 1, s) for i, s in enumerate(shas)]
        )
        annotation = Annotation("Alt.", "Desc.", emotions, "awe", "Awe.", prov)
        cat.add_annotations(run, [(ids[f"{i}.jpg"], annotation) for i in range(n)])
        cat.finish_run(run, "completed", {})
    return shas


# --- 3. network filesystems: no WAL -----------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / {share} rw,relatime shared:20 - {fstype} server:/export rw,vers=4.2
41 40 0:36 / {share}/local\\040disk rw,relatime shared:21 - ext4 /dev/sdb1 rw
"""


@pytest.mark.parametrize(
    ("fstype", "journal"),
    [("nfs4", "delete"), ("nfs", "delete"), ("cifs", "delete"), ("smb3", "delete"),
     ("9p", "delete"), ("fuse.sshfs", "delete"), ("ext4", "wal"), ("overlay", "wal")],
)  # fmt: skip
def test_catalog_on_a_network_filesystem_uses_a_rollback_journal(
    tmp_path, monkeypatch, caplog, fstype, journal
):
    share = tmp_path / "share"
    (share / "local disk").mkdir(parents=True)
    table = MOUNTINFO.format(share=share, fstype=fstype)
    monkeypatch.setattr(engine, "read_mount_table", lambda: table)
    monkeypatch.setattr(engine, "_warned", set())
    caplog.set_level(logging.WARNING, logger="artnote.catalog.engine")
    small_catalog(share / "catalog.db", share / "art")
    assert not (share / "catalog.db-wal").exists() or journal == "wal"
    for _ in range(2):  # opening it again must not warn again
        with open_catalog(share / "catalog.db") as cat:
            with cat.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == journal
                synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                assert synchronous == (1 if journal == "wal" else 2)  # NORMAL | FULL
    warnings = [r.getMessage() for r in caplog.records]
    if journal == "delete":
        assert len(warnings) == 1 and fstype in warnings[0] and "WAL" in warnings[0]
    else:
        assert warnings == []
    # The innermost mount decides: a local disk mounted inside the share keeps WAL.
    with open_catalog(share / "local disk" / "catalog.db") as cat:
        with cat.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_mount_table_parsing(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "read_mount_table", lambda: None)
    assert engine.filesystem_type(tmp_path) is None  # no /proc: WAL as before
    assert engine.sqlite_journal_mode(str(tmp_path / "c.db")) == "WAL"
    monkeypatch.setattr(engine, "read_mount_table", lambda: "garbage line\n\n")
    assert engine.filesystem_type(tmp_path) is None
    monkeypatch.undo()
    assert engine.filesystem_type("/") not in (None, "")  # this machine's real table


# --- 5. hostile content ---------------------------------------------------------------


class Payload:
    """What a malicious 'weights' file holds: unpickling it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_adapter_and_checkpoint_files_are_never_unpickled(tiny_models, tmp_path):
    import torch

    from artnote.config import ModelSettings
    from artnote.model.adapters import attach_adapters, load_adapter, save_adapter
    from artnote.model.load import load_model
    from trainer.checkpoint import load_optimizer_state

    # The payload works: plain unpickling runs it (so the checks below can fail).
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()

    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    attach_adapters(loaded.model)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"weights": Payload(marker)})
    kwargs = {"family": loaded.family, "base_model": loaded.name}
    # An adapter.safetensors that is really a pickle.
    fake = tmp_path / "fake"
    save_adapter(loaded.model, fake, base_revision=None, **kwargs)
    (fake / "adapter.safetensors").write_bytes(evil)
    with pytest.raises(AdapterError, match="cannot read"):
        load_adapter(loaded.model, fake, **kwargs)
    # Only pickled formats next to a valid config: .bin, .pt (torch.save's zip of a pickle).
    legacy = tmp_path / "legacy"
    shutil.copytree(fake, legacy)
    (legacy / "adapter.safetensors").unlink()
    (legacy / "pytorch_model.bin").write_bytes(evil)
    torch.save({"weights": Payload(marker)}, legacy / "adapter.pt")
    with pytest.raises(AdapterError, match="cannot read"):
        load_adapter(loaded.model, legacy, **kwargs)
    # A checkpoint whose optimizer state is a pickle: --resume refuses it.
    (fake / "optimizer.safetensors").write_bytes(evil)
    optimizer = torch.optim.AdamW([p for p in loaded.model.parameters() if p.requires_grad])
    with pytest.raises(AdapterError, match="cannot read"):
        load_optimizer_state(fake, loaded, optimizer)
    assert not marker.exists()


def test_trust_remote_code_is_off_unless_asked(monkeypatch, tmp_path, caplog):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from artnote.config import ModelSettings
    from artnote.model.load import load_model

    seen: list[object] = []

    def spy(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code", "missing"))
        raise OSError("stop here")

    monkeypatch.setattr(AutoProcessor, "from_pretrained", spy)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", spy)
    caplog.set_level(logging.WARNING, logger="artnote.model.load")
    with pytest.raises(ModelNotFoundError):
        load_model(ModelSettings(name=str(tmp_path), device="cpu"))
    assert seen == [False] and not caplog.records
    with pytest.raises(ModelNotFoundError):
        load_model(ModelSettings(name=str(tmp_path), device="cpu", trust_remote_code=True))
    assert seen == [False, True]
    assert "trust_remote_code is on" in caplog.records[0].getMessage()


def test_corrections_import_refuses_oversized_and_outside_values(tmp_path):
    db = tmp_path / "catalog.db"
    root = tmp_path / "art"
    shas = small_catalog(db, root, 3)
    table = tmp_path / "edited.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sha256", "path", "description"])
        w.writerow([shas[0], "", "x" * (TEXT_MAX + 1)])
        w.writerow(["", f"{root}/../../etc/passwd", "Harmless words."])  # climbs out
        w.writerow([shas[2], "", "A fine correction."])
    with open_catalog(db) as cat:
        report = import_csv(cat, table, "mallory")
        assert not report.imported
        assert report.bad == [
            (2, f"description has {TEXT_MAX + 1} characters, over the limit of {TEXT_MAX}"),
            (3, f"path '{root}/../../etc/passwd' is outside the catalog's collections"),
        ]
        assert cat.status_counts()["corrected"] == 0  # all or nothing
    # A cell past the csv module's own limit is a bad row, never a crash.
    with open(table, "w", newline="", encoding="utf-8") as f:
        f.write(f"sha256,description\n{shas[0]},{'y' * 200_000}\n")
    with open_catalog(db) as cat:
        report = import_csv(cat, table, "mallory")
        assert not report.imported and "unreadable row" in report.bad[0][1]


# CSV formula injection: tests/test_export.py::test_formulas_are_neutralised_in_text_cells_only
# and tests/test_scan.py::test_formula_in_a_description_is_neutralised. A file named like SQL
# is scanned and exported as is: test_reliability_files.py (SQL_NAME).


# --- 6. migrations ----------------------------------------------------------------------


def _rows(db: Path) -> dict[str, dict[object, tuple]]:
    """table -> {rowid: row} for every table that holds data (FTS index tables left out)."""
    con = sqlite3.connect(db)
    try:
        names = [
            n
            for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if n != "alembic_version"
            and not n.startswith(("annotations_fts", "search_fts", "sqlite_"))
        ]
        out = {}
        for name in names:
            cur = con.execute(f'SELECT rowid, * FROM "{name}"')
            cols = [d[0] for d in cur.description][1:]
            out[name] = {r[0]: dict(zip(cols, r[1:], strict=True)) for r in cur}
        return out
    finally:
        con.close()


def _dump(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from artnote.catalog.migrate import alembic_config

    return [r.revision for r in ScriptDirectory.from_config(alembic_config()).walk_revisions()]


@pytest.mark.parametrize("revision", _revisions())
def test_catalog_of_every_revision_upgrades_with_its_rows(tmp_path, revision):
    fixture = FIXTURES / f"catalog_rev{revision}.db"
    assert fixture.is_file(), f"add {fixture.name} (see make_catalog_rev0002.py)"
    path = tmp_path / fixture.name
    shutil.copy(fixture, path)
    before = _rows(path)
    assert sum(len(rows) for rows in before.values()) >= 5
    open_catalog(path).close()
    after = _rows(path)
    for table, rows in before.items():
        for rowid, row in rows.items():
            kept = after[table].get(rowid)
            assert kept is not None, (table, rowid)
            assert {k: kept[k] for k in row} == row, (table, rowid)  # new columns may appear
    assert cli("catalog", "check", "--catalog", path).stdout.strip().endswith("ok")
    if revision >= "0002":
        with open_catalog(path) as cat:
            by_sha = {r["sha256"]: r for r in cat.export_rows()}
            assert by_sha["a" * 64]["status"] == "corrected"
            assert by_sha["a" * 64]["description"].startswith("A towering wave")
            assert [a["name"] for a in cat.adapters()] == ["prints-v1"]
            assert cat.status_counts()["approved"] == 1


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_catalog_from_a_newer_artnote_is_refused_by_every_command(tmp_path, journal):
    # In the library: test_catalog.py::test_catalog_from_newer_artnote_is_refused_untouched
    # A refused file must stay byte for byte as it was: no switch of its header to WAL,
    # no -wal/-shm files left beside it (artnote's own catalogs are WAL; older ones and
    # those on network filesystems use a rollback journal).
    path = tmp_path / "future.db"
    small_catalog(path, tmp_path / "art", 3)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA journal_mode={journal}")
        db.execute("UPDATE alembic_version SET version_num = '0099'")
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    beside = sorted(p.name for p in tmp_path.iterdir())
    model = tmp_path / "model"  # enough of a model folder for scan to reach the catalog
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "art").mkdir()
    table = tmp_path / "fixes.csv"
    table.write_text("sha256,alt_text\n" + "a" * 64 + ",x\n")
    commands = [
        ["status"],
        ["search", "wave"],
        ["export", "csv"],
        ["export", "jsonl"],
        ["approve", "a" * 64],
        ["correct", "a" * 64, "--alt-text", "x"],
        ["corrections", "import", table],
        ["report", "--out", tmp_path / "report.html"],
        ["scan", tmp_path / "art", "--model", model],
        ["finetune", "--model", model],
        ["eval", "--model", model],
        ["review", "--port", "0"],
    ]
    for args in commands:
        result = cli(*args, "--catalog", path, code=1)
        assert "0099" in result.stderr and "newer artnote" in result.stderr, args
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.output
    # check and backup read any catalog (a copy before upgrading artnote is the safe
    # move), and change nothing either
    assert "schema revision: 0099" in cli("catalog", "check", "--catalog", path).stdout
    cli("catalog", "backup", tmp_path / "copy.db", "--catalog", path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    made = ["art", "copy.db", "fixes.csv", "model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(beside + made)


# --- 7. catalog check and backup ------------------------------------------------------------


def test_catalog_check_finds_broken_references_and_damage(tmp_path):
    db = tmp_path / "catalog.db"
    small_catalog(db, tmp_path / "art", 400)
    result = cli("catalog", "check", "--catalog", db)
    assert result.stdout.splitlines()[-1] == "ok"
    missing = cli("catalog", "check", "--catalog", tmp_path / "none.db", code=1)
    assert missing.stderr.startswith("Error: no catalog at")

    dangling = tmp_path / "dangling.db"
    cli("catalog", "backup", dangling, "--catalog", db)
    with sqlite3.connect(dangling) as con:  # foreign keys are off in a plain connection
        con.execute(
            "INSERT INTO reviews (sha256, image_id, kind, source, created_at)"
            " VALUES ('f', 9999, 'approval', 'cli', '2025-01-01')"
        )
    result = cli("catalog", "check", "--catalog", dangling, code=1)
    assert "foreign key: table reviews row 1 refers to a missing row of images" in result.stdout

    damaged = tmp_path / "damaged.db"
    cli("catalog", "backup", damaged, "--catalog", db)
    con = sqlite3.connect(damaged)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    try:  # a leaf page of the sha256 index (dbstat: SQLite's page-level view)
        (leaf,) = con.execute(
            "SELECT max(pageno) FROM dbstat WHERE name = 'ix_images_sha256' AND pagetype = 'leaf'"
        ).fetchone()
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table to find an index page to damage")
    finally:
        con.close()
    data = bytearray(damaged.read_bytes())
    page = slice((leaf - 1) * page_size, leaf * page_size)
    # Change one character of a stored key: the index no longer matches its table.
    index_page = bytes(data[page])
    for i in range(len(index_page) - 64):
        chunk = index_page[i : i + 64]
        if all(c in b"0123456789abcdef" for c in chunk):
            data[page.start + i] ^= 0x01  # '0' <-> '1', 'a' <-> '`'...
            break
    damaged.write_bytes(bytes(data))
    result = cli("catalog", "check", "--catalog", damaged, code=1)
    assert "integrity: " in result.stdout and "ix_images_sha256" in result.stdout, result.stdout
    assert "Traceback" not in result.output


def test_catalog_backup_refuses_what_it_cannot_do_safely(tmp_path):
    db = tmp_path / "catalog.db"
    small_catalog(db, tmp_path / "art")
    copy = tmp_path / "copy.db"
    result = cli("catalog", "backup", copy, "--catalog", db)
    assert "annotations" in result.stderr
    assert "exists" in cli("catalog", "backup", copy, "--catalog", db, code=1).stderr
    cli("catalog", "backup", copy, "--catalog", db, "--force")
    assert "another file" in cli("catalog", "backup", db, "--catalog", db, "--force", code=1).stderr
    url = "postgresql://curator:secret@db.example/artnote"
    err = cli("catalog", "backup", copy, "--catalog", url, code=1).stderr
    assert "pg_dump" in err and "secret" not in err
    with pytest.raises(CatalogError, match="no catalog"):
        backup_catalog(tmp_path / "missing.db", copy)

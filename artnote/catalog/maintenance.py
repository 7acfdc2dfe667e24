"""Looking after a SQLite catalog: consistent backups and integrity checks.

`backup_catalog` uses SQLite's online backup API in one step: the copy is read
inside one read transaction, so it is the catalog as of one moment even while a
scan keeps committing (WAL readers never block writers, nor writers readers).
A plain file copy taken then could mix pages from before and after a commit.
The copy is written under a temporary name, checked, synced, and only then renamed;
a full disk is a one-line error naming the file and the space left.

`check_catalog` never migrates or writes: it reports what SQLite's own checks
(`integrity_check`, `foreign_key_check`) say, and at which schema revision the
catalog is.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from artnote.catalog.engine import BUSY_TIMEOUT_S, catalog_url, display_url
from artnote.errors import CatalogError
from artnote.files import PARTIAL, temporary_name, write_error

# Tables counted in reports: enough to see at a glance that a copy holds the work.
COUNTED_TABLES = ("collections", "runs", "images", "annotations", "reviews", "adapters")
MAX_INTEGRITY_ERRORS = 100  # integrity_check stops after this many
SQLITE_FULL = 13  # the database or disk is full


@dataclass
class BackupReport:
    source: str
    path: Path
    pages: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    where: str
    integrity: list[str] = field(default_factory=list)  # ["ok"] when sound
    foreign_keys: list[str] = field(default_factory=list)  # one line per broken reference
    revisions: list[str] = field(default_factory=list)  # Alembic revision(s) stored
    error: str | None = None  # the file could not be checked at all

    @property
    def ok(self) -> bool:
        return self.error is None and self.integrity == ["ok"] and not self.foreign_keys

    def problems(self) -> list[str]:
        out = [f"cannot check: {self.error}"] if self.error else []
        out += [f"integrity: {line}" for line in self.integrity if line != "ok"]
        out += [f"foreign key: {line}" for line in self.foreign_keys]
        return out


def sqlite_path(url_or_path: str | Path, action: str) -> Path:
    """The file of a SQLite catalog that must exist; CatalogError for other databases."""
    url = catalog_url(url_or_path)
    if url.get_backend_name() != "sqlite":
        postgres = url.get_backend_name() == "postgresql"
        tool = "pg_dump" if postgres and action == "backup" else "the database's own tools"
        raise CatalogError(
            f"artnote catalog {action} works on SQLite catalogs; for {display_url(url)} use {tool}"
        )
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise CatalogError(f"artnote catalog {action} needs a catalog file, not {url.database!r}")
    path = Path(url.database).expanduser().absolute()
    if not path.is_file():
        raise CatalogError(f"no catalog at {path}")
    return path


def backup_catalog(
    url_or_path: str | Path, dest: str | Path, *, force: bool = False
) -> BackupReport:
    """Copy the catalog to `dest` as of one moment, safe while scans write to it.

    The copy is one self-contained file (rollback journal, no -wal beside it)
    that passed `PRAGMA integrity_check`. Refuses to overwrite `dest` unless
    `force`, and never writes over the catalog itself.
    """
    source = sqlite_path(url_or_path, "backup")
    target = Path(dest).expanduser().absolute()
    if not target.parent.is_dir():
        raise CatalogError(f"cannot write {target}: folder {target.parent} does not exist")
    if target.exists():
        if target.is_dir():
            raise CatalogError(f"{target} is a folder; give a file name for the backup")
        if os.path.samefile(target, source):
            raise CatalogError("the backup must go to another file than the catalog itself")
        if not force:
            raise CatalogError(f"{target} exists; choose another name or use --force")
    _remove_leftovers(target)
    # SQLite's backup API writes by path, so the copy is made under a temporary name of
    # artnote.files' kind (hidden, beside it, ending .partial) and published as it would.
    partial = temporary_name(target)
    start = time.perf_counter()
    try:
        src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_S)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # pages=-1: one step, one read transaction, one moment
                dst.execute("PRAGMA journal_mode=DELETE")  # the copy stands alone
                integrity = [row[0] for row in dst.execute("PRAGMA integrity_check")]
                if integrity != ["ok"]:
                    raise CatalogError(
                        f"the backup of {source} failed its integrity check ({integrity[0]}); "
                        "run artnote catalog check on the catalog"
                    )
                pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
                counts = _counts(dst)
            finally:
                dst.close()
        finally:
            src.close()
        with open(partial, "rb+") as fh:  # on disk before it takes the real name
            os.fsync(fh.fileno())
        partial.replace(target)
    except sqlite3.Error as exc:
        _remove_partial(partial)
        if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
            raise write_error(target, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise CatalogError(f"cannot back up catalog {source}: {exc}") from None
    except OSError as exc:
        _remove_partial(partial)
        raise write_error(target, exc) from None
    except BaseException:
        _remove_partial(partial)
        raise
    return BackupReport(str(source), target, pages, time.perf_counter() - start, counts)


def _remove_partial(partial: Path) -> None:
    for path in (partial, partial.with_name(partial.name + "-journal")):
        path.unlink(missing_ok=True)


def _remove_leftovers(target: Path) -> None:
    """Remove what killed backups to `target` left: the temporary copies (and journals) not
    written to for a day, so never one that a running backup is writing."""
    day_ago = time.time() - 86400
    for path in target.parent.glob(f".{glob.escape(target.name)}.*{PARTIAL}*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < day_ago:
                path.unlink()
    target.with_name(target.name + ".partial").unlink(missing_ok=True)  # older artnotes'


def check_catalog(url_or_path: str | Path) -> CheckReport:
    """Run SQLite's integrity and foreign-key checks on the catalog, changing nothing."""
    path = sqlite_path(url_or_path, "check")
    report = CheckReport(str(path))
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        report.error = str(exc)
        return report
    try:
        query = f"PRAGMA integrity_check({MAX_INTEGRITY_ERRORS})"
        report.integrity = [str(row[0]) for row in db.execute(query)]
        for table, rowid, parent, _ in db.execute("PRAGMA foreign_key_check"):
            report.foreign_keys.append(
                f"table {table} row {rowid} refers to a missing row of {parent}"
            )
        if _has_table(db, "alembic_version"):
            report.revisions = [
                str(r[0]) for r in db.execute("SELECT version_num FROM alembic_version")
            ]
    except sqlite3.Error as exc:  # not a database, or too damaged to read at all
        report.error = str(exc)
    finally:
        db.close()
    return report


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    # Table names come from our constant tuple, never from input.
    return {
        table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        for table in COUNTED_TABLES
        if _has_table(db, table)
    }

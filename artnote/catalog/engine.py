"""Engines for the catalog: a plain path means SQLite; anything with '://' is a SQLAlchemy URL.

SQLite is tuned for one writer and many readers across processes: WAL journal,
a 30 s busy timeout, foreign keys on, and write transactions that take the
write lock up front (BEGIN IMMEDIATE). Without the last, two writers that both
began by reading deadlock on lock upgrade and one fails at once with
"database is locked" instead of waiting its turn.

WAL needs shared memory that every process sees, which network filesystems
(NFS, SMB/CIFS, 9p, sshfs...) do not give: there it can corrupt the catalog.
A catalog on one of those uses the rollback journal instead (one warning).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NotSupportedError,
    ProgrammingError,
    SQLAlchemyError,
)

from artnote.errors import CatalogError
from artnote.files import free_space

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
# Execution option naming the BEGIN flavour; only our own constants ever go in it.
BEGIN_OPTION = "artnote_begin"
WRITE_OPTIONS = {BEGIN_OPTION: "IMMEDIATE"}


def catalog_url(url_or_path: str | Path) -> URL:
    """Turn a path or URL into a SQLAlchemy URL; a SQLite file's folder must exist."""
    text = str(url_or_path)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        url = URL.create("sqlite", database=str(path))
    else:
        try:
            url = make_url(text)
        except ArgumentError as exc:
            raise CatalogError(f"not a catalog path or database URL: {text!r} ({exc})") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        assert url.database is not None
        if not url.database.startswith("file:"):
            path = Path(url.database).expanduser().absolute()
            if path.is_dir():  # else SQLite's own words: "unable to open database file"
                raise CatalogError(
                    f"catalog {path} is a folder; give a catalog file, e.g. "
                    f"--catalog {path / 'artnote.db'}"
                )
            parent = path.parent
            if not parent.is_dir():
                raise CatalogError(
                    f"cannot create catalog {url.database}: folder {parent} does not exist"
                )
    return url


def display_url(url: URL) -> str:
    """The URL for messages, password hidden; a SQLite catalog is shown as its path."""
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)


def create_catalog_engine(url_or_path: str | Path, *, write: bool = False) -> Engine:
    """An engine for the catalog; `write=True` makes every transaction a write transaction."""
    url = catalog_url(url_or_path)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, SQLAlchemyError, ImportError) as exc:
        raise CatalogError(f"cannot open catalog {display_url(url)}: {exc}") from None
    if url.get_backend_name() == "sqlite":
        _tune_sqlite(engine, sqlite_journal_mode(url.database))
    elif url.get_backend_name() == "postgresql":
        _serialise_postgres_writes(engine)
    return engine.execution_options(**WRITE_OPTIONS) if write else engine


PG_WRITE_LOCK = 0x61727411  # advisory lock key of catalog writes (migrations use their own)


def _serialise_postgres_writes(engine: Engine) -> None:
    """PostgreSQL's BEGIN IMMEDIATE: a write transaction first takes one advisory lock.

    The catalog's writes read before they write (is this folder, file or content
    known? then insert), and at READ COMMITTED two processes would both read "no"
    and one would then fail on a unique key, or both annotate one content. The
    lock is the transaction's, released by its commit or rollback. Like SQLite's
    busy timeout, a wait longer than BUSY_TIMEOUT_S (a client stuck inside a write)
    ends in a one-line CatalogError instead of hanging every scan.
    """

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(BEGIN_OPTION) == "IMMEDIATE":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


# Filesystems where several processes cannot share SQLite's WAL index safely
# (https://sqlite.org/wal.html: "WAL does not work over a network filesystem").
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "9p", "afs", "ncpfs", "coda",
        "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "davfs", "drvfs", "vboxsf",
        "fuse.sshfs", "fuse.glusterfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse",
        "fuse.cephfs", "fuse.juicefs",
    }
)  # fmt: skip
_warned: set[str] = set()


def read_mount_table() -> str | None:
    """The text of /proc/self/mountinfo (Linux), or None where there is none."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def filesystem_type(path: str | Path) -> str | None:
    """The type of the filesystem holding `path` (e.g. 'ext4', 'nfs4'); None when unknown."""
    table = read_mount_table()
    if not table:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in table.splitlines():
        fields = line.split()
        if "-" not in fields[5:]:
            continue  # not a mountinfo line
        point = _unescape(fields[4])
        fstype = fields[fields.index("-", 5) + 1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the innermost (and last) mount wins
            best, best_type = point, fstype
    return best_type


def sqlite_journal_mode(database: str | None) -> str:
    """WAL, except for a catalog file on a network filesystem: DELETE (rollback journal)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return "WAL"
    folder = Path(database).expanduser().absolute().parent
    fstype = filesystem_type(folder)
    if fstype is None or fstype.lower() not in NETWORK_FILESYSTEMS:
        return "WAL"
    if database not in _warned:
        _warned.add(database)
        log.warning(
            "catalog %s is on a network filesystem (%s), where SQLite's WAL mode can corrupt "
            "it: using a rollback journal instead (slower; let one machine write at a time)",
            database,
            fstype,
        )
    return "DELETE"


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in paths as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _tune_sqlite(engine: Engine, journal_mode: str) -> None:
    # With a rollback journal, synchronous=NORMAL can lose the file on a power cut.
    synchronous = "NORMAL" if journal_mode == "WAL" else "FULL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that we choose its flavour below
        # (the recipe from SQLAlchemy's SQLite dialect documentation).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching the journal mode may wait for other processes.
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute(f"PRAGMA journal_mode={journal_mode}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # With WAL a power cut loses at most the last commits, never the file.
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):
            raise CatalogError(f"internal error: unknown transaction mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def translate_errors(where: str) -> Iterator[None]:
    """Turn driver errors (locked, unreadable, not a database) into one-line CatalogErrors."""
    try:
        yield
    except (IntegrityError, ProgrammingError, DataError, InterfaceError, NotSupportedError):
        raise  # our bugs, not the user's: keep the full error
    except DBAPIError as exc:  # locked, unreadable, full disk, not a database, server gone
        if _is_full(exc.orig):
            free = "" if "://" in where else f" ({free_space(where)} free on its volume)"
            raise CatalogFullError(
                f"catalog {where}: {exc.orig}{free}; the write in progress was not saved: "
                "free some space and run the same command again"
            ) from exc
        raise CatalogError(f"catalog {where}: {exc.orig}") from exc


class CatalogFullError(CatalogError):
    """The catalog's disk (or SQLite's max_page_count, or the server's disk) is full."""


def _is_full(error: BaseException | None) -> bool:
    """SQLite's SQLITE_FULL, or PostgreSQL's disk_full (SQLSTATE 53100)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == 13  # SQLITE_FULL, extended codes included
    return getattr(error, "sqlstate", None) == "53100" or getattr(error, "pgcode", None) == "53100"

"""Engines for the catalog: a plain path means SQLite; anything with '://' is a SQLAlchemy URL.

SQLite is tuned for one writer and many readers across processes: WAL journal,
a 30 s busy timeout, foreign keys on, and write transactions that take the
write lock up front (BEGIN IMMEDIATE). Without the last, two writers that both
began by reading deadlock on lock upgrade and one fails at once with
"database is locked" instead of waiting its turn.
"""

from __future__ import annotations

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
            parent = Path(url.database).expanduser().absolute().parent
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
        _tune_sqlite(engine)
    return engine.execution_options(**WRITE_OPTIONS) if write else engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take BEGIN away from the sqlite3 module so that we choose its flavour below
        # (the recipe from SQLAlchemy's SQLite dialect documentation).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Safe with WAL (a power cut loses at most the last commits, never the file).
            cursor.execute("PRAGMA synchronous=NORMAL")
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
        raise CatalogError(f"catalog {where}: {exc.orig}") from exc

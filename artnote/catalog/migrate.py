"""Bring any catalog to the newest schema, or refuse it without touching it.

Refused: a catalog at a revision this code does not know (written by a newer
artnote; upgrading or downgrading it could lose data) and a database that holds
tables but no Alembic version (not an artnote catalog).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from artnote import __version__
from artnote.catalog.engine import WRITE_OPTIONS, translate_errors
from artnote.errors import CatalogError

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic is imported only when a catalog needs migrating or checking: it costs
# about 0.2 s, and `artnote status` and `export` should start at once.


def migrations_dir() -> Path:
    """The folder of the `migrations` package, installed next to artnote."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise CatalogError("artnote is incomplete: its 'migrations' package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / "env.py").is_file() or not (folder / "versions").is_dir():
        raise CatalogError(f"'migrations' at {folder} is not artnote's (no env.py or versions/)")
    return folder


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for our migrations (no alembic.ini), optionally bound to a connection."""
    import sys

    from alembic.config import Config

    # stdout as it is now: Config's default is the sys.stdout of when alembic was imported,
    # which may be a stream closed since (an embedding program's, a test runner's).
    config = Config(stdout=sys.stdout)
    # ConfigParser interpolates '%', which may appear in an install path.
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def upgrade_to_head(engine: Engine, where: str) -> None:
    """Upgrade the catalog behind `engine` to head, under the write lock when it is SQLite."""
    with translate_errors(where):
        with engine.connect() as conn:
            current = _stored_revisions(conn)
        quick = quick_heads(migrations_dir())
        if current and current == quick:
            return  # the common case: one read, no lock, no Alembic
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(alembic_config())
        heads = set(script.get_heads())
        known = {rev.revision for rev in script.walk_revisions()}
        with engine.connect() as conn:  # read again: another process may be migrating it
            current = _stored_revisions(conn)
            _refuse_foreign(conn, current, known, where)
        if current == heads:
            return
        with engine.connect() as conn:
            _upgrade_locked(conn.execution_options(**WRITE_OPTIONS), heads, known, where)


def quick_heads(folder: Path) -> set[str] | None:
    """The head revisions, read from the revision files' literals; None when unsure.

    Only ever used to recognise an up-to-date catalog; anything else goes
    through Alembic itself.
    """
    literals = _revision_literals(folder)
    if literals is None:
        return None
    revisions, parents = literals
    return set(revisions - parents) or None


@functools.cache  # once per process: quick_heads and refuse_newer_file both ask
def _revision_literals(folder: Path) -> tuple[frozenset[str], frozenset[str]] | None:
    """(every revision, every parent revision) of the revision files, from their
    literals without importing them; None when a file cannot be read so."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (folder / "versions").glob("*.py"):
        values: dict[str, object] = {}
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names = [t.id for t in targets if isinstance(t, ast.Name)]
                    for name in set(names) & {"revision", "down_revision"}:
                        assert node.value is not None
                        values[name] = ast.literal_eval(node.value)
        except (OSError, SyntaxError, ValueError, AssertionError, UnicodeDecodeError):
            return None
        revision, down = values.get("revision"), values.get("down_revision")
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
    return frozenset(revisions), frozenset(parents)


def refuse_newer_file(path: Path, where: str) -> None:
    """Refuse a SQLite catalog file stamped with a revision this artnote does not know,
    before any connection of ours touches it.

    Our connections switch the file to WAL as they open it, which rewrites its header
    and leaves -wal/-shm files beside it; a catalog made by a newer artnote must stay
    byte for byte as it was. So its revision is read first through an `immutable`
    connection, which writes nothing and creates no file. (Immutable also ignores a
    WAL another process may be writing: a revision read so is at worst an older one,
    which the normal path, under its own connection, checks again.) A file that
    cannot be read so is left to the normal path and its error messages.
    """
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?immutable=1", uri=True)
    except sqlite3.Error:
        return
    try:
        stored = {str(v) for (v,) in db.execute("SELECT version_num FROM alembic_version")}
    except sqlite3.Error:
        return  # no such table (a new or foreign file), or not a database: said later
    finally:
        db.close()
    literals = _revision_literals(migrations_dir())
    if not stored or (literals is not None and stored <= literals[0]):
        return
    from alembic.script import ScriptDirectory  # the literals were unsure: ask Alembic

    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    _refuse_unknown(stored, known, where)


def has_schema(engine: Engine, where: str) -> bool:
    """Does the database hold any table (an artnote catalog, or something foreign that
    upgrade_to_head will refuse by name)? False for an empty database."""
    with translate_errors(where), engine.connect() as conn:
        return bool(inspect(conn).get_table_names())


_PG_LOCK_KEY = 0x61727410  # any constant shared by every artnote process


def _stored_revisions(conn: Connection) -> set[str]:
    if not inspect(conn).has_table("alembic_version"):
        return set()
    return {str(v) for v in conn.execute(text("SELECT version_num FROM alembic_version")).scalars()}


def _upgrade_locked(conn: Connection, heads: set[str], known: set[str], where: str) -> None:
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        # Batch migrations copy and drop tables; with foreign keys enforced, dropping a
        # referenced table fails or cascades. The pragma only works outside a
        # transaction, hence straight on the driver connection before BEGIN.
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
    try:
        with conn.begin():
            if conn.dialect.name == "postgresql":  # SQLite has BEGIN IMMEDIATE; this is PG's
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            # Re-read under the lock: another process may have migrated meanwhile.
            current = _stored_revisions(conn)
            _refuse_foreign(conn, current, known, where)
            if current == heads:
                return
            from alembic import command

            command.upgrade(alembic_config(conn), "head")
            if sqlite:
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise CatalogError(
                        f"catalog {where}: migration left {len(broken)} broken references "
                        f"(first in table {broken[0][0]}); nothing was changed"
                    )
    finally:
        if sqlite and not conn.closed and not conn.invalidated:
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def _refuse_unknown(current: set[str], known: Collection[str], where: str) -> None:
    unknown = sorted(current - set(known))
    if unknown:
        raise CatalogError(
            f"catalog {where} has schema revision {', '.join(unknown)}, unknown to artnote "
            f"{__version__} (made by a newer artnote?); upgrade artnote to open it. "
            "The catalog was not changed."
        )


def _refuse_foreign(
    conn: Connection, current: set[str], known: Collection[str], where: str
) -> None:
    _refuse_unknown(current, known, where)
    if not current:
        tables = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
        if tables:
            raise CatalogError(
                f"{where} is a database with tables ({', '.join(sorted(tables)[:5])}) "
                "but not an artnote catalog; give a new file or an empty database"
            )

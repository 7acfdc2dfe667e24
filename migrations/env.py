"""Alembic environment for the artnote catalog.

Two ways in:

- `open_catalog()` runs migrations programmatically and hands its own connection
  (already inside a write transaction) over in `config.attributes["connection"]`;
- the `alembic` command line (alembic.ini at the repository root) opens the URL
  given by `-x url=...`, else $ARTNOTE_CATALOG, else `sqlalchemy.url` in alembic.ini,
  through the same engine factory, so SQLite gets the same pragmas either way.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection

from artnote.catalog.engine import catalog_url, create_catalog_engine
from artnote.catalog.models import Base, UTCDateTime, is_fts_table

config = context.config
target_metadata = Base.metadata
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

NameType = Literal[
    "schema", "table", "column", "index", "unique_constraint", "foreign_key_constraint"
]


def include_name(name: str | None, type_: NameType, parent_names: Any) -> bool:
    # The FTS5 index and its shadow tables are made by raw SQL on SQLite only;
    # without this, autogenerate would propose dropping them.
    if type_ == "table" and name is not None:
        return not is_fts_table(name)
    return True


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Revisions must not import artnote: render our UTC type as the plain type it wraps.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        include_name=include_name,
        render_item=render_item,
        compare_type=True,
        **kwargs,
    )


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get("ARTNOTE_CATALOG") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no catalog: pass -x url=PATH|URL or set ARTNOTE_CATALOG")
    return url


def run_migrations_offline() -> None:
    _configure(url=catalog_url(_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_catalog_engine(_url(), write=True)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

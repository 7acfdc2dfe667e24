"""The catalog: what was scanned, what the model said, and which run said it.

`open_catalog(url)` takes a path (a SQLite file, created when missing) or any
SQLAlchemy URL, upgrades the schema to the newest Alembic revision, and returns
a `Catalog`. See artnote/catalog/catalog.py for how a scan uses it.
"""

from __future__ import annotations

from pathlib import Path

from artnote.catalog.catalog import Catalog
from artnote.catalog.engine import catalog_url, create_catalog_engine, display_url
from artnote.catalog.migrate import has_schema, refuse_newer_file, upgrade_to_head
from artnote.catalog.rows import FileState, ImageInfo, ImageMeta, KnownFile, PendingImage
from artnote.errors import CatalogError

__all__ = [
    "Catalog",
    "FileState",
    "ImageInfo",
    "ImageMeta",
    "KnownFile",
    "PendingImage",
    "open_catalog",
]


NO_CATALOG_HINT = "run `artnote scan FOLDER` first or pass --catalog"


def open_catalog(url: str | Path, *, create: bool = True) -> Catalog:
    """Open the catalog at a path or URL, migrated to the newest schema.

    With `create` (a scan, an import) a missing SQLite file is made; without it
    (status, export, search, corrections...) a missing catalog is a CatalogError
    and nothing is written: a command run in the wrong folder must not leave an
    empty catalog behind that looks like lost data.

    Raises CatalogError when the folder of a SQLite file does not exist, the path
    is a folder, the database cannot be read, it is not an artnote catalog, or it
    was made by a newer artnote (then it is left untouched).
    """
    sa_url = catalog_url(url)
    where = display_url(sa_url)
    database = sa_url.database or ""
    sqlite_file = sa_url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    sqlite_file = sqlite_file and not database.startswith("file:")
    if sqlite_file and not Path(database).exists():
        if not create:
            raise CatalogError(f"no catalog at {where}: {NO_CATALOG_HINT}")
    elif sqlite_file:
        refuse_newer_file(Path(database), where)  # before our connections switch it to WAL
    engine = create_catalog_engine(url)
    try:
        if not create and not has_schema(engine, where):
            raise CatalogError(f"no artnote catalog in {where}: {NO_CATALOG_HINT}")
        upgrade_to_head(engine, where)
    except BaseException:
        engine.dispose()
        raise
    return Catalog(engine, where)

"""The catalog: what was scanned, what the model said, and which run said it.

`open_catalog(url)` takes a path (a SQLite file, created when missing) or any
SQLAlchemy URL, upgrades the schema to the newest Alembic revision, and returns
a `Catalog`. See artnote/catalog/catalog.py for how a scan uses it.
"""

from __future__ import annotations

from pathlib import Path

from artnote.catalog.catalog import Catalog
from artnote.catalog.engine import catalog_url, create_catalog_engine, display_url
from artnote.catalog.migrate import upgrade_to_head
from artnote.catalog.rows import FileState, ImageInfo, ImageMeta, KnownFile, PendingImage

__all__ = [
    "Catalog",
    "FileState",
    "ImageInfo",
    "ImageMeta",
    "KnownFile",
    "PendingImage",
    "open_catalog",
]


def open_catalog(url: str | Path) -> Catalog:
    """Open (creating if needed) the catalog at a path or URL, migrated to the newest schema.

    Raises CatalogError when the folder of a SQLite file does not exist, the
    database cannot be read, it is not an artnote catalog, or it was made by a
    newer artnote (then it is left untouched).
    """
    where = display_url(catalog_url(url))
    engine = create_catalog_engine(url)
    try:
        upgrade_to_head(engine, where)
    except BaseException:
        engine.dispose()
        raise
    return Catalog(engine, where)

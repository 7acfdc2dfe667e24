"""Exports and imports in the formats museums' other systems read: IIIF, XMP, Label Studio,
Datasette. Each module reads rows from artnote.catalog and never the reverse."""

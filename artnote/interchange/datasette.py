"""Metadata that makes Datasette a read-only browser of a SQLite catalog.

`datasette artnote.db -m metadata.json` then shows, first, the `current_annotations`
view (migrations/versions/0005): one row per present image with the text users see now
(curators' corrections over model output), its review status and dominant emotion,
faceted on status and emotion and searchable through the catalog's own FTS5 index
(`search_fts`, whose rowid is the view's text_id). The other tables get descriptions;
the internal ones (Alembic's version, the FTS5 shadow tables) are hidden.

Datasette reads SQLite only; a PostgreSQL catalog is browsed with any SQL client
through the same view.
"""

from __future__ import annotations

from typing import Any

from artnote import __version__
from artnote.emotions import EMOTION_COLUMNS

ABOUT = "artnote catalog"

CURRENT_COLUMNS = {
    "image_id": "The image's id in the catalog (artnote correct/approve take it).",
    "folder": "The scanned folder the image was found in.",
    "path": "The image's path under that folder.",
    "width": "Width in pixels, as displayed (EXIF orientation applied).",
    "height": "Height in pixels, as displayed.",
    "status": "draft: model text; corrected: a curator changed or approved part of it; "
    "approved: a curator approved it all.",
    "dominant_emotion": "The most likely of ArtEmis's nine emotions (a curator's choice "
    "over the model's).",
    "alt_text": "Alt text (at most 125 characters): the newest correction, else the model's.",
    "description": "Long description: the newest correction, else the model's.",
    "explanation": "Why the image evokes that emotion: the newest correction, else the model's.",
    "sha256": "SHA-256 of the file's bytes: identical copies share their annotation.",
    "text_id": "Row of search_texts (and of the search_fts index) holding these texts.",
}

TABLES: dict[str, str] = {
    "images": "Every file a scan has seen: path, size, hash, and status (pending, "
    "annotated, failed, missing).",
    "annotations": "Model output, append-only: each run's text, the nine emotion "
    "probabilities and full provenance (model, revision, adapter, prompt version).",
    "reviews": "Curators' corrections and approvals, append-only (who, when, where from).",
    "search_texts": "Per content: the text users see now, its status and dominant emotion.",
    "collections": "Scanned folders.",
    "runs": "Each scan and fine-tune run: settings, counts and outcome.",
    "adapters": "Adapters trained by artnote finetune.",
    "reference_texts": "Every human text known per content (ArtEmis utterances), for evaluation.",
    "objects": "Museum objects by object number (artnote import records).",
    "object_records": "Each object's catalogue data (title, maker, date, medium, ...), "
    "append-only: the highest revision is current.",
    "object_images": "Which object each image shows, and its primary image.",
    "object_files": "File names an export's image column lists per object.",
    "record_imports": "Each records import: its file and how it linked images.",
}

HIDDEN = (
    "alembic_version",
    *(f"search_fts{suffix}" for suffix in ("", "_config", "_data", "_docsize", "_idx")),
)


def metadata(database: str) -> dict[str, Any]:
    """Datasette's metadata document for the catalog Datasette calls `database` (its file
    name without the extension)."""
    tables: dict[str, Any] = {
        "current_annotations": {
            "description": "The current annotation of each present image: what "
            "`artnote export` writes, with corrections laid over model output.",
            "columns": CURRENT_COLUMNS,
            "facets": ["status", "dominant_emotion", "folder"],
            "fts_table": "search_fts",
            "fts_pk": "text_id",
            "sort": "path",
            "size": 50,
            "label_column": "alt_text",
        },
        "annotations": {
            "description": TABLES["annotations"],
            "facets": ["dominant_emotion", "model", "adapter_name"],
            "columns": {c: f"Probability of {c.replace('_', ' ')}" for c in EMOTION_COLUMNS},
        },
        "reviews": {"description": TABLES["reviews"], "facets": ["kind", "field", "source"]},
        "images": {"description": TABLES["images"], "facets": ["status", "format"]},
    }
    for name, text in TABLES.items():
        tables.setdefault(name, {"description": text})
    for name in HIDDEN:
        tables[name] = {"hidden": True}
    return {
        "title": ABOUT,
        "description": "Annotations of a museum image collection by artnote "
        f"{__version__}: machine text is status draft until a curator reviews it.",
        "databases": {database: {"tables": tables}},
    }

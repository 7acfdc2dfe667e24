"""What the Label Studio tests share (test_label_studio.py builds exports by hand,
test_label_studio_live.py gets them from a real Label Studio): reading tasks and results,
importing an export, and what the catalog holds afterwards."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import artnote.interchange.label_studio as ls
from artnote.catalog import open_catalog
from artnote.interchange.label_studio import import_label_studio

NEW_ALT = "A great wave curls over three boats, Mount Fuji small behind it."


def painter_of(task: dict[str, Any]) -> str:
    return Path(task["data"]["artnote_path"]).stem.split("_")[0]


def edited(result: list[dict[str, Any]], **values: str) -> list[dict[str, Any]]:
    """A copy of a prediction's result with some values replaced (emotion: a choice;
    approve="approved": the checkbox ticked)."""
    out = copy.deepcopy(result)
    for name, value in values.items():
        key = "text" if name in ls.TEXTS else "choices"
        kind = "textarea" if key == "text" else "choices"
        out = [r for r in out if r["from_name"] != name]
        out.append({"from_name": name, "to_name": "image", "type": kind, "value": {key: [value]}})
    return out


def catalog_rows(db: Path) -> dict[str, dict[str, Any]]:
    with open_catalog(db) as cat:
        return {Path(r["path"]).stem.split("_")[0]: r for r in cat.export_rows()}


def review_rows(db: Path) -> list[tuple[str, str | None, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT kind, field, source, by FROM reviews ORDER BY id").fetchall()


def import_file(db: Path, path: Path, by: str | None = "curator", **kwargs: Any):
    with open_catalog(db) as cat:
        return import_label_studio(cat, path, by, **kwargs)

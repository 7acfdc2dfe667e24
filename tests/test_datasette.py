"""`artnote export datasette-metadata` and the current_annotations view it builds on.

Datasette serves the catalog (its own in-process test client) with the metadata; a
facet and a full-text search prove the metadata is applied. The view must agree with
`artnote export` (reviews laid over model output) on every database.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

from conftest import annotate_files, peaked
from datasette.app import Datasette
from sqlalchemy import text
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from artnote.corrections import approve, correct


def review_some(cat, ids: dict[str, int]) -> None:
    """Every kind of review: corrected text, corrected emotion, a field approval, approval
    then correction, correction then approval."""
    correct(cat, str(ids["hokusai"]), {"description": "Spray like claws over Fuji."}, by="Ada")
    correct(cat, str(ids["matisse"]), {"emotion": "sadness"}, by="Ada")
    approve(cat, [str(ids["monet"])], by="Ben", fields=["alt_text"])
    approve(cat, [str(ids["munch"])], by="Ben")
    correct(cat, str(ids["munch"]), {"alt_text": "A figure screams on a bridge."}, by="Ada")
    correct(cat, str(ids["picabia"]), {"alt_text": "Shapes in motion."}, by="Ada")
    approve(cat, [str(ids["picabia"])], by="Ben")


def test_current_annotations_view_agrees_with_the_export(catalog_url, tmp_path, art_paths):
    import shutil

    folder = tmp_path / "collection"
    folder.mkdir()
    files = {}
    for k, path in enumerate(art_paths):
        shutil.copy2(path, folder / path.name)
        files[path.name] = peaked(k, 0.5)
    relpath_ids = annotate_files(catalog_url, folder, files)
    ids = {name.split("_")[0]: i for name, i in relpath_ids.items()}
    with open_catalog(catalog_url, create=False) as cat:
        review_some(cat, ids)
        exported = {r["image_id"]: r for r in cat.export_rows(provenance=False)}
        with cat.engine.connect() as conn:
            view = {r["image_id"]: r for r in conn.execute(text(
                "SELECT * FROM current_annotations")).mappings()}  # fmt: skip
    assert set(view) == set(exported)
    for image_id, row in exported.items():
        for column in ("status", "dominant_emotion", "alt_text", "description", "explanation"):
            assert view[image_id][column] == row[column], (image_id, column)
    statuses = {name: exported[ids[name]]["status"] for name in ids}
    assert statuses["munch"] == "corrected" and statuses["picabia"] == "approved"
    assert statuses["monet"] == "corrected" and statuses["turner"] == "draft"
    assert exported[ids["matisse"]]["dominant_emotion"] == "sadness"


def test_datasette_serves_the_catalog_with_facets_and_search(annotated_art, tmp_path):
    db, _, ids = annotated_art
    with open_catalog(db, create=False) as cat:
        review_some(cat, ids)
        counts: dict[str, int] = {}
        for row in cat.export_rows(provenance=False):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    out = tmp_path / "metadata.json"
    result = CliRunner().invoke(
        app, ["export", "datasette-metadata", "--out", str(out), "--catalog", str(db)]
    )
    assert result.exit_code == 0, result.output
    ds = Datasette([str(db)], metadata=json.loads(out.read_text()))

    async def fetch(path: str) -> dict:
        response = await ds.client.get(path)
        assert response.status_code == 200, response.text[:500]
        return response.json()

    def get(path: str) -> dict:
        # A thread of its own: a session fixture (Playwright's) may hold this thread's loop.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fetch(path)).result()

    table = "/catalog/current_annotations.json"
    faceted = get(table + "?_facet=status")
    facet = {r["value"]: r["count"] for r in faceted["facet_results"]["status"]["results"]}
    assert facet == counts == {"draft": 3, "corrected": 4, "approved": 1}
    found = get(table + "?_search=claws&_shape=objects")
    assert [r["image_id"] for r in found["rows"]] == [ids["hokusai"]]  # a curator's word
    found = get(table + "?_search=turner&_shape=objects")
    assert [r["image_id"] for r in found["rows"]] == [ids["turner"]]  # the model's words
    approved = get(table + "?status=approved&_shape=objects")
    assert [r["image_id"] for r in approved["rows"]] == [ids["picabia"]]
    assert get("/catalog/search_fts_data.json")  # hidden, not removed
    index = get("/catalog.json")
    shown = {t["name"] for t in index["tables"] if not t["hidden"]}
    assert "search_fts_data" not in shown and "images" in shown


def test_datasette_metadata_refuses_postgresql(postgres_url):
    open_catalog(postgres_url).close()
    result = CliRunner().invoke(app, ["export", "datasette-metadata", "--catalog", postgres_url])
    assert result.exit_code == 1 and "SQLite catalogs only" in result.stderr

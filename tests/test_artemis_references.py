"""`artnote import artemis` keeps every utterance of a painting as a reference text for
evaluation (BLEU and the like against all references, as ArtEmis reports); curated()
lists them, the curated explanation first. No model is needed."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from artnote.artemis import import_artemis
from artnote.catalog import open_catalog
from artnote.cli import app

TABLE = (
    "art_style,painting,emotion,utterance,repetition\n"
    "Romanticism,turner_shipwreck,fear,The waves could sink the ship,5\n"
    "Romanticism,turner_shipwreck,sadness,People are drowning,5\n"
    "Romanticism,turner_shipwreck,fear,Dark and violent,5\n"
    "Impressionism,claude-monet_water-lilies,contentment,The soft water calms me,5\n"
    "Impressionism,claude-monet_water-lilies,contentment,The soft water calms me,5\n"
)


def _artemis(tmp_path: Path, art_paths: list[Path]) -> tuple[Path, Path]:
    images = tmp_path / "wikiart"
    (images / "Romanticism").mkdir(parents=True)
    (images / "Impressionism").mkdir(parents=True)
    shutil.copy(art_paths[1], images / "Romanticism" / "turner_shipwreck.jpg")
    shutil.copy(art_paths[0], images / "Impressionism" / "claude-monet_water-lilies.jpg")
    table = tmp_path / "artemis.csv"
    table.write_text(TABLE, encoding="utf-8")
    return table, images


def _by_name(cat) -> dict[str, dict]:
    return {Path(c["path"]).name: c for c in cat.curated()}


def test_every_utterance_is_a_reference_and_reimport_adds_none(catalog_url, tmp_path, art_paths):
    table, images = _artemis(tmp_path, art_paths)
    with open_catalog(catalog_url) as cat:
        report = import_artemis(cat, table, images)
        assert report.imported == 2 and report.references == 4  # the repeated one once
        ship = _by_name(cat)["turner_shipwreck.jpg"]
        assert ship["explanation"] == "The waves could sink the ship"
        assert ship["references"] == {
            "explanation": [
                "The waves could sink the ship",  # the curated value first
                "People are drowning",
                "Dark and violent",
            ]
        }
        monet = _by_name(cat)["claude-monet_water-lilies.jpg"]
        assert monet["references"] == {"explanation": ["The soft water calms me"]}

        again = import_artemis(cat, table, images)
        assert again.imported == 0 and again.unchanged == 2 and again.references == 0
        assert _by_name(cat)["turner_shipwreck.jpg"]["references"] == ship["references"]


def test_a_corrected_explanation_comes_first_among_the_references(tmp_path, art_paths):
    from artnote.corrections import correct

    table, images = _artemis(tmp_path, art_paths)
    with open_catalog(tmp_path / "c.db") as cat:
        import_artemis(cat, table, images)
        sha = _by_name(cat)["turner_shipwreck.jpg"]["sha256"]
        correct(cat, sha[:12], {"explanation": "Dark and violent"}, "ana")
        refs = _by_name(cat)["turner_shipwreck.jpg"]["references"]["explanation"]
    assert refs == ["Dark and violent", "The waves could sink the ship", "People are drowning"]


def test_a_new_utterance_in_a_later_release_is_added_once(tmp_path, art_paths):
    table, images = _artemis(tmp_path, art_paths)
    with open_catalog(tmp_path / "c.db") as cat:
        import_artemis(cat, table, images)
        table.write_text(TABLE + "Romanticism,turner_shipwreck,awe,Nature is stronger,5\n")
        assert import_artemis(cat, table, images).references == 1
        assert import_artemis(cat, table, images).references == 0
        refs = _by_name(cat)["turner_shipwreck.jpg"]["references"]["explanation"]
    assert refs[-1] == "Nature is stronger" and len(refs) == 4


def test_cli_import_artemis_says_how_many_references_it_kept(tmp_path, art_paths):
    table, images = _artemis(tmp_path, art_paths)
    db = tmp_path / "c.db"
    args = ["import", "artemis", str(table), "--images", str(images), "--catalog", str(db)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "imported 2" in result.stderr and "4 new reference texts" in result.stderr
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "imported 0, 2 unchanged" in result.stderr
    assert "0 new reference texts" in result.stderr

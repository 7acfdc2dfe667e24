"""The product's loop: scan, curators correct, finetune, the next scan says what they said."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from artnote.catalog import open_catalog

CORRECTED = "A small ship fights a stormy sea under a dark sky."
SHORT = {
    "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "24",
    "ARTNOTE_GENERATION_ALT_TEXT_TOKENS": "8",
    "ARTNOTE_GENERATION_EXPLANATION_TOKENS": "8",
}


@pytest.fixture
def cli(tiny_cli, monkeypatch):
    for key, value in SHORT.items():
        monkeypatch.setenv(key, value)
    return tiny_cli


def _rows(cli) -> dict[str, dict[str, str]]:
    return {
        Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(cli("export", "csv").stdout))
    }


@pytest.mark.slow
def test_the_loop_closes(cli, art_paths, tmp_path):
    folder = tmp_path / "collection"
    folder.mkdir()
    ship = next(p for p in art_paths if "minotaur" in p.name)
    other = next(p for p in art_paths if "udnie" in p.name)
    for p in (ship, other):
        shutil.copy2(p, folder / p.name)
    cli("scan", folder, "--quiet")
    before = _rows(cli)
    assert before[ship.name]["description"] != CORRECTED
    cli(
        "correct",
        folder / ship.name,
        "--description",
        CORRECTED,
        "--emotion",
        "fear",
        "--by",
        "curator",
    )
    cli(
        "finetune",
        "--epochs",
        "60",
        "--lr",
        "1e-2",
        "--name",
        "ships",
        "--out",
        tmp_path / "ships",
        "--quiet",
    )
    listed = json.loads(cli("adapters", "list", "--json").stdout)
    assert [a["name"] for a in listed] == ["ships"] and listed[0]["training_samples"] == 2

    # A lossless copy: new bytes, same pixels; nothing in the catalog corrects it.
    png = folder / "ship-copy.png"
    Image.open(ship).convert("RGB").save(png)
    assert png.read_bytes() != ship.read_bytes()

    # Without the adapter the model does not say it (so the assertion below is real).
    base = tmp_path / "base.db"
    cli("scan", folder, "--quiet", "--catalog", base)
    plain = {
        Path(r["path"]).name: r
        for r in csv.DictReader(io.StringIO(cli("export", "csv", "--catalog", base).stdout))
    }
    assert plain["ship-copy.png"]["description"] != CORRECTED

    cli("scan", folder, "--adapter", "latest", "--quiet")
    rows = _rows(cli)
    copy = rows["ship-copy.png"]
    assert copy["status"] == "draft" and copy["adapter"]
    assert copy["description"] == CORRECTED
    assert copy["dominant_emotion"] == "fear"
    # The originals keep their base-model annotations until --reannotate.
    assert rows[other.name]["annotated_at"] == before[other.name]["annotated_at"]
    assert not rows[other.name]["adapter"]

    cli("scan", folder, "--adapter", "latest", "--reannotate", "--quiet")
    after = _rows(cli)
    assert after[other.name]["adapter"] == copy["adapter"]
    assert after[ship.name]["adapter"] == copy["adapter"]
    assert after[ship.name]["description"] == CORRECTED  # the curator's, whatever the model said
    assert after[ship.name]["dominant_emotion"] == "fear"
    assert after[ship.name]["status"] == "corrected"


def _export_file(cli, tmp_path) -> Path:
    out = tmp_path / "export.csv"
    cli("export", "csv", "--out", out)
    return out


def _edit(path: Path, edits: dict[int, dict[str, str]]) -> None:
    """Apply {data row index: {column: value}} to a CSV file in place."""
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    for i, change in edits.items():
        rows[i].update(change)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_corrections_import_is_idempotent_validated_and_survives_scans(cli, art_copy, tmp_path):
    cli("scan", art_copy, "--quiet")
    exported = _export_file(cli, tmp_path)
    _edit(
        exported,
        {
            0: {"description": "Bold strokes of colour.", "dominant_emotion": "Awe"},
            2: {"alt_text": "=A formula-looking alt text", "status": "approved"},
        },
    )
    first = cli("corrections", "import", exported, "--by", "ana")
    assert "imported 3 corrections and 1 approvals" in first.stderr
    again = cli("corrections", "import", exported, "--by", "ana")
    assert "imported 0 corrections and 0 approvals" in again.stderr

    rows = list(csv.DictReader(io.StringIO(cli("export", "csv").stdout)))
    assert rows[0]["description"] == "Bold strokes of colour."
    assert rows[0]["dominant_emotion"] == "awe" and float(rows[0]["awe"]) == 1.0
    assert rows[0]["status"] == "corrected"
    assert rows[2]["alt_text"] == "'=A formula-looking alt text"  # stored plain, exported safe
    assert rows[2]["status"] == "approved"
    status = json.loads(cli("status", "--json").stdout)
    assert status["corrected"] == 1 and status["approved"] == 1

    # A bad emotion on line 5 (header is line 1, so data row 3): reported, nothing imported.
    bad = tmp_path / "bad.csv"
    shutil.copy(exported, bad)
    _edit(bad, {0: {"description": "Changed again."}, 3: {"dominant_emotion": "boredom"}})
    result = cli("corrections", "import", bad, code=1)
    assert f"{bad}:5: emotion 'boredom' is not one of" in result.stderr
    assert "nothing imported" in result.stderr
    assert csv.DictReader(io.StringIO(cli("export", "csv").stdout)).__next__()["description"] == (
        "Bold strokes of colour."
    )
    # --skip-bad imports the good row.
    assert "1 bad skipped" in cli("corrections", "import", bad, "--skip-bad").stderr

    # Later scans, even forced ones, never lose a correction.
    cli("scan", art_copy, "--quiet", "--force")
    rows = list(csv.DictReader(io.StringIO(cli("export", "csv").stdout)))
    assert rows[0]["description"] == "Changed again." and rows[2]["status"] == "approved"


def test_corrections_import_refuses_outside_paths_and_long_alt_text(cli, art_copy, tmp_path):
    cli("scan", art_copy, "--quiet", "--limit", "2")
    exported = _export_file(cli, tmp_path)
    _edit(exported, {0: {"sha256": "", "path": "/etc/passwd"}, 1: {"alt_text": "x" * 251}})
    result = cli("corrections", "import", exported, code=1)
    assert ":2: path '/etc/passwd' is outside the catalog's collections" in result.stderr
    assert ":3: alt_text has 251 characters, over the limit of 250" in result.stderr


def test_correct_and_approve_by_id_or_hash(cli, art_copy):
    cli("scan", art_copy, "--quiet", "--limit", "1")
    (row,) = csv.DictReader(io.StringIO(cli("export", "csv").stdout))
    cli("correct", row["sha256"][:10], "--explanation", "It makes me feel awe because of the sky.")
    cli("correct", row["path"], "--emotion", "nope", code=1)
    cli("approve", row["path"])
    (row,) = csv.DictReader(io.StringIO(cli("export", "csv").stdout))
    assert row["explanation"] == "It makes me feel awe because of the sky."
    assert row["status"] == "approved"
    cli("correct", "999", "--alt-text", "x", code=1)


def test_artemis_import_gives_the_histograms(cli, art_paths, tmp_path):
    images = tmp_path / "wikiart"
    (images / "Impressionism").mkdir(parents=True)
    (images / "Romanticism").mkdir(parents=True)
    shutil.copy(art_paths[0], images / "Impressionism" / "claude-monet_water-lilies.jpg")
    shutil.copy(art_paths[1], images / "Romanticism" / "turner_shipwreck.jpg")
    table = tmp_path / "artemis.csv"
    table.write_text(
        "art_style,painting,emotion,utterance,repetition\n"
        "Impressionism,claude-monet_water-lilies,contentment,The soft water calms me,5\n"
        "Impressionism,claude-monet_water-lilies,contentment,Peaceful pond,5\n"
        "Impressionism,claude-monet_water-lilies,awe,So much light,5\n"
        "Impressionism,claude-monet_water-lilies,something else,I think of summer,5\n"
        "Romanticism,turner_shipwreck,fear,The waves could sink the ship,5\n"
        "Romanticism,turner_shipwreck,fear,Dark and violent,5\n"
        "Romanticism,turner_shipwreck,sadness,People are drowning,5\n"
        'Romanticism,turner_shipwreck,excitement,"Wild, thrilling storm",5\n'
        "Baroque,missing-painting,awe,Never downloaded,5\n"
    )
    result = cli("import", "artemis", table, "--images", images)
    assert (
        "3 paintings, 9 utterances: imported 2" in result.stderr
        and "1 images missing" in result.stderr
    )
    curated = {Path(c["path"]).name: c for c in open_catalog(tmp_path / "catalog.db").curated()}
    monet = curated["claude-monet_water-lilies.jpg"]["emotions"]
    assert monet["contentment"] == pytest.approx(0.5) and monet["awe"] == pytest.approx(0.25)
    assert monet["something else"] == pytest.approx(0.25) and monet["fear"] == 0
    ship = curated["turner_shipwreck.jpg"]
    assert ship["emotions"]["fear"] == pytest.approx(0.5)
    assert ship["emotions"]["sadness"] == ship["emotions"]["excitement"] == pytest.approx(0.25)
    assert ship["explanation"] == "The waves could sink the ship"
    assert "imported 0, 2 unchanged" in cli("import", "artemis", table, "--images", images).stderr

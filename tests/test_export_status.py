"""`--status`: every export format writes only the images whose review status is asked for
(the IIIF export's own test covers iiif)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from artnote.corrections import approve, correct


@pytest.fixture
def mixed(annotated_art):
    """Paintings: munch and monet approved, hokusai corrected, the five others drafts."""
    db, folder, ids = annotated_art
    with open_catalog(db, create=False) as cat:
        approve(cat, [str(ids["munch"]), str(ids["monet"])], by="Ben")
        correct(cat, str(ids["hokusai"]), {"alt_text": "The Great Wave."}, by="Ada")
    return db, folder, ids


def export(db, *args: str) -> str:
    result = CliRunner().invoke(app, ["export", *args, "--catalog", str(db)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_status_filters_csv_and_jsonl(mixed):
    db, _, ids = mixed
    rows = list(csv.DictReader(io.StringIO(export(db, "csv", "--status", "approved"))))
    assert sorted(int(r["image_id"]) for r in rows) == sorted([ids["munch"], ids["monet"]])
    assert {r["status"] for r in rows} == {"approved"}
    lines = export(db, "jsonl", "--status", "draft", "--status", "corrected").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 6 and {r["status"] for r in records} == {"draft", "corrected"}
    assert len(export(db, "csv").splitlines()) == 9  # no filter: every image


def test_status_filters_xmp_and_label_studio(mixed, tmp_path):
    db, folder, ids = mixed
    out = tmp_path / "xmp"
    result = CliRunner().invoke(
        app, ["export", "xmp", "--sidecars", "--out", str(out), "--status", "approved",
              "--catalog", str(db)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.rglob("*.xmp"))
    assert len(written) == 2 and all(p.startswith(("munch", "monet")) for p in written)
    tasks = tmp_path / "tasks.json"
    export(db, "label-studio", "--out", str(tasks), "--status", "corrected")
    (task,) = json.loads(tasks.read_text())
    assert task["data"]["artnote_image_id"] == ids["hokusai"]
    assert (tmp_path / "label-studio-config.xml").is_file()


def test_unknown_status_is_one_line_error(mixed):
    db, _, _ = mixed
    result = CliRunner().invoke(app, ["export", "csv", "--status", "done", "--catalog", str(db)])
    assert result.exit_code == 1
    assert "unknown status 'done'" in result.stderr and "Traceback" not in result.output

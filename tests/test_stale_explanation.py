"""An explanation is written for one dominant emotion: once a curator corrects the emotion
and not the explanation, approving the image must not make the old explanation a training
target for the new emotion. No model is needed: the catalog is filled through its API."""

from __future__ import annotations

import csv
import hashlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.corrections import CorrectionError, approve, correct, import_csv
from artnote.emotions import EMOTIONS
from artnote.export import write_csv_cells
from artnote.records import Annotation, Provenance

PROV = Provenance("tiny/llava", "r1", "llava", None, "v2", "1", "ph", {}, "onnx", "cpu", 2.0)
AWE = "It makes me feel awe because the wave towers over the boats."
NEW = "It makes me feel fear because the boats are about to capsize."


def _catalog(url: str | Path, root: Path, names=("wave.jpg",)):
    """A catalog whose images the model annotated as awe; image name -> sha256."""
    cat = open_catalog(url)
    cid = cat.ensure_collection(root)
    run = cat.start_run({}, "tiny/llava", None)
    root.mkdir(parents=True, exist_ok=True)
    states = []
    for name in names:
        data = b"content " + name.encode()
        (root / name).write_bytes(data)
        info = (root / name).stat()
        states.append(
            FileState(name, info.st_size, info.st_mtime_ns, hashlib.sha256(data).hexdigest())
        )
    ids = cat.record_files(cid, run, states)
    probs = {e: 0.5 if e == "awe" else 0.5 / 8 for e in EMOTIONS}
    items = [
        (ids[s.relpath], Annotation(f"alt {s.relpath}", "A description.", probs, "awe", AWE, PROV))
        for s in states
    ]
    cat.add_annotations(run, items)
    return cat, {s.relpath: s.sha256 for s in states}


@contextmanager
def _annotated(url: str | Path, root: Path, names=("wave.jpg",)):
    cat, shas = _catalog(url, root, names)
    with cat:
        yield cat, shas


def _curated(cat) -> dict[str, dict]:
    return {c["sha256"]: c for c in cat.curated()}


def test_approving_after_an_emotion_correction_holds_the_old_explanation_back(
    catalog_url, tmp_path
):
    with _annotated(catalog_url, tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        correct(cat, sha[:12], {"emotion": "fear"}, "ana")
        report = approve(cat, [sha[:12]], "ana")

        assert report.approved == 1
        ((ref, stale),) = report.held_back
        assert ref == sha[:12] and (stale.written_for, stale.emotion) == ("awe", "fear")
        assert str(stale) == (
            "explanation not approved: written for awe, emotion is now fear; "
            "correct it or approve it explicitly"
        )
        row = _curated(cat)[sha]
        assert "explanation" not in row  # never a training target for fear
        assert row["alt_text"] == "alt wave.jpg" and row["description"] == "A description."
        assert row["emotions"]["fear"] == 1.0 and row["dominant_emotion"] == "fear"
        assert cat.stale_explanations([sha])[sha].written_for == "awe"


def test_correcting_the_explanation_afterwards_makes_it_curated_again(catalog_url, tmp_path):
    with _annotated(catalog_url, tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        correct(cat, sha[:12], {"emotion": "fear"}, "ana")
        approve(cat, [sha[:12]], "ana")
        correct(cat, sha[:12], {"explanation": NEW}, "ana")

        assert cat.stale_explanations([sha]) == {}
        assert _curated(cat)[sha]["explanation"] == NEW
        assert approve(cat, [sha[:12]], "ana").held_back == []
        row = _curated(cat)[sha]
        assert row["explanation"] == NEW and row["alt_text"] == "alt wave.jpg"


def test_approving_the_explanation_explicitly_keeps_it(catalog_url, tmp_path):
    with _annotated(catalog_url, tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        correct(cat, sha[:12], {"emotion": "fear"}, "ana")
        approve(cat, [sha[:12]], "ana")
        with pytest.raises(CorrectionError, match="cannot approve 'mood'"):
            approve(cat, [sha[:12]], "ben", fields=["mood"])
        report = approve(cat, [sha[:12]], "ben", fields=["explanation"])

        assert report.held_back == [] and cat.stale_explanations([sha]) == {}
        row = _curated(cat)[sha]
        assert row["explanation"] == AWE and row["alt_text"] == "alt wave.jpg"
        # Correcting the emotion again makes the approved explanation stale again.
        correct(cat, sha[:12], {"emotion": "sadness"}, "ana")
        assert (cat.stale_explanations([sha])[sha].written_for, "sadness") == ("fear", "sadness")


def test_emotion_and_explanation_corrected_together_are_not_stale(catalog_url, tmp_path):
    with _annotated(catalog_url, tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        # The explanation comes first in the call: written with the emotion of the same command.
        cat.add_reviews(
            [
                (cat.find_image(sha[:12]).id, "correction", "explanation", NEW),
                (cat.find_image(sha[:12]).id, "correction", "emotion", _fear()),
            ],
            by="ana",
            source="cli",
        )
        assert approve(cat, [sha[:12]], "ana").held_back == []
        assert _curated(cat)[sha]["explanation"] == NEW


def test_an_explanation_corrected_before_the_emotion_is_stale(tmp_path):
    with _annotated(tmp_path / "c.db", tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        correct(cat, sha[:12], {"explanation": "It makes me feel awe because of the sky."}, "ana")
        correct(cat, sha[:12], {"emotion": "fear"}, "ana")
        row = _curated(cat)[sha]  # corrected, not approved: its corrected fields
        assert "explanation" not in row and row["emotions"]["fear"] == 1.0


def test_an_unchanged_emotion_leaves_approval_as_it_was(tmp_path):
    with _annotated(tmp_path / "c.db", tmp_path / "art") as (cat, shas):
        sha = shas["wave.jpg"]
        correct(cat, sha[:12], {"emotion": "awe", "description": "A wave."}, "ana")
        report = approve(cat, [sha[:12]], "ana")
        assert report.approved == 1 and report.held_back == []
        row = _curated(cat)[sha]
        assert row["explanation"] == AWE and row["description"] == "A wave."
        assert row["references"] == {}


def test_a_csv_emotion_correction_and_approval_hold_the_explanation_back(catalog_url, tmp_path):
    with _annotated(catalog_url, tmp_path / "art", ("wave.jpg", "calm.jpg")) as (cat, shas):
        exported = tmp_path / "export.csv"
        with open(exported, "w", encoding="utf-8", newline="") as f:
            write_csv_cells(cat.export_table(), f)
        rows = list(csv.DictReader(open(exported, encoding="utf-8", newline="")))
        for row in rows:
            row["status"] = "approved"
            if row["path"].endswith("wave.jpg"):
                row["dominant_emotion"] = "fear"
        edited = tmp_path / "edited.csv"
        with open(edited, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

        report = import_csv(cat, edited, by="ana")
        assert report.imported and report.corrections == 1 and report.approvals == 2
        ((line, stale),) = report.held_back
        assert rows[line - 2]["path"].endswith("wave.jpg") and stale.emotion == "fear"
        curated = _curated(cat)
        assert "explanation" not in curated[shas["wave.jpg"]]
        assert curated[shas["calm.jpg"]]["explanation"] == AWE


def test_cli_approve_says_the_explanation_was_not_approved(tmp_path):
    db = tmp_path / "c.db"
    cat, shas = _catalog(db, tmp_path / "art", ("wave.jpg", "calm.jpg"))
    cat.close()
    runner = CliRunner()
    wave, calm = shas["wave.jpg"][:12], shas["calm.jpg"][:12]

    result = runner.invoke(app, ["correct", wave, "--emotion", "fear", "--catalog", str(db)])
    assert result.exit_code == 0, result.output
    assert "explanation was written for awe, the emotion is now fear" in result.stderr
    result = runner.invoke(app, ["approve", wave, calm, "--catalog", str(db)])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == "approved 2 images"
    assert len(lines) == 2 and lines[1].startswith(
        f"{wave}: explanation not approved: written for awe, emotion is now fear; correct it"
    )
    with open_catalog(db) as cat:
        assert "explanation" not in _curated(cat)[shas["wave.jpg"]]

    # The same text again, by a person, for the emotion as it is now: approved.
    result = runner.invoke(
        app, ["correct", wave, "--explanation", AWE, "--by", "ana", "--catalog", str(db)]
    )
    assert result.exit_code == 0 and "note:" not in result.stderr, result.output
    with open_catalog(db) as cat:
        assert _curated(cat)[shas["wave.jpg"]]["explanation"] == AWE


def _fear() -> str:
    from artnote.catalog.reviews import emotion_value

    return emotion_value({"fear": 1.0})

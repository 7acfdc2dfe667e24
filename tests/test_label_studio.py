"""Label Studio round trip: tasks with artnote's drafts as predictions out, an export back.

These tests build exports by hand in Label Studio's JSON export shape (as 1.23 writes
it: the prediction an annotation started from inside the annotation, prediction ids in
the task). test_label_studio_live.py starts a real Label Studio and goes through its
HTTP API; what the two share is in label_studio_support.py.
"""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from label_studio_support import (
    NEW_ALT,
    catalog_rows,
    edited,
    import_file,
    painter_of,
    review_rows,
)
from typer.testing import CliRunner

import artnote.interchange.label_studio as ls
from artnote.catalog import open_catalog
from artnote.cli import app as cli_app
from artnote.corrections import CorrectionError, correct
from artnote.emotions import EMOTIONS
from artnote.interchange.label_studio import labeling_config, write_tasks


def _tasks(db: Path, **kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    with open_catalog(db) as cat:
        count = write_tasks(cat.export_rows(provenance=True), out, **kwargs)
    tasks = json.loads(out.getvalue())
    assert count == len(tasks)
    return tasks


def _export(tasks: list[dict[str, Any]], edits: dict[str, dict[str, str]]) -> list[dict]:
    """Label Studio's JSON export of `tasks` where the painters in `edits` were annotated
    (their prediction with those values changed) and the others not at all."""
    out = []
    for number, task in enumerate(tasks, 1):
        prediction = {"id": number, **task["predictions"][0]}
        annotations = []
        if (painter := painter_of(task)) in edits:
            annotations.append(
                {
                    "id": number,
                    "completed_by": 1,
                    "result": edited(prediction["result"], **edits[painter]),
                    "was_cancelled": False,
                    "created_at": "2025-01-02T10:00:00.000000Z",
                    "updated_at": "2025-01-02T10:00:00.000000Z",
                    "prediction": prediction,
                }
            )
        out.append(
            {
                "id": number,
                "data": task["data"],
                "predictions": [number],
                "annotations": annotations,
            }
        )
    return out


def _save(tmp_path: Path, export: Any, name: str = "export.json") -> Path:
    path = tmp_path / name
    path.write_text(export if isinstance(export, str) else json.dumps(export))
    return path


def test_config_holds_the_nine_emotions_and_every_name_the_predictions_use(annotated_art):
    db, _, _ = annotated_art
    root = ET.fromstring(labeling_config())
    controls = {e.get("name"): e for e in root if e.get("toName")}
    assert root.find("Image").get("name") == "image" and root.find("Image").get("value") == "$image"
    emotions = controls["dominant_emotion"]
    assert [c.get("value") for c in emotions] == list(EMOTIONS)
    assert emotions.get("choice") in ("single", "single-radio")
    assert [c.get("value") for c in controls["approve"]] == ["approved"]
    for name in ("alt_text", "description", "explanation"):
        assert controls[name].tag == "TextArea" and controls[name].get("maxSubmissions") == "1"
    for task in _tasks(db):
        for item in task["predictions"][0]["result"]:
            control = controls[item["from_name"]]
            assert item["to_name"] == control.get("toName") == "image"
            assert item["type"] == control.tag.lower()


def test_tasks_carry_the_drafts_as_predictions(annotated_art):
    db, folder, _ = annotated_art
    tasks = _tasks(db)
    rows = catalog_rows(db)
    assert len(tasks) == 8
    for task in tasks:
        row = rows[painter_of(task)]
        data = task["data"]
        assert (data["artnote_sha256"], data["artnote_path"]) == (row["sha256"], row["path"])
        assert (data["artnote_image_id"], data["artnote_status"]) == (row["image_id"], "draft")
        assert data["image"] == f"/data/local-files/?d=collection/{row['relpath']}"
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "tiny-model"
        values = {r["from_name"]: r["value"] for r in prediction["result"]}
        assert values["alt_text"] == {"text": [f"A painting by {painter_of(task)}."]}
        assert values["description"] == {"text": [row["description"]]}
        assert values["explanation"] == {"text": [row["explanation"]]}
        assert values["dominant_emotion"] == {"choices": [row["dominant_emotion"]]}
    later = [
        t
        for t in _tasks(db, image_root="https://img.example.org/art/")
        if "later/" in t["data"]["artnote_path"]
    ]
    assert len(later) == 2 and all(
        t["data"]["image"].startswith("https://img.example.org/art/later/") for t in later
    )


def test_task_urls_are_quoted_and_rows_are_written_as_they_come():
    row = {
        "root": "/museum/Neue Sammlung",
        "relpath": "Saal 3/Café #2.jpg",
        "path": "/museum/Neue Sammlung/Saal 3/Café #2.jpg",
        "sha256": "ab" * 32,
        "image_id": 7,
        "alt_text": "A café.",
        "dominant_emotion": None,
        "model": "m",
        "adapter": "0123456789abcdef",
        "adapter_name": "museum",
    }
    out = io.StringIO()

    def rows():
        yield row
        assert out.getvalue().count("artnote_sha256") == 1  # the first task is already out
        yield {**row, "image_id": 8}

    assert write_tasks(rows(), out, image_root="https://img.example.org/x/") == 2
    first, second = json.loads(out.getvalue())
    assert first["data"]["image"] == "https://img.example.org/x/Saal%203/Caf%C3%A9%20%232.jpg"
    assert first["predictions"][0]["model_version"] == "m+museum@0123456789ab"
    assert [r["from_name"] for r in first["predictions"][0]["result"]] == ["alt_text"]
    assert second["data"]["artnote_image_id"] == 8
    empty = io.StringIO()
    assert write_tasks(iter(()), empty) == 0 and json.loads(empty.getvalue()) == []
    local = io.StringIO()
    write_tasks([row], local)
    url = json.loads(local.getvalue())[0]["data"]["image"]
    assert url == "/data/local-files/?d=Neue%20Sammlung/Saal%203/Caf%C3%A9%20%232.jpg"


def test_one_changed_alt_text_is_one_correction(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    edits = {painter_of(t): {} for t in tasks}  # every task annotated, as shown
    edits["hokusai"] = {"alt_text": NEW_ALT}
    path = _save(tmp_path, _export(tasks, edits))
    report = import_file(db, path)
    assert (report.imported, report.corrections, report.approvals) == (True, 1, 0)
    assert (report.rows, report.unchanged_rows, report.bad) == (8, 7, [])
    rows = catalog_rows(db)
    assert (rows["hokusai"]["status"], rows["hokusai"]["alt_text"]) == ("corrected", NEW_ALT)
    assert {r["status"] for p, r in rows.items() if p != "hokusai"} == {"draft"}
    assert review_rows(db) == [("correction", "alt_text", "label-studio", "curator")]
    again = import_file(db, path)  # the catalog now says what the annotator wrote
    assert (again.corrections, again.approvals, again.unchanged_rows) == (0, 0, 8)
    assert len(review_rows(db)) == 1


def test_approved_checkbox_approves_and_other_fields_come_back(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    edits = {
        "matisse": {"approve": "approved"},
        "munch": {
            "dominant_emotion": "fear",
            "explanation": "The figure screams.",
            "approve": "approved",
        },
    }
    report = import_file(db, _save(tmp_path, _export(tasks, edits)))
    assert (report.corrections, report.approvals, report.unchanged_rows) == (2, 2, 6)
    rows = catalog_rows(db)
    assert rows["matisse"]["status"] == rows["munch"]["status"] == "approved"
    assert rows["munch"]["dominant_emotion"] == "fear"
    assert rows["munch"]["explanation"] == "The figure screams."
    assert rows["matisse"]["alt_text"] == "A painting by matisse."


def test_the_newest_annotation_not_cancelled_counts(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    export = _export(tasks, {"monet": {"alt_text": "Older text."}})
    task = next(t for t in export if painter_of(t) == "monet")
    older = task["annotations"][0]
    newer = copy.deepcopy(older)
    newer.update(id=99, updated_at="2025-03-01T09:00:00.000000Z")
    newer["result"] = edited(older["result"], alt_text="Water lilies on a dark pond.")
    cancelled = copy.deepcopy(newer)
    cancelled.update(id=100, updated_at="2025-04-01T09:00:00Z", was_cancelled=True, result=[])
    task["annotations"] = [newer, cancelled, older]
    assert import_file(db, _save(tmp_path, export)).corrections == 1
    assert catalog_rows(db)["monet"]["alt_text"] == "Water lilies on a dark pond."


def test_a_field_left_as_shown_keeps_a_later_artnote_correction(annotated_art, tmp_path):
    db, _, ids = annotated_art
    tasks = _tasks(db)
    with open_catalog(db) as cat:  # corrected in artnote after the tasks went out
        correct(cat, str(ids["picabia"]), {"alt_text": "Corrected in artnote."}, "ana")
    export = _export(tasks, {"picabia": {"description": "Abstract planes in pink and grey."}})
    report = import_file(db, _save(tmp_path, export))
    assert report.corrections == 1
    row = catalog_rows(db)["picabia"]
    assert row["alt_text"] == "Corrected in artnote."
    assert row["description"] == "Abstract planes in pink and grey."


def test_reviews_are_recorded_for_the_annotator_the_export_names(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    named = _export(tasks, {"turner": {"alt_text": "A shipwreck in a storm."}})
    for task in named:
        for annotation in task["annotations"]:  # a snapshot export expands completed_by
            annotation["completed_by"] = {"id": 1, "email": "bo@museum.org", "first_name": "Bo"}
    assert import_file(db, _save(tmp_path, named, "named.json"), None, fallback_by="me").by == (
        "bo@museum.org"
    )
    ids_only = _export(tasks, {"van-gogh": {"alt_text": "A swirling night sky."}})
    assert import_file(db, _save(tmp_path, ids_only, "ids.json"), None, fallback_by="me").by == "me"
    assert [r[3] for r in review_rows(db)] == ["bo@museum.org", "me"]


def _bad_task(tasks: list[dict], how: str) -> Any:
    export = _export(tasks, {"hokusai": {"alt_text": NEW_ALT}, "munch": {}})
    task = next(t for t in export if painter_of(t) == "munch")
    result = task["annotations"][0]["result"]
    if how == "no data":
        del task["data"]
    elif how == "not an artnote task":
        task["data"] = {"image": "x.jpg"}
    elif how == "unknown image":
        task["data"]["artnote_sha256"] = "0" * 64
    elif how == "path outside the collections":
        task["data"] = {"artnote_path": "/etc/passwd"}
    elif how == "emotion not among the nine":
        task["annotations"][0]["result"] = edited(result, dominant_emotion="joy")
    elif how == "text not a list":
        next(r for r in result if r["from_name"] == "alt_text")["value"]["text"] = "plain"
    elif how == "two alt texts":
        next(r for r in result if r["from_name"] == "alt_text")["value"]["text"] = ["a", "b"]
    elif how == "alt text too long":
        task["annotations"][0]["result"] = edited(result, alt_text="word " * 80)
    elif how == "result not a list":
        task["annotations"][0]["result"] = {"alt_text": "x"}
    elif how == "annotation not an object":
        task["annotations"] = ["x"]
    elif how == "JSON-MIN":
        export[export.index(task)] = {"id": task["id"], "image": "x", "alt_text": "y"}
    elif how == "task not an object":
        export[export.index(task)] = 5
    return export


TASK_PROBLEMS = [
    "no data",
    "not an artnote task",
    "unknown image",
    "path outside the collections",
    "emotion not among the nine",
    "text not a list",
    "two alt texts",
    "alt text too long",
    "result not a list",
    "annotation not an object",
    "JSON-MIN",
    "task not an object",
]


@pytest.mark.parametrize("how", TASK_PROBLEMS)
def test_a_bad_task_imports_nothing_unless_skipped(annotated_art, tmp_path, how):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    path = _save(tmp_path, _bad_task(tasks, how))
    report = import_file(db, path)
    assert not report.imported and len(report.bad) == 1, report
    number, reason = report.bad[0]
    assert number == next(i for i, t in enumerate(tasks, 1) if painter_of(t) == "munch")
    assert "\n" not in reason and reason
    assert review_rows(db) == [] and catalog_rows(db)["hokusai"]["status"] == "draft"
    skipped = import_file(db, path, skip_bad=True)
    assert skipped.imported and skipped.corrections == 1
    assert catalog_rows(db)["hokusai"]["alt_text"] == NEW_ALT


@pytest.mark.parametrize(
    "content, says",
    [
        ("", "not JSON"),
        ("[{]", "not JSON"),
        ('{"tasks": []}', "not a Label Studio JSON export"),
        ("null", "not a Label Studio JSON export"),
        ("[" * 100_000 + "]" * 100_000, "not JSON"),
    ],
)
def test_a_file_that_is_not_an_export_is_one_line_and_changes_nothing(
    annotated_art, tmp_path, content, says
):
    db, _, _ = annotated_art
    with pytest.raises(CorrectionError, match=says) as caught:
        import_file(db, _save(tmp_path, content))
    assert "\n" not in str(caught.value)
    assert review_rows(db) == []


def test_an_export_too_large_or_missing_is_refused(annotated_art, tmp_path, monkeypatch):
    db, _, _ = annotated_art
    path = _save(tmp_path, _export(_tasks(db), {}))
    monkeypatch.setattr(ls, "MAX_EXPORT_BYTES", 100)
    with pytest.raises(CorrectionError, match="fewer tasks"):
        import_file(db, path)
    with pytest.raises(CorrectionError, match="cannot read"):
        import_file(db, tmp_path / "none.json")


def test_cli_imports_and_reports_bad_tasks(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    good = _save(tmp_path, _export(tasks, {"hokusai": {"alt_text": NEW_ALT}}), "good.json")
    bad = _save(tmp_path, _bad_task(tasks, "emotion not among the nine"), "bad.json")
    runner = CliRunner()
    command = ["corrections", "import-label-studio"]

    failed = runner.invoke(cli_app, [*command, str(bad), "--catalog", str(db), "--by", "ana"])
    assert failed.exit_code == 1
    assert f"{bad}: task " in failed.stderr and "'joy' is not one of" in failed.stderr
    assert "nothing imported: 1 bad task(s)" in failed.stderr
    assert review_rows(db) == []

    result = runner.invoke(cli_app, [*command, str(good), "--catalog", str(db), "--by", "ana"])
    assert result.exit_code == 0, result.output
    assert "imported 1 corrections and 0 approvals from 8 tasks (7 unchanged)" in result.stderr
    assert review_rows(db) == [("correction", "alt_text", "label-studio", "ana")]

    missing = runner.invoke(cli_app, [*command, str(tmp_path / "no.json"), "--catalog", str(db)])
    assert missing.exit_code != 0 and "cannot read" in missing.stderr

"""Label Studio round trip: tasks with artnote's drafts as predictions out, an export back.

The fast tests build exports by hand in Label Studio's JSON export shape (as 1.23 writes
it: the prediction an annotation started from inside the annotation, prediction ids in
the task). The slow one starts a real Label Studio and goes through its HTTP API.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import unavailable
from typer.testing import CliRunner

import artnote.interchange.label_studio as ls
from artnote.catalog import open_catalog
from artnote.cli import app as cli_app
from artnote.corrections import CorrectionError, correct
from artnote.emotions import EMOTIONS
from artnote.interchange.label_studio import import_label_studio, labeling_config, write_tasks

NEW_ALT = "A great wave curls over three boats, Mount Fuji small behind it."


def _tasks(db: Path, **kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    with open_catalog(db) as cat:
        count = write_tasks(cat.export_rows(provenance=True), out, **kwargs)
    tasks = json.loads(out.getvalue())
    assert count == len(tasks)
    return tasks


def _painter(task: dict[str, Any]) -> str:
    return Path(task["data"]["artnote_path"]).stem.split("_")[0]


def _edited(result: list[dict[str, Any]], **values: str) -> list[dict[str, Any]]:
    """A copy of a prediction's result with some values replaced (emotion: a choice;
    approve="approved": the checkbox ticked)."""
    out = copy.deepcopy(result)
    for name, value in values.items():
        key = "text" if name in ls.TEXTS else "choices"
        kind = "textarea" if key == "text" else "choices"
        out = [r for r in out if r["from_name"] != name]
        out.append({"from_name": name, "to_name": "image", "type": kind, "value": {key: [value]}})
    return out


def _export(tasks: list[dict[str, Any]], edits: dict[str, dict[str, str]]) -> list[dict]:
    """Label Studio's JSON export of `tasks` where the painters in `edits` were annotated
    (their prediction with those values changed) and the others not at all."""
    out = []
    for number, task in enumerate(tasks, 1):
        prediction = {"id": number, **task["predictions"][0]}
        annotations = []
        if (painter := _painter(task)) in edits:
            annotations.append(
                {
                    "id": number,
                    "completed_by": 1,
                    "result": _edited(prediction["result"], **edits[painter]),
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


def _rows(db: Path) -> dict[str, dict[str, Any]]:
    with open_catalog(db) as cat:
        return {Path(r["path"]).stem.split("_")[0]: r for r in cat.export_rows()}


def _reviews(db: Path) -> list[tuple[str, str | None, str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT kind, field, source, by FROM reviews ORDER BY id").fetchall()


def _import(db: Path, path: Path, by: str | None = "curator", **kwargs: Any):
    with open_catalog(db) as cat:
        return import_label_studio(cat, path, by, **kwargs)


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
    rows = _rows(db)
    assert len(tasks) == 8
    for task in tasks:
        row = rows[_painter(task)]
        data = task["data"]
        assert (data["artnote_sha256"], data["artnote_path"]) == (row["sha256"], row["path"])
        assert (data["artnote_image_id"], data["artnote_status"]) == (row["image_id"], "draft")
        assert data["image"] == f"/data/local-files/?d=collection/{row['relpath']}"
        prediction = task["predictions"][0]
        assert prediction["model_version"] == "tiny-model"
        values = {r["from_name"]: r["value"] for r in prediction["result"]}
        assert values["alt_text"] == {"text": [f"A painting by {_painter(task)}."]}
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
    edits = {_painter(t): {} for t in tasks}  # every task annotated, as shown
    edits["hokusai"] = {"alt_text": NEW_ALT}
    path = _save(tmp_path, _export(tasks, edits))
    report = _import(db, path)
    assert (report.imported, report.corrections, report.approvals) == (True, 1, 0)
    assert (report.rows, report.unchanged_rows, report.bad) == (8, 7, [])
    rows = _rows(db)
    assert (rows["hokusai"]["status"], rows["hokusai"]["alt_text"]) == ("corrected", NEW_ALT)
    assert {r["status"] for p, r in rows.items() if p != "hokusai"} == {"draft"}
    assert _reviews(db) == [("correction", "alt_text", "label-studio", "curator")]
    again = _import(db, path)  # the catalog now says what the annotator wrote
    assert (again.corrections, again.approvals, again.unchanged_rows) == (0, 0, 8)
    assert len(_reviews(db)) == 1


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
    report = _import(db, _save(tmp_path, _export(tasks, edits)))
    assert (report.corrections, report.approvals, report.unchanged_rows) == (2, 2, 6)
    rows = _rows(db)
    assert rows["matisse"]["status"] == rows["munch"]["status"] == "approved"
    assert rows["munch"]["dominant_emotion"] == "fear"
    assert rows["munch"]["explanation"] == "The figure screams."
    assert rows["matisse"]["alt_text"] == "A painting by matisse."


def test_the_newest_annotation_not_cancelled_counts(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    export = _export(tasks, {"monet": {"alt_text": "Older text."}})
    task = next(t for t in export if _painter(t) == "monet")
    older = task["annotations"][0]
    newer = copy.deepcopy(older)
    newer.update(id=99, updated_at="2025-03-01T09:00:00.000000Z")
    newer["result"] = _edited(older["result"], alt_text="Water lilies on a dark pond.")
    cancelled = copy.deepcopy(newer)
    cancelled.update(id=100, updated_at="2025-04-01T09:00:00Z", was_cancelled=True, result=[])
    task["annotations"] = [newer, cancelled, older]
    assert _import(db, _save(tmp_path, export)).corrections == 1
    assert _rows(db)["monet"]["alt_text"] == "Water lilies on a dark pond."


def test_a_field_left_as_shown_keeps_a_later_artnote_correction(annotated_art, tmp_path):
    db, _, ids = annotated_art
    tasks = _tasks(db)
    with open_catalog(db) as cat:  # corrected in artnote after the tasks went out
        correct(cat, str(ids["picabia"]), {"alt_text": "Corrected in artnote."}, "ana")
    export = _export(tasks, {"picabia": {"description": "Abstract planes in pink and grey."}})
    report = _import(db, _save(tmp_path, export))
    assert report.corrections == 1
    row = _rows(db)["picabia"]
    assert row["alt_text"] == "Corrected in artnote."
    assert row["description"] == "Abstract planes in pink and grey."


def test_reviews_are_recorded_for_the_annotator_the_export_names(annotated_art, tmp_path):
    db, _, _ = annotated_art
    tasks = _tasks(db)
    named = _export(tasks, {"turner": {"alt_text": "A shipwreck in a storm."}})
    for task in named:
        for annotation in task["annotations"]:  # a snapshot export expands completed_by
            annotation["completed_by"] = {"id": 1, "email": "bo@museum.org", "first_name": "Bo"}
    assert _import(db, _save(tmp_path, named, "named.json"), None, fallback_by="me").by == (
        "bo@museum.org"
    )
    ids_only = _export(tasks, {"van-gogh": {"alt_text": "A swirling night sky."}})
    assert _import(db, _save(tmp_path, ids_only, "ids.json"), None, fallback_by="me").by == "me"
    assert [r[3] for r in _reviews(db)] == ["bo@museum.org", "me"]


def _bad_task(tasks: list[dict], how: str) -> Any:
    export = _export(tasks, {"hokusai": {"alt_text": NEW_ALT}, "munch": {}})
    task = next(t for t in export if _painter(t) == "munch")
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
        task["annotations"][0]["result"] = _edited(result, dominant_emotion="joy")
    elif how == "text not a list":
        next(r for r in result if r["from_name"] == "alt_text")["value"]["text"] = "plain"
    elif how == "two alt texts":
        next(r for r in result if r["from_name"] == "alt_text")["value"]["text"] = ["a", "b"]
    elif how == "alt text too long":
        task["annotations"][0]["result"] = _edited(result, alt_text="word " * 80)
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
    report = _import(db, path)
    assert not report.imported and len(report.bad) == 1, report
    number, reason = report.bad[0]
    assert number == next(i for i, t in enumerate(tasks, 1) if _painter(t) == "munch")
    assert "\n" not in reason and reason
    assert _reviews(db) == [] and _rows(db)["hokusai"]["status"] == "draft"
    skipped = _import(db, path, skip_bad=True)
    assert skipped.imported and skipped.corrections == 1
    assert _rows(db)["hokusai"]["alt_text"] == NEW_ALT


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
        _import(db, _save(tmp_path, content))
    assert "\n" not in str(caught.value)
    assert _reviews(db) == []


def test_an_export_too_large_or_missing_is_refused(annotated_art, tmp_path, monkeypatch):
    db, _, _ = annotated_art
    path = _save(tmp_path, _export(_tasks(db), {}))
    monkeypatch.setattr(ls, "MAX_EXPORT_BYTES", 100)
    with pytest.raises(CorrectionError, match="fewer tasks"):
        _import(db, path)
    with pytest.raises(CorrectionError, match="cannot read"):
        _import(db, tmp_path / "none.json")


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
    assert _reviews(db) == []

    result = runner.invoke(cli_app, [*command, str(good), "--catalog", str(db), "--by", "ana"])
    assert result.exit_code == 0, result.output
    assert "imported 1 corrections and 0 approvals from 8 tasks (7 unchanged)" in result.stderr
    assert _reviews(db) == [("correction", "alt_text", "label-studio", "ana")]

    missing = runner.invoke(cli_app, [*command, str(tmp_path / "no.json"), "--catalog", str(db)])
    assert missing.exit_code != 0 and "cannot read" in missing.stderr


# --- a real Label Studio ------------------------------------------------------

USER, PASSWORD, TOKEN = "ana@example.org", "artnote-test-password", "artnote0test0token0123"


def _label_studio_bin() -> str | None:
    for candidate in (os.environ.get("LABEL_STUDIO_BIN"), "/opt/label-studio/bin/label-studio"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("label-studio")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio on 127.0.0.1, its database in a temporary folder, serving local
    files under its document root: (API client with the user's token, document root)."""
    binary = _label_studio_bin()
    if binary is None:
        unavailable(
            "Label Studio is not installed (python3 -m venv /opt/label-studio && "
            "/opt/label-studio/bin/pip install label-studio; or set LABEL_STUDIO_BIN)"
        )
    base = tmp_path_factory.mktemp("label-studio")
    docroot = base / "files"
    docroot.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(base / "data"),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        # Nothing leaves the machine: no version check, analytics or error reports.
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
    }
    args = [binary, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    args += ["--data-dir", str(base / "data"), "--username", USER, "--password", PASSWORD]
    args += ["--user-token", TOKEN, "--enable-legacy-api-token", "--log-level", "WARNING"]
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Token {TOKEN}"},
        timeout=120,
    )
    try:
        deadline = time.monotonic() + 600  # the first start migrates a new database
        while True:
            if server.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                unavailable(f"Label Studio exited with {server.returncode}: {tail!r}")
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not answer: {log_path.read_text()[-800:]!r}")
            time.sleep(1)
        yield client, docroot
    finally:
        client.close()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _ok(response: httpx.Response) -> Any:
    assert response.is_success, f"{response.request.method} {response.url}: {response.text[:500]}"
    return response.json() if response.content else None


@pytest.mark.slow
def test_round_trip_through_a_real_label_studio(label_studio, annotated_art, tmp_path):
    client, docroot = label_studio
    db, collection, _ = annotated_art
    # The document root was fixed when the server started: the collection appears in it
    # under its own name, where the task URLs (?d=collection/...) look.
    folder = docroot / collection.name
    folder.symlink_to(collection, target_is_directory=True)
    out = io.StringIO()
    with open_catalog(db) as cat:
        assert write_tasks(cat.export_rows(provenance=True), out) == 8

    project = _ok(
        client.post("/api/projects", json={"title": "art", "label_config": labeling_config()})
    )
    pid = project["id"]
    imported = _ok(
        client.post(
            f"/api/projects/{pid}/import",
            content=out.getvalue(),
            headers={"Content-Type": "application/json"},
        )
    )
    assert (imported["task_count"], imported["prediction_count"]) == (8, 8)
    tasks = _ok(client.get("/api/tasks", params={"project": pid, "fields": "all"}))["tasks"]
    by_painter = {_painter(t): t for t in tasks}
    for painter, task in by_painter.items():
        result = task["predictions"][0]["result"]
        shown = {r["from_name"]: r["value"] for r in result}
        assert shown["alt_text"] == {"text": [f"A painting by {painter}."]}

    # Label Studio serves the images from the task URLs once the collection is a storage.
    storage = {"project": pid, "path": str(folder), "title": "collection", "use_blob_urls": True}
    _ok(client.post("/api/storages/localfiles", json=storage))
    for task in (
        by_painter["hokusai"],
        next(t for t in tasks if "/later/" in t["data"]["artnote_path"]),
    ):
        served = client.get(task["data"]["image"])
        assert served.status_code == 200
        assert served.content == Path(task["data"]["artnote_path"]).read_bytes()

    def annotate(painter: str, **values: str) -> None:
        task = by_painter[painter]
        result = _edited(task["predictions"][0]["result"], **values)
        _ok(client.post(f"/api/tasks/{task['id']}/annotations/", json={"result": result}))

    annotate("hokusai", alt_text=NEW_ALT)
    annotate("matisse", approve="approved")
    annotate("monet")  # submitted as shown
    skipped = by_painter["munch"]
    _ok(
        client.post(
            f"/api/tasks/{skipped['id']}/annotations/", json={"result": [], "was_cancelled": True}
        )
    )

    # A snapshot export naming the annotators (by default it gives only their user ids).
    naming = {"annotations__completed_by": {"only_id": False}}
    snapshot = _ok(
        client.post(
            f"/api/projects/{pid}/exports",
            json={"title": "artnote", "serialization_options": naming},
        )
    )
    for _ in range(120):
        if snapshot["status"] in ("completed", "failed"):
            break
        time.sleep(0.5)
        snapshot = _ok(client.get(f"/api/projects/{pid}/exports/{snapshot['id']}"))
    assert snapshot["status"] == "completed", snapshot
    download = client.get(
        f"/api/projects/{pid}/exports/{snapshot['id']}/download", params={"exportType": "JSON"}
    )
    assert download.status_code == 200
    export = tmp_path / "label-studio.json"
    export.write_bytes(download.content)

    report = _import(db, export, None, fallback_by="fallback")
    assert (report.imported, report.corrections, report.approvals, report.bad) == (True, 1, 1, [])
    assert (report.rows, report.unchanged_rows, report.by) == (8, 6, USER)
    rows = _rows(db)
    assert (rows["hokusai"]["status"], rows["hokusai"]["alt_text"]) == ("corrected", NEW_ALT)
    assert rows["matisse"]["status"] == "approved"
    assert {rows[p]["status"] for p in ("monet", "munch", "picabia")} == {"draft"}
    assert sorted(_reviews(db), key=str) == [
        ("approval", None, "label-studio", USER),
        ("correction", "alt_text", "label-studio", USER),
    ]

    # The plain export (annotated tasks, annotators as ids) of the same work: nothing new.
    plain = client.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    export.write_bytes(plain.content)
    again = _import(db, export, None, fallback_by="fallback")
    assert (again.imported, again.corrections, again.approvals) == (True, 0, 0)
    assert (again.rows, again.by) == (4, "fallback")
    assert len(_reviews(db)) == 2

"""Label Studio round trip through a real Label Studio: it is started on loopback (its
database in a temporary folder) and driven through its HTTP API, and its export comes
back through artnote's import. Label Studio lives in a virtualenv of its own
(LABEL_STUDIO_BIN, or /opt/label-studio: see .ci/run); where it is missing the test
skips, or under CI fails. The hand-built exports are tested in test_label_studio.py.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import unavailable
from label_studio_support import (
    NEW_ALT,
    catalog_rows,
    edited,
    import_file,
    painter_of,
    review_rows,
)

from artnote.catalog import open_catalog
from artnote.interchange.label_studio import labeling_config, write_tasks

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
    by_painter = {painter_of(t): t for t in tasks}
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
        result = edited(task["predictions"][0]["result"], **values)
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

    report = import_file(db, export, None, fallback_by="fallback")
    assert (report.imported, report.corrections, report.approvals, report.bad) == (True, 1, 1, [])
    assert (report.rows, report.unchanged_rows, report.by) == (8, 6, USER)
    rows = catalog_rows(db)
    assert (rows["hokusai"]["status"], rows["hokusai"]["alt_text"]) == ("corrected", NEW_ALT)
    assert rows["matisse"]["status"] == "approved"
    assert {rows[p]["status"] for p in ("monet", "munch", "picabia")} == {"draft"}
    assert sorted(review_rows(db), key=str) == [
        ("approval", None, "label-studio", USER),
        ("correction", "alt_text", "label-studio", USER),
    ]

    # The plain export (annotated tasks, annotators as ids) of the same work: nothing new.
    plain = client.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    export.write_bytes(plain.content)
    again = import_file(db, export, None, fallback_by="fallback")
    assert (again.imported, again.corrections, again.approvals) == (True, 0, 0)
    assert (again.rows, again.by) == (4, "fallback")
    assert len(review_rows(db)) == 2

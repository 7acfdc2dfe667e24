"""What the tests of `artnote review` share: the sample catalog, the app in a test client or
under uvicorn, and readers of what a page showed and what the catalog holds.

Its fixtures (paintings, client, served) are in tests/conftest.py, built from these.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import socket
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app as cli_app

PAYLOAD = "<script>window.pwned=1</script><b>x</b>"


def review_app(db: Path | str, by: str | None, hosts: list[str], tmp_path: Path):
    from web.app import create_app

    return create_app(str(db), by=by, allowed_hosts=hosts, cache_dir=tmp_path / "cache")


@contextlib.contextmanager
def serving(db: Path, by: str, tmp_path: Path):
    """The app under uvicorn on a free port of 127.0.0.1, in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = review_app(db, by, [f"127.0.0.1:{port}", f"localhost:{port}"], tmp_path)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def export_rows(db: Path | str) -> dict[str, dict[str, str]]:
    result = CliRunner().invoke(cli_app, ["export", "csv", "--catalog", str(db)])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = csv.DictReader(io.StringIO(result.stdout))
    return {Path(r["path"]).stem.split("_")[0]: r for r in rows}


def review_count(db: Path) -> int:
    from sqlalchemy import func, select

    from artnote.catalog.reviews import reviews

    with open_catalog(db, create=False) as cat, cat.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(reviews)))


def edit_form(html: str) -> dict[str, str]:
    """The hidden fields of the page's edit form (csrf, base)."""
    return dict(re.findall(r'<input type="hidden" name="(csrf|base)" value="([^"]*)">', html)[:2])


def grid_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="tile" data-id="(\d+)">', html)]


def uvicorn_config(server) -> dict:
    """What `artnote review` asked uvicorn to serve (its Server not run)."""
    config = server.config
    return {"app": config.app, "host": config.host, "port": config.port}

"""`artnote review`: the local review page, in a real browser and at the HTTP level.

The catalogs are built directly (annotations of the sample paintings, no model), so the
whole file runs in seconds; the writes are checked through `artnote export csv`.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import annotate_files, peaked
from PIL import Image
from starlette.testclient import TestClient
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app as cli_app
from artnote.corrections import correct
from artnote.emotions import EMOTIONS

PAYLOAD = "<script>window.pwned=1</script><b>x</b>"


@pytest.fixture
def paintings(annotated_art):
    """A catalog of the eight sample paintings (two in a subfolder), each annotated with a
    different certainty: (catalog path, {painter: image id})."""
    db, _, ids = annotated_art
    return db, ids


def _app(db: Path | str, by: str | None, hosts: list[str], tmp_path: Path):
    from web.app import create_app

    return create_app(str(db), by=by, allowed_hosts=hosts, cache_dir=tmp_path / "cache")


@pytest.fixture
def client(paintings, tmp_path):
    with TestClient(
        _app(paintings[0], "ana", ["testserver"], tmp_path), follow_redirects=False
    ) as c:
        yield c


@contextlib.contextmanager
def _serving(db: Path, by: str, tmp_path: Path):
    """The app under uvicorn on a free port of 127.0.0.1, in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = _app(db, by, [f"127.0.0.1:{port}", f"localhost:{port}"], tmp_path)
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


@pytest.fixture
def served(paintings, tmp_path):
    with _serving(paintings[0], "ana", tmp_path) as url:
        yield url


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def _export(db: Path | str) -> dict[str, dict[str, str]]:
    result = CliRunner().invoke(cli_app, ["export", "csv", "--catalog", str(db)])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = csv.DictReader(io.StringIO(result.stdout))
    return {Path(r["path"]).stem.split("_")[0]: r for r in rows}


def _review_count(db: Path) -> int:
    from sqlalchemy import func, select

    from artnote.catalog.reviews import reviews

    with open_catalog(db, create=False) as cat, cat.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(reviews)))


def _form(html: str) -> dict[str, str]:
    """The hidden fields of the page's edit form (csrf, base)."""
    return dict(re.findall(r'<input type="hidden" name="(csrf|base)" value="([^"]*)">', html)[:2])


def _grid_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="tile" data-id="(\d+)">', html)]


# ---- 1. the curator's path, in a browser ----------------------------------------------


def test_browser_filter_edit_save_and_approve_land_in_the_export(served, page, paintings):
    db, ids = paintings
    page.goto(served + "/")
    assert page.locator("#grid .tile").count() == 8
    page.select_option("#f-status", "draft")
    page.fill("#f-q", "hokusai")
    page.click("#f-apply")
    page.wait_for_url(re.compile(r"q=hokusai"))
    tiles = page.locator("#grid .tile")
    assert tiles.count() == 1
    assert tiles.first.get_attribute("data-id") == str(ids["hokusai"])
    tiles.first.locator("a").click()
    page.wait_for_url(re.compile(rf"/image/{ids['hokusai']}\?"))
    assert page.locator(".preview img").evaluate("img => img.complete && img.naturalWidth") > 0
    alt = "Three boats under a great wave, Mount Fuji small in the distance."
    page.fill("#alt_text", alt)
    assert page.locator("#alt-count").text_content() == str(len(alt))  # the live count
    page.click("#save")
    page.wait_for_url(re.compile(r"done=saved"))
    assert page.locator("#message").text_content() == "Saved."
    assert page.locator("#status").text_content() == "corrected"
    assert page.locator("#history").text_content().count("ana") == 1

    row = _export(db)["hokusai"]
    assert (row["alt_text"], row["status"], row["reviewed_by"]) == (alt, "corrected", "ana")
    assert row["description"] == "Description of the hokusai painting."  # untouched field

    # Another image, reached with the keyboard: j to the next one, a to approve it.
    page.goto(served + "/")
    first = page.locator("#grid .tile").first.get_attribute("data-id")
    page.locator("#grid .tile a").first.click()
    page.wait_for_url(re.compile(rf"/image/{first}$"))
    second = page.locator("#next").get_attribute("href").split("/")[-1]
    page.keyboard.press("j")
    page.wait_for_url(re.compile(rf"/image/{second}$"))
    page.keyboard.press("a")
    page.wait_for_url(re.compile(r"done=approved"))
    assert page.locator("#status").text_content() == "approved"
    painter = next(name for name, i in ids.items() if str(i) == second)
    approved = _export(db)[painter]
    assert (approved["status"], approved["reviewed_by"]) == ("approved", "ana")
    assert approved["alt_text"] == f"A painting by {painter}."  # approved as it stood


# ---- 2. model and curator text is text --------------------------------------------------


def test_markup_in_annotations_renders_as_text_and_never_runs(served, page, paintings):
    db, ids = paintings
    target = ids["munch"]
    with open_catalog(db, create=False) as cat:
        correct(cat, str(target), {"alt_text": PAYLOAD, "description": PAYLOAD}, "mallory")
    page.goto(served + "/?q=pwned")
    tile = page.locator(f'#grid .tile[data-id="{target}"]')
    assert tile.locator(".alt").text_content() == PAYLOAD
    assert page.locator("b").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"

    page.goto(f"{served}/image/{target}")
    assert page.locator("#description").input_value() == PAYLOAD
    assert PAYLOAD in page.locator("#history").text_content()
    assert page.locator(".preview img").get_attribute("alt") == PAYLOAD
    assert page.locator("b").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"


def test_markup_in_a_query_is_escaped(client):
    html = client.get("/", params={"q": '"><script>window.pwned=1</script>'}).text
    assert "<script>window.pwned" not in html
    assert "&#34;&gt;&lt;script&gt;window.pwned=1&lt;/script&gt;" in html


# ---- 3. HTTP: ids, CSRF, Host, conflicts, sizes ---------------------------------------


def test_images_are_served_by_catalog_id_only_and_bounded(client, paintings, tmp_path):
    db, ids = paintings
    for bad in (
        "/image/999",
        "/image/999/thumb.jpg",
        "/image/0",
        "/image/abc",
        "/image/-1",
        "/image/99999999999999999999999999",
        "/image/..%2F..%2Fetc%2Fpasswd",
        "/image/..%2F..%2Fetc%2Fpasswd/thumb.jpg",
        "/image/1%2F..%2F..%2Fetc%2Fpasswd",
    ):
        response = client.get(bad)
        assert response.status_code == 404, bad
        assert "root:" not in response.text
    thumb = client.get(f"/image/{ids['monet']}/thumb.jpg")
    preview = client.get(f"/image/{ids['monet']}/preview.jpg")
    for response, most in ((thumb, 256), (preview, 1024)):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(response.content)) as im:
            assert im.format == "JPEG" and max(im.size) <= most
    original = (tmp_path / "collection" / "monet_water-lilies_1919.jpg").read_bytes()
    assert thumb.content != original and preview.content != original
    assert len(list((tmp_path / "cache" / "thumbnails").rglob("*.jpg"))) == 2  # cached
    # A file found but not annotated yet has a page, without a form, and is not on the grid.
    folder = tmp_path / "collection"
    Image.new("RGB", (20, 20), "red").save(folder / "new.png")
    stat = (folder / "new.png").stat()
    sha = hashlib.sha256((folder / "new.png").read_bytes()).hexdigest()
    with open_catalog(db, create=False) as cat:
        run = cat.start_run({}, "tiny-model", None)
        new = cat.record_files(
            cat.ensure_collection(folder),
            run,
            [FileState("new.png", stat.st_size, stat.st_mtime_ns, sha)],
        )["new.png"]
        cat.finish_run(run, "completed", {})
    page = client.get(f"/image/{new}")
    assert page.status_code == 200 and "Not annotated (pending)" in page.text
    assert 'id="edit"' not in page.text
    assert new not in _grid_ids(client.get("/").text)
    assert client.get(f"/image/{new}/thumb.jpg").status_code == 200


def test_a_raw_dot_dot_path_and_a_foreign_host_are_refused(served):
    host, port = served.removeprefix("http://").split(":")

    def get(path: str, host_header: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host_header)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body

    status, body = get("/image/../../etc/passwd", f"127.0.0.1:{port}")
    assert status == 404 and b"root:" not in body
    assert get("/", f"localhost:{port}")[0] == 200
    # DNS rebinding: a foreign name resolved to 127.0.0.1 still sends its own name.
    assert get("/", f"attacker.example:{port}")[0] == 400
    assert get("/", "127.0.0.1")[0] == 400  # another port's server is another origin


def test_posts_without_the_csrf_token_change_nothing(client, paintings, tmp_path):
    db, ids = paintings
    url = f"/image/{ids['monet']}"
    fields = _form(client.get(url).text)
    assert set(fields) == {"csrf", "base"}
    edit = {"alt_text": "Forged alt text.", "base": fields["base"]}
    assert client.post(url + "/save", data=edit).status_code == 403
    assert client.post(url + "/save", data=edit | {"csrf": "x" * 43}).status_code == 403
    assert client.post(url + "/approve", data={"base": fields["base"]}).status_code == 403
    # The token without its cookie (another site's form, whose post carries no cookie).
    with TestClient(_app(db, "eve", ["testserver"], tmp_path), follow_redirects=False) as stranger:
        posted = stranger.post(url + "/approve", data=fields)
        assert posted.status_code == 403
    # From another origin, even with the token and the cookie.
    from_elsewhere = {"origin": "http://attacker.example"}
    assert client.post(url + "/approve", data=fields, headers=from_elsewhere).status_code == 403
    assert _review_count(db) == 0
    assert _export(db)["monet"]["status"] == "draft"
    # And with it, the same post is accepted: the refusals above were the token's.
    assert client.post(url + "/approve", data=fields).status_code == 303
    assert _export(db)["monet"]["status"] == "approved"


def test_a_foreign_host_header_is_refused_before_anything_runs(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['monet']}"
    fields = _form(client.get(url).text)
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
    refused = client.post(url + "/approve", data=fields, headers={"host": "attacker.example"})
    assert refused.status_code == 400
    assert _review_count(db) == 0


def test_two_curators_the_later_save_is_refused_and_shows_the_other_edit(paintings, tmp_path):
    db, ids = paintings
    url = f"/image/{ids['matisse']}"
    with (
        TestClient(_app(db, "ana", ["testserver"], tmp_path), follow_redirects=False) as ana,
        TestClient(_app(db, "ben", ["testserver"], tmp_path), follow_redirects=False) as ben,
    ):
        ana_form = _form(ana.get(url).text)
        ben_form = _form(ben.get(url).text)
        theirs = "A woman in a wide hat painted in loud greens and violets."
        saved = ben.post(url + "/save", data=ben_form | {"alt_text": theirs})
        assert saved.status_code == 303
        mine = "Portrait of a woman with a hat."
        refused = ana.post(url + "/save", data=ana_form | {"alt_text": mine})
        assert refused.status_code == 409
        assert 'id="conflict"' in refused.text
        conflict = refused.text.split('id="conflict"')[1].split("</section>")[0]
        assert "ben" in conflict and theirs in conflict and mine in conflict
        assert _export(db)["matisse"]["alt_text"] == theirs
        # Approving what one has not seen is refused too.
        assert ana.post(url + "/approve", data=ana_form).status_code == 409
        # Having seen it, Ana saves on top of it: a new revision, Ben's is kept in history.
        again = ana.post(url + "/save", data=_form(refused.text) | {"alt_text": mine})
        assert again.status_code == 303
    row = _export(db)["matisse"]
    assert (row["alt_text"], row["reviewed_by"]) == (mine, "ana")
    assert _review_count(db) == 2


def test_oversized_bodies_are_refused_and_bad_values_are_shown(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['picabia']}"
    fields = _form(client.get(url).text)
    huge = fields | {"description": "x" * 600_000}
    assert client.post(url + "/save", data=huge).status_code == 413
    chunked = (b"description=" + b"y" * 300_000 for _ in range(2))  # no Content-Length
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert client.post(url + "/save", content=chunked, headers=form).status_code == 413
    # Validation is artnote.corrections': the page says why, nothing is written.
    too_long = "z" * 251
    shown = client.post(url + "/save", data=fields | {"alt_text": too_long, "emotion": "awe"})
    assert shown.status_code == 400
    assert "alt_text has 251 characters, over the limit of 250" in shown.text
    assert too_long in shown.text  # the curator's text is kept in the form
    bad_emotion = client.post(url + "/save", data=fields | {"emotion": "boredom"})
    assert bad_emotion.status_code == 400 and "is not one of" in bad_emotion.text
    assert _review_count(db) == 0
    largest = _form(client.get(url).text) | {
        "description": "\u6d6a" * 20_000,  # the longest valid description, in CJK:
        "explanation": "\u5bcc" * 20_000,  # 9 bytes a character once form-encoded
    }
    assert client.post(url + "/save", data=largest).status_code == 303
    assert _review_count(db) == 2


def test_unchanged_fields_are_not_corrections(client, paintings):
    """The form sends every field; only those that differ become corrections (as the CSV
    import), and browsers' CRLF line breaks are no difference; an explanation kept for a
    corrected emotion is saved on purpose."""
    db, ids = paintings
    url = f"/image/{ids['sakai-hoitsu']}"
    fields = _form(client.get(url).text)
    same = {
        "alt_text": "A painting by sakai-hoitsu.\r\n",
        "description": "Description of the sakai-hoitsu painting.",
        "emotion": _export(db)["sakai-hoitsu"]["dominant_emotion"],
        "explanation": _export(db)["sakai-hoitsu"]["explanation"],
    }
    done = client.post(url + "/save", data=fields | same)
    assert done.status_code == 303 and "done=unchanged" in done.headers["location"]
    assert _review_count(db) == 0
    changed = client.post(url + "/save", data=fields | same | {"emotion": "fear"})
    assert changed.status_code == 303
    assert _review_count(db) == 1
    assert _export(db)["sakai-hoitsu"]["dominant_emotion"] == "fear"
    # The explanation was written for the old emotion: the page says so, and saving it
    # as it is (the box ticked) makes it the explanation of the new one, approved with it.
    html = client.get(url).text
    assert 'id="stale"' in html
    kept = _form(html) | same | {"emotion": "fear", "keep_explanation": "1"}
    approved = client.post(url + "/save", data=kept | {"action": "save-approve"})
    assert "done=saved-approved" in approved.headers["location"]
    assert 'id="stale"' not in client.get(url).text
    row = _export(db)["sakai-hoitsu"]
    assert (row["status"], row["explanation"]) == ("approved", same["explanation"])
    assert _review_count(db) == 3  # the explanation, then the approval


# ---- 4. review priority ---------------------------------------------------------------


def test_the_least_sure_image_comes_first_and_pages_follow_the_order(tmp_path):
    import web.app

    folder = tmp_path / "synthetic"
    folder.mkdir()
    dists = {
        "one-hot.png": {e: float(e == "awe") for e in EMOTIONS},
        "peaked.png": peaked(2, 0.6),
        "uniform.png": {e: 1 / 9 for e in EMOTIONS},
        "two-way.png": {e: 0.5 if e in ("fear", "sadness") else 0.0 for e in EMOTIONS},
    }
    for k, name in enumerate(dists):
        Image.new("RGB", (40, 30), (60 * k, 100, 150)).save(folder / name)
    db = tmp_path / "synthetic.db"
    ids = annotate_files(db, folder, dists)
    order = [ids[n] for n in ("uniform.png", "peaked.png", "two-way.png", "one-hot.png")]
    with TestClient(_app(db, "ana", ["testserver"], tmp_path), follow_redirects=False) as c:
        assert _grid_ids(c.get("/").text) == order
        # A curator's emotion is certain: a corrected image goes to the end.
        fields = _form(c.get(f"/image/{ids['uniform.png']}").text)
        c.post(f"/image/{ids['uniform.png']}/save", data=fields | {"emotion": "anger"})
        assert _grid_ids(c.get("/").text) == order[1:] + order[:1]
        assert _grid_ids(c.get("/", params={"emotion": "anger"}).text) == [ids["uniform.png"]]
        old = web.app.PER_PAGE
        web.app.PER_PAGE = 2
        try:
            assert _grid_ids(c.get("/", params={"page": 2}).text) == [order[3], order[0]]
            assert _grid_ids(c.get("/", params={"page": 9}).text) == []
        finally:
            web.app.PER_PAGE = old


def test_folder_and_status_filters(client, paintings, tmp_path):
    db, ids = paintings
    later = str(tmp_path / "collection" / "later")
    assert sorted(_grid_ids(client.get("/", params={"folder": later}).text)) == sorted(
        [ids["turner"], ids["van-gogh"]]
    )
    assert _grid_ids(client.get("/", params={"folder": str(tmp_path / "elsewhere")}).text) == []
    with open_catalog(db, create=False) as cat:
        correct(cat, str(ids["turner"]), {"alt_text": "A ship in a storm."}, "ana")
    assert _grid_ids(client.get("/", params={"status": "corrected"}).text) == [ids["turner"]]
    assert len(_grid_ids(client.get("/", params={"status": "draft"}).text)) == 7
    assert _grid_ids(client.get("/", params={"q": "storm"}).text) == [ids["turner"]]


# ---- the command ------------------------------------------------------------------------


def _config(server) -> dict:
    """What `artnote review` asked uvicorn to serve (its Server not run)."""
    config = server.config
    return {"app": config.app, "host": config.host, "port": config.port}


def test_the_command_says_where_and_warns_without_login(paintings, monkeypatch):
    import uvicorn

    db, _ = paintings
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.update(_config(server)))
    runner = CliRunner()
    local = runner.invoke(cli_app, ["review", "--catalog", str(db), "--port", "8799"])
    assert local.exit_code == 0, (local.output, local.exception)
    assert f"reviewing {db} at http://127.0.0.1:8799/ (Ctrl-C to stop)" in local.output
    assert "no login" not in local.output
    assert (served["host"], served["port"]) == ("127.0.0.1", 8799)
    with TestClient(served["app"], base_url="http://localhost:8799") as c:
        assert c.get("/").status_code == 200
    wide = runner.invoke(cli_app, ["review", "--catalog", str(db), "--host", "0.0.0.0"])
    assert wide.exit_code == 0 and "no login" in wide.output
    missing = runner.invoke(cli_app, ["review", "--catalog", str(db.with_name("none.db"))])
    assert missing.exit_code == 1 and "no catalog" in missing.output
    assert not db.with_name("none.db").exists()


def test_the_page_works_on_a_postgresql_catalog(postgres_url, tmp_path, art_paths):
    folder = tmp_path / "collection"
    folder.mkdir()
    files = {}
    for k, path in enumerate(art_paths[:3]):
        shutil.copy2(path, folder / path.name)
        files[path.name] = peaked(k, 0.3 + 0.3 * k)
    ids = annotate_files(postgres_url, folder, files)
    first, _, last = (ids[name] for name in files)
    with TestClient(
        _app(postgres_url, "ana", ["testserver"], tmp_path), follow_redirects=False
    ) as c:
        assert _grid_ids(c.get("/").text) == list(ids.values())  # least sure first
        assert _grid_ids(c.get("/", params={"q": "matisse"}).text) == [ids[art_paths[1].name]]
        fields = _form(c.get(f"/image/{last}").text)
        assert (
            c.post(f"/image/{last}/save", data=fields | {"alt_text": "Lilies."}).status_code == 303
        )
        assert c.post(f"/image/{last}/approve", data=fields).status_code == 409  # stale base
        assert _grid_ids(c.get("/", params={"status": "corrected"}).text) == [last]
        assert first in _grid_ids(c.get("/", params={"status": "draft"}).text)
    row = _export(postgres_url)[art_paths[2].name.split("_")[0]]
    assert (row["alt_text"], row["status"], row["reviewed_by"]) == ("Lilies.", "corrected", "ana")


# ---- 5. the security review's findings ------------------------------------------------


def _hidden(html: str, form_id: str = "edit") -> dict[str, str]:
    """Every hidden field of one form of the page, unescaped."""
    import html as html_module

    form = html.split(f'id="{form_id}"')[1].split("</form>")[0]
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)
    return {name: html_module.unescape(value) for name, value in fields}


def _gate_first_read(review, barrier: threading.Barrier) -> None:
    """Make a save's first read of the image wait until the other server has read too:
    both then check their revision before either writes (the race between processes)."""
    original = review._detail
    waiting = [True]

    def detail(image_id):
        found = original(image_id)
        if waiting[0]:
            waiting[0] = False
            barrier.wait()
        return found

    review._detail = detail


def test_two_servers_saving_from_one_base_only_one_is_written(catalog_url, tmp_path, art_paths):
    """The revision is checked in the write transaction, under the catalog's write lock:
    two servers (two processes, each with its own locks) that both read the same base
    before either writes cannot both save."""
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path / "collection"
    folder.mkdir()
    shutil.copy2(art_paths[0], folder / art_paths[0].name)
    ids = annotate_files(catalog_url, folder, {art_paths[0].name: peaked(0, 0.5)})
    url = f"/image/{ids[art_paths[0].name]}"
    with (
        TestClient(
            _app(catalog_url, "ana", ["testserver"], tmp_path), follow_redirects=False
        ) as ana,
        TestClient(
            _app(catalog_url, "ben", ["testserver"], tmp_path), follow_redirects=False
        ) as ben,
    ):
        forms = {"ana": _form(ana.get(url).text), "ben": _form(ben.get(url).text)}
        assert forms["ana"]["base"] == forms["ben"]["base"]
        barrier = threading.Barrier(2, timeout=30)
        for c in (ana, ben):
            _gate_first_read(c.app.state.review, barrier)

        def save(who: str):
            c = ana if who == "ana" else ben
            return c.post(url + "/save", data=forms[who] | {"alt_text": f"Alt text by {who}."})

        with ThreadPoolExecutor(2) as pool:
            answers = dict(zip(("ana", "ben"), pool.map(save, ("ana", "ben")), strict=True))
        codes = sorted(a.status_code for a in answers.values())
        assert codes == [303, 409], codes
        winner = next(w for w, a in answers.items() if a.status_code == 303)
        loser = next(w for w, a in answers.items() if a.status_code == 409)
        assert 'id="conflict"' in answers[loser].text
        assert f"Alt text by {winner}." in answers[loser].text  # the other edit is shown
    row = _export(catalog_url)[art_paths[0].name.split("_")[0]]
    assert (row["alt_text"], row["reviewed_by"]) == (f"Alt text by {winner}.", winner)
    with open_catalog(catalog_url, create=False) as cat, cat.engine.connect() as conn:
        from sqlalchemy import select

        from artnote.catalog.reviews import reviews

        sources = conn.execute(select(reviews.c.source, reviews.c.by)).all()
    assert sources == [("web", winner)]  # one review, recorded as made on the web page


def test_corrections_check_the_expected_revision_in_their_transaction(paintings):
    from artnote.corrections import approve
    from artnote.errors import ConflictError

    db, ids = paintings
    ref = str(ids["monet"])
    with open_catalog(db, create=False) as cat:
        with cat.engine.connect() as conn:
            from artnote.catalog.reviews import revisions

            base = revisions(conn, [ids["monet"]])[ids["monet"]]
        assert base[0] == 0 and base[1] > 0
        correct(cat, ref, {"alt_text": "Lilies."}, "ana", expected=base, then_approve=True)
        with pytest.raises(ConflictError):
            correct(cat, ref, {"alt_text": "Water."}, "ben", expected=base)
        with pytest.raises(ConflictError):
            approve(cat, [ref], "ben", expected={ref: base})
        correct(cat, ref, {"description": "Without a base."}, "cli-user")  # as before
    assert _review_count(db) == 3  # the correction and approval of one save, then the cli's
    row = _export(db)["monet"]
    assert (row["alt_text"], row["status"]) == ("Lilies.", "corrected")


def test_saving_keeps_the_grids_filters_exactly(client, paintings, tmp_path):
    db, ids = paintings
    filters = {"status": "draft", "folder": str(tmp_path / "collection"), "q": "painting"}
    url = f"/image/{ids['munch']}"
    html = client.get(url, params=filters).text
    fields = _hidden(html)
    carried = sorted(v for k, v in fields.items() if k not in ("csrf", "base"))
    assert carried == sorted(filters.values())
    saved = client.post(url + "/save", data=fields | {"emotion": "fear", "action": "save"})
    assert saved.status_code == 303
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(saved.headers["location"]).query)
    assert query == {k: [v] for k, v in filters.items()} | {"done": ["saved"]}
    assert _export(db)["munch"]["dominant_emotion"] == "fear"
    approved = client.post(url + "/approve", data=_hidden(client.get(url).text, "approve-form"))
    assert approved.status_code == 303  # that page had no filters, nor has the redirect
    assert set(parse_qs(urlsplit(approved.headers["location"]).query)) == {"done"}


def test_the_csrf_cookie_is_lax_and_a_refused_form_keeps_the_text(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['hokusai']}"
    first = client.get(url)
    assert "samesite=lax" in first.headers["set-cookie"].lower()
    fields = _form(first.text)
    typed = "A great wave, three boats; the text the curator typed for ten minutes."
    refused = client.post(
        url + "/save", data=fields | {"csrf": "y" * 64, "alt_text": typed, "action": "save"}
    )
    assert refused.status_code == 403
    assert typed in refused.text and 'id="error"' in refused.text
    assert _review_count(db) == 0
    again = _form(refused.text)  # a fresh token, valid for this browser's cookie
    saved = client.post(url + "/save", data=again | {"alt_text": typed, "action": "save"})
    assert saved.status_code == 303
    assert _export(db)["hokusai"]["alt_text"] == typed


def test_long_queries_are_capped_and_one_letter_prefixes_left_out(client, monkeypatch):
    from web.review_queries import MAX_TERMS

    review = client.app.state.review
    asked: list[str] = []
    search = review.catalog.search
    monkeypatch.setattr(review.catalog, "search", lambda q, n: asked.append(q) or search(q, n))
    words = [f"w{i}" for i in range(40)]
    html = client.get("/", params={"q": " ".join(["a*"] * 100 + ["painting", *words])}).text
    assert asked and all(len(q.split()) <= MAX_TERMS for q in asked)
    assert all("a*" not in q.split() for q in asked)
    assert asked[0].split()[0] == "painting"
    assert 'id="ignored-terms"' in html
    asked.clear()
    only_short = client.get("/", params={"q": "p* a*"}).text
    assert asked == [] and 'id="ignored-terms"' in only_short  # no filter at all
    assert len(_grid_ids(only_short)) == 8


def test_non_ascii_digits_are_not_numbers(client, paintings):
    db, ids = paintings
    assert client.get("/", params={"page": "\u00b2"}).status_code == 200
    assert client.get("/", params={"page": "\u0663"}).status_code == 200  # Arabic-Indic 3
    url = f"/image/{ids['turner']}"
    fields = _form(client.get(url).text)
    bad = client.post(url + "/approve", data=fields | {"base": "\u00b2.1"})
    assert bad.status_code == 400 and "lacks its revision" in bad.text
    assert _review_count(db) == 0


def test_a_server_on_every_address_answers_its_ip_addresses_not_other_names(paintings, monkeypatch):
    import uvicorn

    db, _ = paintings
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.update(_config(server)))
    argv = ["review", "--catalog", str(db), "--host", "0.0.0.0", "--port", "8799"]
    assert CliRunner().invoke(cli_app, argv).exit_code == 0
    with TestClient(served["app"]) as c:
        for host in ("192.168.1.20:8799", "10.0.0.7:8799", "[fe80::1]:8799", "127.0.0.1:8799"):
            assert c.get("/", headers={"host": host}).status_code == 200, host
        for host in ("192.168.1.20:8800", "192.168.1.20", "attacker.example:8799", "[::1]:80"):
            assert c.get("/", headers={"host": host}).status_code == 400, host
    local = CliRunner().invoke(cli_app, ["review", "--catalog", str(db), "--port", "8799"])
    assert local.exit_code == 0
    with TestClient(served["app"]) as c:  # bound to 127.0.0.1: exact names only
        assert c.get("/", headers={"host": "192.168.1.20:8799"}).status_code == 400
    from web.security import ip_literal_host

    assert ip_literal_host("[::1]", 80) and not ip_literal_host("1.2.3.4:80:80", 80)
    assert not ip_literal_host("[::1]x:8799", 8799) and not ip_literal_host("1.2.3:8799", 8799)


def test_the_folder_filter_matches_by_prefix_whatever_the_collation(catalog_url, tmp_path):
    """Not a byte range: under a collation that orders punctuation apart (PostgreSQL's
    ICU, ICU 'shifted'), 'later/0.png' is not below 'later0'. '_' in a folder name is
    itself, not LIKE's wildcard; and the case of a folder counts."""
    folder = tmp_path / "collection"
    names = ["later/0-a.png", "later/b.png", "la_er/c.png", "laterz/d.png", "Later/e.png"]
    dists = {}
    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 20), (40 * k, 30, 90)).save(folder / name)
        dists[name] = peaked(k, 0.5)
    ids = annotate_files(catalog_url, folder, dists)
    if catalog_url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        engine = create_engine(catalog_url)
        with engine.begin() as conn:
            conn.execute(
                text("CREATE COLLATION shifted (provider = icu, locale = 'und-u-ka-shifted')")
            )
            # The column's type cannot change under a view that reads it: set it aside.
            view = conn.execute(text("SELECT pg_get_viewdef('current_annotations')")).scalar()
            conn.execute(text("DROP VIEW current_annotations"))
            conn.execute(
                text('ALTER TABLE images ALTER COLUMN relpath TYPE text COLLATE "shifted"')
            )
            conn.execute(text(f"CREATE VIEW current_annotations AS {view}"))
        engine.dispose()
    with TestClient(_app(catalog_url, "ana", ["testserver"], tmp_path)) as c:

        def under(sub: str) -> list[int]:
            return sorted(_grid_ids(c.get("/", params={"folder": str(folder / sub)}).text))

        assert under("later") == sorted([ids["later/0-a.png"], ids["later/b.png"]])
        assert under("la_er") == [ids["la_er/c.png"]]
        assert under("Later") == [ids["Later/e.png"]]
        assert under("late") == []


def test_a_file_changed_since_the_scan_is_not_shown_beside_its_old_annotation(
    client, paintings, tmp_path
):
    db, ids = paintings
    path = next((tmp_path / "collection").glob("picabia*"))
    url = f"/image/{ids['picabia']}"
    assert 'id="changed"' not in client.get(url).text
    Image.new("RGB", (64, 64), "green").save(path, "JPEG")  # new pixels, same name
    html = client.get(url).text
    assert 'id="changed"' in html and "rescan before reviewing" in html
    assert "/preview.jpg" not in html
    assert client.get(url + "/preview.jpg").status_code == 404  # never the new pixels
    assert client.get(url + "/thumb.jpg").status_code == 404
    assert not list((tmp_path / "cache").rglob("*.jpg"))  # nor kept under the old sha256

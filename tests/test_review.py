"""`artnote review` at the HTTP level: ids, CSRF, Host, conflicts, sizes, the review
order and filters, and the command itself. The real-browser tests are in
test_review_browser.py, the security review's findings in test_review_security.py; what
they share is in review_support.py.

The catalogs are built directly (annotations of the sample paintings, no model), so the
whole file runs in seconds; the writes are checked through `artnote export csv`.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import shutil

from conftest import annotate_files, peaked
from PIL import Image
from review_support import (
    edit_form,
    export_rows,
    grid_ids,
    review_app,
    review_count,
    uvicorn_config,
)
from starlette.testclient import TestClient
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app as cli_app
from artnote.corrections import correct
from artnote.emotions import EMOTIONS

# ---- 2. model and curator text is text (in a browser: test_review_browser.py) ---------


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
    assert new not in grid_ids(client.get("/").text)
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
    fields = edit_form(client.get(url).text)
    assert set(fields) == {"csrf", "base"}
    edit = {"alt_text": "Forged alt text.", "base": fields["base"]}
    assert client.post(url + "/save", data=edit).status_code == 403
    assert client.post(url + "/save", data=edit | {"csrf": "x" * 43}).status_code == 403
    assert client.post(url + "/approve", data={"base": fields["base"]}).status_code == 403
    # The token without its cookie (another site's form, whose post carries no cookie).
    with TestClient(
        review_app(db, "eve", ["testserver"], tmp_path), follow_redirects=False
    ) as stranger:
        posted = stranger.post(url + "/approve", data=fields)
        assert posted.status_code == 403
    # From another origin, even with the token and the cookie.
    from_elsewhere = {"origin": "http://attacker.example"}
    assert client.post(url + "/approve", data=fields, headers=from_elsewhere).status_code == 403
    assert review_count(db) == 0
    assert export_rows(db)["monet"]["status"] == "draft"
    # And with it, the same post is accepted: the refusals above were the token's.
    assert client.post(url + "/approve", data=fields).status_code == 303
    assert export_rows(db)["monet"]["status"] == "approved"


def test_a_foreign_host_header_is_refused_before_anything_runs(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['monet']}"
    fields = edit_form(client.get(url).text)
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
    refused = client.post(url + "/approve", data=fields, headers={"host": "attacker.example"})
    assert refused.status_code == 400
    assert review_count(db) == 0


def test_two_curators_the_later_save_is_refused_and_shows_the_other_edit(paintings, tmp_path):
    db, ids = paintings
    url = f"/image/{ids['matisse']}"
    with (
        TestClient(review_app(db, "ana", ["testserver"], tmp_path), follow_redirects=False) as ana,
        TestClient(review_app(db, "ben", ["testserver"], tmp_path), follow_redirects=False) as ben,
    ):
        ana_form = edit_form(ana.get(url).text)
        ben_form = edit_form(ben.get(url).text)
        theirs = "A woman in a wide hat painted in loud greens and violets."
        saved = ben.post(url + "/save", data=ben_form | {"alt_text": theirs})
        assert saved.status_code == 303
        mine = "Portrait of a woman with a hat."
        refused = ana.post(url + "/save", data=ana_form | {"alt_text": mine})
        assert refused.status_code == 409
        assert 'id="conflict"' in refused.text
        conflict = refused.text.split('id="conflict"')[1].split("</section>")[0]
        assert "ben" in conflict and theirs in conflict and mine in conflict
        assert export_rows(db)["matisse"]["alt_text"] == theirs
        # Approving what one has not seen is refused too.
        assert ana.post(url + "/approve", data=ana_form).status_code == 409
        # Having seen it, Ana saves on top of it: a new revision, Ben's is kept in history.
        again = ana.post(url + "/save", data=edit_form(refused.text) | {"alt_text": mine})
        assert again.status_code == 303
    row = export_rows(db)["matisse"]
    assert (row["alt_text"], row["reviewed_by"]) == (mine, "ana")
    assert review_count(db) == 2


def test_oversized_bodies_are_refused_and_bad_values_are_shown(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['picabia']}"
    fields = edit_form(client.get(url).text)
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
    assert review_count(db) == 0
    largest = edit_form(client.get(url).text) | {
        "description": "\u6d6a" * 20_000,  # the longest valid description, in CJK:
        "explanation": "\u5bcc" * 20_000,  # 9 bytes a character once form-encoded
    }
    assert client.post(url + "/save", data=largest).status_code == 303
    assert review_count(db) == 2


def test_unchanged_fields_are_not_corrections(client, paintings):
    """The form sends every field; only those that differ become corrections (as the CSV
    import), and browsers' CRLF line breaks are no difference; an explanation kept for a
    corrected emotion is saved on purpose."""
    db, ids = paintings
    url = f"/image/{ids['sakai-hoitsu']}"
    fields = edit_form(client.get(url).text)
    same = {
        "alt_text": "A painting by sakai-hoitsu.\r\n",
        "description": "Description of the sakai-hoitsu painting.",
        "emotion": export_rows(db)["sakai-hoitsu"]["dominant_emotion"],
        "explanation": export_rows(db)["sakai-hoitsu"]["explanation"],
    }
    done = client.post(url + "/save", data=fields | same)
    assert done.status_code == 303 and "done=unchanged" in done.headers["location"]
    assert review_count(db) == 0
    changed = client.post(url + "/save", data=fields | same | {"emotion": "fear"})
    assert changed.status_code == 303
    assert review_count(db) == 1
    assert export_rows(db)["sakai-hoitsu"]["dominant_emotion"] == "fear"
    # The explanation was written for the old emotion: the page says so, and saving it
    # as it is (the box ticked) makes it the explanation of the new one, approved with it.
    html = client.get(url).text
    assert 'id="stale"' in html
    kept = edit_form(html) | same | {"emotion": "fear", "keep_explanation": "1"}
    approved = client.post(url + "/save", data=kept | {"action": "save-approve"})
    assert "done=saved-approved" in approved.headers["location"]
    assert 'id="stale"' not in client.get(url).text
    row = export_rows(db)["sakai-hoitsu"]
    assert (row["status"], row["explanation"]) == ("approved", same["explanation"])
    assert review_count(db) == 3  # the explanation, then the approval


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
    with TestClient(review_app(db, "ana", ["testserver"], tmp_path), follow_redirects=False) as c:
        assert grid_ids(c.get("/").text) == order
        # A curator's emotion is certain: a corrected image goes to the end.
        fields = edit_form(c.get(f"/image/{ids['uniform.png']}").text)
        c.post(f"/image/{ids['uniform.png']}/save", data=fields | {"emotion": "anger"})
        assert grid_ids(c.get("/").text) == order[1:] + order[:1]
        assert grid_ids(c.get("/", params={"emotion": "anger"}).text) == [ids["uniform.png"]]
        old = web.app.PER_PAGE
        web.app.PER_PAGE = 2
        try:
            assert grid_ids(c.get("/", params={"page": 2}).text) == [order[3], order[0]]
            assert grid_ids(c.get("/", params={"page": 9}).text) == []
        finally:
            web.app.PER_PAGE = old


def test_folder_and_status_filters(client, paintings, tmp_path):
    db, ids = paintings
    later = str(tmp_path / "collection" / "later")
    assert sorted(grid_ids(client.get("/", params={"folder": later}).text)) == sorted(
        [ids["turner"], ids["van-gogh"]]
    )
    assert grid_ids(client.get("/", params={"folder": str(tmp_path / "elsewhere")}).text) == []
    with open_catalog(db, create=False) as cat:
        correct(cat, str(ids["turner"]), {"alt_text": "A ship in a storm."}, "ana")
    assert grid_ids(client.get("/", params={"status": "corrected"}).text) == [ids["turner"]]
    assert len(grid_ids(client.get("/", params={"status": "draft"}).text)) == 7
    assert grid_ids(client.get("/", params={"q": "storm"}).text) == [ids["turner"]]


# ---- the command ------------------------------------------------------------------------


def test_the_command_says_where_and_warns_without_login(paintings, monkeypatch):
    import uvicorn

    db, _ = paintings
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.update(uvicorn_config(server)))
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
        review_app(postgres_url, "ana", ["testserver"], tmp_path), follow_redirects=False
    ) as c:
        assert grid_ids(c.get("/").text) == list(ids.values())  # least sure first
        assert grid_ids(c.get("/", params={"q": "matisse"}).text) == [ids[art_paths[1].name]]
        fields = edit_form(c.get(f"/image/{last}").text)
        assert (
            c.post(f"/image/{last}/save", data=fields | {"alt_text": "Lilies."}).status_code == 303
        )
        assert c.post(f"/image/{last}/approve", data=fields).status_code == 409  # stale base
        assert grid_ids(c.get("/", params={"status": "corrected"}).text) == [last]
        assert first in grid_ids(c.get("/", params={"status": "draft"}).text)
    row = export_rows(postgres_url)[art_paths[2].name.split("_")[0]]
    assert (row["alt_text"], row["status"], row["reviewed_by"]) == ("Lilies.", "corrected", "ana")

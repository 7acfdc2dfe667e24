"""`artnote review`: the security review's findings (races between servers, CSRF, Host
checks, query limits, folder filters under other collations, files changed since the
scan), each kept as a test. The rest of the page's tests are in test_review.py.
"""

from __future__ import annotations

import re
import shutil
import threading

import pytest
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

from artnote.catalog import open_catalog
from artnote.cli import app as cli_app
from artnote.corrections import correct


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
            review_app(catalog_url, "ana", ["testserver"], tmp_path), follow_redirects=False
        ) as ana,
        TestClient(
            review_app(catalog_url, "ben", ["testserver"], tmp_path), follow_redirects=False
        ) as ben,
    ):
        forms = {"ana": edit_form(ana.get(url).text), "ben": edit_form(ben.get(url).text)}
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
    row = export_rows(catalog_url)[art_paths[0].name.split("_")[0]]
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
    assert review_count(db) == 3  # the correction and approval of one save, then the cli's
    row = export_rows(db)["monet"]
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
    assert export_rows(db)["munch"]["dominant_emotion"] == "fear"
    approved = client.post(url + "/approve", data=_hidden(client.get(url).text, "approve-form"))
    assert approved.status_code == 303  # that page had no filters, nor has the redirect
    assert set(parse_qs(urlsplit(approved.headers["location"]).query)) == {"done"}


def test_the_csrf_cookie_is_lax_and_a_refused_form_keeps_the_text(client, paintings):
    db, ids = paintings
    url = f"/image/{ids['hokusai']}"
    first = client.get(url)
    assert "samesite=lax" in first.headers["set-cookie"].lower()
    fields = edit_form(first.text)
    typed = "A great wave, three boats; the text the curator typed for ten minutes."
    refused = client.post(
        url + "/save", data=fields | {"csrf": "y" * 64, "alt_text": typed, "action": "save"}
    )
    assert refused.status_code == 403
    assert typed in refused.text and 'id="error"' in refused.text
    assert review_count(db) == 0
    again = edit_form(refused.text)  # a fresh token, valid for this browser's cookie
    saved = client.post(url + "/save", data=again | {"alt_text": typed, "action": "save"})
    assert saved.status_code == 303
    assert export_rows(db)["hokusai"]["alt_text"] == typed


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
    assert len(grid_ids(only_short)) == 8


def test_non_ascii_digits_are_not_numbers(client, paintings):
    db, ids = paintings
    assert client.get("/", params={"page": "\u00b2"}).status_code == 200
    assert client.get("/", params={"page": "\u0663"}).status_code == 200  # Arabic-Indic 3
    url = f"/image/{ids['turner']}"
    fields = edit_form(client.get(url).text)
    bad = client.post(url + "/approve", data=fields | {"base": "\u00b2.1"})
    assert bad.status_code == 400 and "lacks its revision" in bad.text
    assert review_count(db) == 0


def test_a_server_on_every_address_answers_its_ip_addresses_not_other_names(paintings, monkeypatch):
    import uvicorn

    db, _ = paintings
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda server: served.update(uvicorn_config(server)))
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
    with TestClient(review_app(catalog_url, "ana", ["testserver"], tmp_path)) as c:

        def under(sub: str) -> list[int]:
            return sorted(grid_ids(c.get("/", params={"folder": str(folder / sub)}).text))

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

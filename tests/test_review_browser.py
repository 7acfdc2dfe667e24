"""`artnote review` in a real browser: Debian's chromium driven by Playwright (the
`browser` fixture of conftest.py skips, or under CI fails, where either is missing).

The curator's path from the grid to the export, and annotation text that must render as
text. The HTTP-level tests are in test_review.py.
"""

from __future__ import annotations

import re

import pytest
from review_support import (
    PAYLOAD,
    export_rows,
)

from artnote.catalog import open_catalog
from artnote.corrections import correct


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


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

    row = export_rows(db)["hokusai"]
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
    approved = export_rows(db)[painter]
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

"""`artnote export iiif`: IIIF Presentation 3 manifests with Web Annotations.

Every document written is checked against the Presentation 3 JSON schema of the IIIF
community's validator (tests/fixtures/iiif), and, since the schema accepts much, per
image: one canvas of the image's size, one annotation page, and annotations whose
motivation, language, text and creator are the expected ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import jsonschema
import pytest
from PIL import Image
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from artnote.corrections import approve, correct
from artnote.interchange.iiif import IiifError, write_iiif

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "tests/fixtures/iiif/presentation_3.schema.json").read_text())
BASE = "https://museum.example/images/"
CORRECTED_ALT = "Mount Fuji beneath the Great Wave – 神奈川沖浪裏, «été»"


def validate(document: dict) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(document)


def export(db: Path, out: Path, *extra: str) -> None:
    args = ["export", "iiif", "--base-url", BASE, "--out", str(out), "--catalog", str(db)]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture
def reviewed(annotated_art):
    """The paintings with hokusai's alt text corrected by Ada and munch approved by Ben."""
    db, folder, ids = annotated_art
    with open_catalog(db, create=False) as cat:
        correct(cat, str(ids["hokusai"]), {"alt_text": CORRECTED_ALT}, by="Ada Lovelace")
        approve(cat, [str(ids["munch"])], by="Ben Curator")
    return db, folder, ids


def load_all(out: Path) -> tuple[dict, list[dict]]:
    collection = json.loads((out / "collection.json").read_text(encoding="utf-8"))
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in (out / "manifests").iterdir()]
    return collection, manifests


def test_manifests_validate_and_say_who_wrote_each_text(reviewed, tmp_path):
    db, folder, ids = reviewed
    out = tmp_path / "iiif"
    export(db, out, "--label", "Sample paintings")
    collection, manifests = load_all(out)
    validate(collection)
    for manifest in manifests:
        validate(manifest)
    assert collection["type"] == "Collection" and collection["label"] == {
        "en": ["Sample paintings"]
    }
    assert sorted(m["id"] for m in manifests) == sorted(i["id"] for i in collection["items"])
    assert {m["label"]["en"][0] for m in manifests} == {"collection", "later"}
    assert not list(out.rglob("*.partial"))

    with open_catalog(db, create=False) as cat:
        rows = {r["image_id"]: r for r in cat.export_rows()}
    canvases = {}
    for manifest in manifests:
        for canvas in manifest["items"]:
            image_id = int(canvas["id"].rsplit("/", 1)[1])
            assert image_id not in canvases  # one canvas per image
            canvases[image_id] = canvas
    assert set(canvases) == set(rows)
    for image_id, canvas in canvases.items():
        row = rows[image_id]
        with Image.open(row["path"]) as im:
            assert (canvas["width"], canvas["height"]) == im.size
        (painting_page,) = canvas["items"]
        (painting,) = painting_page["items"]
        assert painting["motivation"] == "painting" and painting["target"] == canvas["id"]
        assert painting["body"]["id"] == BASE + quote(row["relpath"])
        assert painting["body"]["format"] == "image/jpeg"
        (page,) = canvas["annotations"]  # one annotation page of artnote's text
        by_label = {a["label"]["en"][0]: a for a in page["items"]}
        assert set(by_label) == {
            "Alt text",
            "Description",
            "Emotion (ArtEmis)",
            "Emotion explanation",
        }
        expected = {
            "Alt text": ("describing", row["alt_text"]),
            "Description": ("describing", row["description"]),
            "Emotion (ArtEmis)": ("tagging", row["dominant_emotion"]),
            "Emotion explanation": ("describing", row["explanation"]),
        }
        for title, (motivation, text) in expected.items():
            annotation = by_label[title]
            assert annotation["motivation"] == motivation and annotation["target"] == canvas["id"]
            assert annotation["body"]["value"] == text
            assert annotation["body"]["language"] == "en"
            assert annotation["generator"]["name"].startswith("artnote ")

    def creators(painter: str, title: str) -> list[tuple[str, str]]:
        page = canvases[ids[painter]]["annotations"][0]
        (annotation,) = [a for a in page["items"] if a["label"]["en"][0] == title]
        return [(c["type"], c["name"]) for c in annotation["creator"]]

    model = ("Software", "tiny-model")
    assert creators("hokusai", "Alt text") == [("Person", "Ada Lovelace")]
    assert creators("hokusai", "Description") == [model]  # not corrected: model text
    assert creators("munch", "Description") == [model, ("Person", "Ben Curator")]
    assert creators("matisse", "Alt text") == [model]
    hokusai = canvases[ids["hokusai"]]["annotations"][0]["items"]
    assert hokusai[0]["body"]["value"] == CORRECTED_ALT  # non-ASCII text unharmed
    assert "modified" in hokusai[0] and "modified" not in canvases[ids["matisse"]]


def test_status_filter_and_image_service(reviewed, tmp_path):
    db, _, ids = reviewed
    out = tmp_path / "approved"
    service = "https://iiif.museum.example/iiif/3"
    export(db, out, "--status", "approved", "--image-service", service)
    collection, manifests = load_all(out)
    validate(collection)
    (manifest,) = manifests
    validate(manifest)
    (canvas,) = manifest["items"]
    assert canvas["id"].endswith(f"/canvas/{ids['munch']}")
    body = canvas["items"][0]["items"][0]["body"]
    (svc,) = body["service"]
    assert svc["type"] == "ImageService3" and svc["id"].startswith(service + "/")
    assert "%2F" not in svc["id"] and body["id"] == svc["id"] + "/full/max/0/default.jpg"

    out = tmp_path / "later-only"
    export(db, out, "--status", "draft", "--status", "corrected")
    _, manifests = load_all(out)
    assert sum(len(m["items"]) for m in manifests) == 7


def test_folders_interleaved_in_path_order_each_get_one_manifest(tmp_path):
    """a/x.jpg, a/b/y.jpg, a/z.jpg: folder a is open while its subfolder is written."""
    rows = [
        {"root": "/r", "relpath": rel, "image_id": i, "path": f"/r/{rel}", "width": 4,
         "height": 3, "alt_text": f"text {i}", "model": "m", "status": "draft"}
        for i, rel in enumerate(["a/x.jpg", "a/b/y.jpg", "a/b/z.jpg", "a/z.jpg", "c.jpg"], 1)
    ]  # fmt: skip
    report = write_iiif(rows, tmp_path, base_url=BASE)
    assert report.manifests == 3 and report.canvases == 5
    collection, manifests = load_all(tmp_path)
    items = {
        m["label"]["en"][0]: [c["id"].rsplit("/", 1)[1] for c in m["items"]] for m in manifests
    }
    assert items == {"a": ["1", "4"], "a/b": ["2", "3"], "r": ["5"]}
    for manifest in manifests:
        validate(manifest)


def test_bad_base_url_is_one_line_and_writes_nothing(annotated_art, tmp_path):
    db, _, _ = annotated_art
    out = tmp_path / "iiif"
    args = [
        "export",
        "iiif",
        "--base-url",
        "museum/images",
        "--out",
        str(out),
        "--catalog",
        str(db),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "--base-url must be an http(s) URL" in result.stderr and "Traceback" not in result.output
    assert not out.exists()
    with pytest.raises(IiifError):
        write_iiif([], out, base_url="ftp://x/")

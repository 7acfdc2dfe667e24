"""Exports once collection records exist: the object's number, title and maker first, and
`--group-by object` (CSV, JSON Lines), `--per object` (IIIF), the record in XMP and in
Label Studio tasks."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from conftest import unavailable
from typer.testing import CliRunner

from artnote.cli import app

SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures/iiif/presentation_3.schema.json").read_text()
)


def run(db: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--catalog", str(db)])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def recorded(annotated_art, tmp_path):
    """The paintings; object A.1 (two images: monet listed first, then hokusai) and B.2
    (munch); the five others without a record."""
    db, folder, ids = annotated_art
    names = {p.name.split("_")[0]: p.name for p in folder.glob("*.jpg")}
    records = tmp_path / "records.csv"
    with open(records, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Object Number", "Title", "Artist Display Name", "Image"])
        writer.writerow(["A.1", "Water and Waves", "Various hands",
                         f"{names['monet']}; {names['hokusai']}"])  # fmt: skip
        writer.writerow(["B.2", "The Scream", "Edvard Munch", names["munch"]])
    run(db, "import", "records", str(records), "--image-column", "Image")
    return db, folder, ids


def test_csv_and_jsonl_lead_with_the_record(recorded):
    db, _, ids = recorded
    text = run(db, "export", "csv")
    header = text.splitlines()[0].lstrip("\ufeff")
    assert header.startswith("object_number,title,maker,path,")
    rows = {int(r["image_id"]): r for r in csv.DictReader(io.StringIO(text))}
    assert len(rows) == 8
    assert (rows[ids["munch"]]["object_number"], rows[ids["munch"]]["maker"]) == (
        "B.2",
        "Edvard Munch",
    )
    assert rows[ids["hokusai"]]["title"] == "Water and Waves"
    assert rows[ids["turner"]]["object_number"] == ""
    first = json.loads(run(db, "export", "jsonl").splitlines()[0])
    assert list(first)[:3] == ["object_number", "title", "maker"]


def test_group_by_object_gives_one_row_per_object_with_its_images(recorded):
    db, folder, ids = recorded
    rows = list(csv.DictReader(io.StringIO(run(db, "export", "csv", "--group-by", "object"))))
    assert len(rows) == 2 + 5  # two objects, five images without a record
    by_number = {r["object_number"]: r for r in rows if r["object_number"]}
    wave = by_number["A.1"]
    paths = wave["object_images"].split("; ")
    assert [Path(p).name.split("_")[0] for p in paths] == ["monet", "hokusai"]  # primary first
    assert int(wave["image_id"]) == ids["monet"]  # the primary image's annotation
    assert [Path(p).name for p in by_number["B.2"]["object_images"].split("; ")] == [
        Path(p).name for p in folder.glob("munch*")
    ]
    loose = [r for r in rows if not r["object_number"]]
    assert all(len(r["object_images"].split("; ")) == 1 for r in loose)
    lines = run(db, "export", "jsonl", "--group-by", "object").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 7 and len(records[0]["object_images"]) == 2
    bad = CliRunner().invoke(app, ["export", "csv", "--group-by", "folder", "--catalog", str(db)])
    assert bad.exit_code == 2


def test_iiif_per_object(recorded, tmp_path):
    db, _, ids = recorded
    out = tmp_path / "iiif"
    run(db, "export", "iiif", "--base-url", "https://m.example/", "--out", str(out),
        "--per", "object")  # fmt: skip
    manifests = [json.loads(p.read_text()) for p in (out / "manifests").iterdir()]
    for document in [*manifests, json.loads((out / "collection.json").read_text())]:
        jsonschema.Draft7Validator(SCHEMA).validate(document)
    labels = {m["label"]["en"][0]: m for m in manifests}
    assert set(labels) == {"Water and Waves (A.1)", "The Scream (B.2)", "collection", "later"}
    wave = labels["Water and Waves (A.1)"]
    canvases = [int(c["id"].rsplit("/", 1)[1]) for c in wave["items"]]
    assert canvases == [ids["monet"], ids["hokusai"]]
    meta = {m["label"]["en"][0]: m["value"]["none"][0] for m in wave["metadata"]}
    assert meta == {"Object number": "A.1", "Title": "Water and Waves", "Maker": "Various hands"}
    per_folder = sum(len(labels[name]["items"]) for name in ("collection", "later"))
    assert per_folder == 5


def test_xmp_and_label_studio_carry_the_record(recorded, tmp_path):
    db, _, ids = recorded
    tasks = tmp_path / "tasks.json"
    run(db, "export", "label-studio", "--out", str(tasks))
    data = {t["data"]["artnote_image_id"]: t["data"] for t in json.loads(tasks.read_text())}
    assert (
        data[ids["munch"]]["object_number"] == "B.2" and "object_number" not in data[ids["turner"]]
    )
    if shutil.which("exiftool") is None:
        unavailable("exiftool is not installed (Debian: libimage-exiftool-perl)")
    out = tmp_path / "xmp"
    run(db, "export", "xmp", "--sidecars", "--out", str(out))
    (sidecar,) = out.glob("munch*.xmp")
    read = subprocess.run(
        ["exiftool", "-j", "-struct", "-XMP-iptcExt:ArtworkOrObject", str(sidecar)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (work,) = json.loads(read.stdout)[0]["ArtworkOrObject"]
    assert work["AOSourceInvNo"] == "B.2" and work["AOTitle"] == "The Scream"
    assert work["AOCreator"] == ["Edvard Munch"]


def test_an_export_with_records_comes_back_as_corrections(recorded, tmp_path):
    db, _, ids = recorded
    out = tmp_path / "review.csv"
    run(db, "export", "csv", "--out", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    for row in rows:
        if int(row["image_id"]) == ids["munch"]:
            row["alt_text"] = "A figure screams on a bridge at sunset."
    with open(out, "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run(db, "corrections", "import", str(out), "--by", "ana")
    after = {int(r["image_id"]): r for r in csv.DictReader(io.StringIO(run(db, "export", "csv")))}
    assert after[ids["munch"]]["alt_text"] == "A figure screams on a bridge at sunset."
    assert [r["status"] for r in after.values()].count("corrected") == 1

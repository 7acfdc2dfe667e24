"""XMP sidecars and embedded copies, read back by exiftool (an independent reader)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import annotate_files, peaked, unavailable

from artnote.catalog import open_catalog
from artnote.corrections import approve, correct
from artnote.interchange.xmp import XmpError, embed_copies, write_sidecars

UNICODE = "Œuvre – la Vague, 神奈川沖浪裏 «été»"
ALT = "XMP-iptcCore:AltTextAccessibility"
LONG = "XMP-iptcCore:ExtDescrAccessibility"
HOKUSAI = "hokusai_the-great-wave-off-kanagawa_1831.jpg"
FORMATS = (HOKUSAI, "formats/wave.png", "formats/wave.tif")


@pytest.fixture(autouse=True)
def _exiftool() -> None:
    if shutil.which("exiftool") is None:
        unavailable("exiftool is not installed (Debian: libimage-exiftool-perl)")


@pytest.fixture
def art(annotated_art) -> tuple[Path, Path, dict[str, int]]:
    """annotated_art plus PNG and TIFF (and GIF, which exiv2 cannot write) variants of the
    wave in formats/, annotated too: ten writable images and one GIF."""
    from PIL import Image

    db, folder, ids = annotated_art
    (folder / "formats").mkdir()
    wave = Image.open(folder / HOKUSAI)
    files = {}
    for k, relpath in enumerate(("formats/wave.png", "formats/wave.tif", "formats/wave.gif")):
        wave.save(folder / relpath)
        files[relpath] = peaked(k, 0.5)
    return db, folder, {**ids, **annotate_files(db, folder, files)}


def rows(db: Path) -> list[dict]:
    with open_catalog(db, create=False) as cat:
        return list(cat.export_rows(provenance=True))


def row_of(db: Path, relpath: str) -> dict:
    return next(r for r in rows(db) if r["relpath"] == relpath)


def exiftool(*paths: Path) -> list[dict]:
    """What exiftool reads, one dict per file (XMP only, lang-alt as TAG and TAG-en)."""
    args = ["exiftool", "-j", "-G1", "-struct", "-XMP:all", *map(str, paths)]
    return json.loads(subprocess.run(args, capture_output=True, check=True).stdout)


def tree(folder: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under folder."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_texts(tags: dict, row: dict) -> None:
    assert tags[ALT] == tags[ALT + "-en"] == row["alt_text"]
    assert tags[LONG] == tags[LONG + "-en"] == row["description"]
    assert tags["XMP-dc:Description"] == row["description"]


def test_sidecars_read_by_exiftool_for_jpeg_png_tiff(art) -> None:
    db, folder, _ = art
    before = tree(folder)
    report = write_sidecars(rows(db))
    assert (report.written, report.skipped) == (11, [])
    sidecars = [folder / f"{relpath}.xmp" for relpath in FORMATS]
    for relpath, tags in zip(FORMATS, exiftool(*sidecars), strict=True):
        row = row_of(db, relpath)
        assert_texts(tags, row)
        assert tags["XMP-artnote:Status"] == "draft"
        assert tags["XMP-artnote:TextSource"] == "machine"
        assert "XMP-artnote:ReviewedBy" not in tags
        assert tags["XMP-artnote:Model"] == "tiny-model"
        assert tags["XMP-artnote:DominantEmotion"] == row["dominant_emotion"]
        assert tags["XMP-artnote:Explanation"] == row["explanation"]
        emotions = tags["XMP-artnote:Emotions"]
        assert len(emotions) == 9 and sum(emotions.values()) == pytest.approx(1, abs=1e-3)
        assert emotions["SomethingElse"] == pytest.approx(row["something_else"], abs=1e-4)
    # The originals are as they were; only sidecars were added beside them.
    after = tree(folder)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == sorted(f"{r['relpath']}.xmp" for r in rows(db))


def test_embedded_copies_for_jpeg_png_tiff_leave_originals(art) -> None:
    db, folder, _ = art
    before = tree(folder)
    report = embed_copies(rows(db), into=art[0].parent / "copies")
    copies = art[0].parent / "copies"
    assert report.written == 10
    assert [(Path(p).name, "gif" in why.lower()) for p, why in report.skipped] == [
        ("wave.gif", True)  # exiv2 cannot write GIF: reported, not fatal
    ]
    for relpath, tags in zip(FORMATS, exiftool(*(copies / r for r in FORMATS)), strict=True):
        assert_texts(tags, row_of(db, relpath))
    assert tree(folder) == before
    assert not list(copies.rglob("*.partial")) and not (copies / "formats/wave.gif").exists()


def test_merge_rerun_and_curator_text(art) -> None:
    db, folder, ids = art
    sidecar = folder / f"{HOKUSAI}.xmp"
    # A sidecar another tool wrote first: its fields must survive artnote's writes.
    made = ["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Creator=Someone", "-XMP-xmp:Rating=3"]
    subprocess.run(made, check=True)
    write_sidecars(rows(db))
    with open_catalog(db, create=False) as cat:
        values = {"alt_text": UNICODE, "description": UNICODE + "\nSecond line."}
        correct(cat, str(ids["hokusai"]), values, by="Ada Lovelace")
        approve(cat, [str(ids["matisse"])], by="type=Bag curator")  # exiv2's own syntax
    report = write_sidecars(rows(db))
    assert (report.written, report.skipped) == (11, [])
    copies = art[0].parent / "copies"
    assert embed_copies(rows(db), into=copies).written == 10
    matisse = next(folder.glob("matisse*.jpg.xmp"))
    hokusai, embedded, approved = exiftool(sidecar, copies / HOKUSAI, matisse)
    for tags in (hokusai, embedded):
        assert tags[ALT] == tags[ALT + "-en"] == UNICODE
        assert tags[LONG] == UNICODE + "\nSecond line."
        assert tags["XMP-artnote:Status"] == "corrected"
        assert tags["XMP-artnote:TextSource"] == "curator"
        assert tags["XMP-artnote:ReviewedBy"] == "Ada Lovelace"
        assert tags["XMP-artnote:CorrectedFields"] == ["alt_text", "description"]
    assert hokusai["XMP-dc:Creator"] == ["Someone"] and hokusai["XMP-xmp:Rating"] == 3
    raw = sidecar.read_text(encoding="utf-8")
    assert "A painting by hokusai." not in raw and raw.count("AltTextAccessibility>") == 2
    assert approved["XMP-artnote:Status"] == "approved"
    assert approved["XMP-artnote:TextSource"] == "curator"
    assert approved["XMP-artnote:ReviewedBy"] == "type=Bag curator"


def test_bad_images_are_reported_and_the_others_written(art) -> None:
    db, folder, _ = art
    current = rows(db)
    (folder / "munch_the-scream_1893.jpg").unlink()
    with open(folder / "monet_water-lilies_1919.jpg", "ab") as fh:
        fh.write(b"changed")
    escape = folder.parent / "escape.jpg"
    outside = dict(current[0], relpath="../escape.jpg", path=str(escape))
    garbage = b"<?xpacket begin='' \x00\xff not XMP"  # a sidecar exiv2 cannot parse
    (folder / "picabia_udnie_1913.jpg.xmp").write_bytes(garbage)
    copies = art[0].parent / "copies"
    sidecars = write_sidecars([*current, outside])
    embedded = embed_copies([*current, outside], into=copies)
    # The sidecar exiv2 cannot parse fails only the sidecar; GIF fails only the copy.
    for report, broken in ((sidecars, "picabia_udnie_1913.jpg"), (embedded, "wave.gif")):
        assert report.written == 8
        reasons = {Path(p).name: why for p, why in report.skipped}
        assert len(reasons) == 4 and reasons[broken].startswith("exiv2: ")
        assert "No such file" in reasons["munch_the-scream_1893.jpg"]
        assert "changed since the scan" in reasons["monet_water-lilies_1919.jpg"]
        assert "leaves the scanned folder" in reasons["escape.jpg"]
        assert all("\n" not in why for why in reasons.values())
    for base, written in ((folder, "*.xmp"), (copies, "*")):
        assert not list(base.rglob("*.partial"))
        assert not list(base.glob("monet" + written)) + list(base.glob("munch" + written))
    assert not list(folder.parent.glob("escape*"))
    assert (folder / "picabia_udnie_1913.jpg.xmp").read_bytes() == garbage


def test_out_dir_mirrors_relpaths_and_stem_naming(art) -> None:
    db, folder, _ = art
    before = tree(folder)
    out = art[0].parent / "sidecars"
    with open_catalog(db, create=False) as cat:  # streamed straight from the catalog
        report = write_sidecars(cat.export_rows(provenance=True), out_dir=out)
    assert report.written == 11
    assert tree(folder) == before  # nothing beside the originals
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.xmp"))
    assert written == sorted(f"{r['relpath']}.xmp" for r in rows(db))
    assert exiftool(out / "later" / "van-gogh_the-starry-night_1889.jpg.xmp")[0][ALT] == (
        "A painting by van-gogh."
    )

    stem = write_sidecars(rows(db), naming="stem")
    # wave.gif, wave.png and wave.tif would share formats/wave.xmp: the first keeps it.
    assert stem.written == 9
    assert sorted(Path(p).name for p, _ in stem.skipped) == ["wave.png", "wave.tif"]
    assert all("another image" in why for _, why in stem.skipped)
    assert (folder / "formats/wave.xmp").is_file()
    assert tree(folder).keys() - before.keys() == {
        f"{r['relpath'].rsplit('.', 1)[0]}.xmp" for r in rows(db)
    }


def test_refusals(art, tmp_path) -> None:
    db, folder, _ = art
    before = tree(folder)
    with pytest.raises(XmpError, match="naming"):
        write_sidecars(rows(db), naming="lightroom")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(XmpError, match="cannot write to"):
        write_sidecars(rows(db), out_dir=tmp_path / "a-file" / "out")
    report = embed_copies(rows(db), into=folder)  # onto the originals themselves
    assert report.written == 0 and len(report.skipped) == 11
    assert all("replace the original" in why for _, why in report.skipped)
    assert tree(folder) == before

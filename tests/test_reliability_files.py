"""No crash on bad input: one collection holding every kind of bad or odd file a museum
folder can hold, scanned by a real `artnote scan` subprocess.

Each file is either annotated (with the right size) or recorded with a specific
reason that `artnote status --json` lists; the scan exits 3, prints no
traceback, and never decodes the decompression bombs (memory stays bounded).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from artnote.cli import app

HOOKED = Path(__file__).parent / "fixtures" / "hooked_artnote.py"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MAX_PIXELS = 1_000_000  # small, so that a real (compressed) image can be a bomb
SQL_NAME = "x'); DROP TABLE images;--.jpg"
# What each good file must come out as: (width, height) after EXIF orientation, and mode.
GOOD = {
    "good.jpg": ((64, 48), "RGB"),
    SQL_NAME: ((64, 48), "RGB"),
    "gray16.tif": ((40, 30), "I;16"),
    "cmyk.jpg": ((32, 24), "CMYK"),
    "palette.png": ((10, 10), "P"),
    "animated.gif": ((20, 10), "P"),
    "multipage.tif": ((20, 10), "RGB"),
    "broken-exif.jpg": ((8, 6), "RGB"),
    "rotated.jpg": ((20, 40), "RGB"),  # stored 40x20, EXIF says: turn it
    "one-pixel.png": ((1, 1), "L"),
    "wide.png": ((20000, 20), "RGB"),
}
# What each bad file must be recorded with (a substring of its reason).
BAD = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated or corrupt",
    "truncated.png": "truncated or corrupt",
    "notes.png": "not an image",
    "bomb.png": f"over the limit of {MAX_PIXELS}",
    "bomb-header.png": f"over the limit of {MAX_PIXELS}",
    "bomb-header.jpg": f"over the limit of {MAX_PIXELS}",
    "caf\\xe9.jpg": "not valid UTF-8",  # shown with its odd byte escaped
    "locked.jpg": "permission denied",
    "locked-room": "permission denied",  # a folder
    "loop-a.jpg": "symbolic link",
    "loop-b.jpg": "symbolic link",
    "deleted-later.jpg": "disappeared",
    "growing.jpg": "changed while being read",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data))
    return struct.pack(">I", len(data)) + kind + data + crc


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    return Image.frombytes(
        "RGB", size, hashlib.shake_256(str(seed).encode()).digest(3 * size[0] * size[1])
    )


def make_bad_collection(root: Path) -> dict[str, object]:
    """Write the collection; return the hooks the scan needs to disturb it mid-run."""
    root.mkdir()

    def save(name: str, im: Image.Image, **params: object) -> Path:
        im.save(root / name, **params)
        return root / name

    save("good.jpg", _noise((64, 48), 1))
    save(SQL_NAME, _noise((64, 48), 2))
    save("gray16.tif", Image.new("I;16", (40, 30), 40000))
    save("cmyk.jpg", Image.new("CMYK", (32, 24), (0, 255, 255, 0)))
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (5, 0, 10, 10))
    save("palette.png", palette, transparency=0)
    red, blue = Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))
    save("animated.gif", red, save_all=True, append_images=[blue], duration=100)
    save("multipage.tif", red, save_all=True, append_images=[blue])
    data = save("broken-exif.jpg", Image.new("RGB", (8, 6), (9, 9, 9))).read_bytes()
    garbage = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x13" * 40
    app1 = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    (root / "broken-exif.jpg").write_bytes(data[:2] + app1 + data[2:])
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", _noise((40, 20), 3), exif=exif)
    save("one-pixel.png", Image.new("L", (1, 1), 7))
    save("wide.png", Image.new("RGB", (20000, 20), (0, 90, 200)))

    (root / "empty.jpg").write_bytes(b"")
    whole = io.BytesIO()
    _noise((256, 256), 4).save(whole, "JPEG", quality=95)
    (root / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 3])
    whole = io.BytesIO()
    _noise((256, 256), 5).save(whole, "PNG")
    (root / "truncated.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (root / "notes.png").write_text("these are my notes, not a picture\n")
    # Bombs: a real image over the (lowered) limit, and headers claiming 10^10 pixels
    # with no data behind them: decoding either would need gigabytes.
    save("bomb.png", Image.new("L", (1200, 1200), 0))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (root / "bomb-header.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    )
    small = io.BytesIO()
    Image.new("RGB", (16, 16)).save(small, "JPEG")
    jpeg = bytearray(small.getvalue())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    (root / "bomb-header.jpg").write_bytes(bytes(jpeg))

    (root / os.fsdecode(b"caf\xe9.jpg")).write_bytes((root / "good.jpg").read_bytes()[:-1])
    save("locked.jpg", _noise((16, 16), 6))
    (root / "locked-room").mkdir()
    save("locked-room/inside.jpg", _noise((16, 16), 7))
    os.symlink("loop-b.jpg", root / "loop-a.jpg")
    os.symlink("loop-a.jpg", root / "loop-b.jpg")
    os.symlink(".", root / "back-to-the-start")  # a folder loop: walked once
    save("deleted-later.jpg", _noise((16, 16), 8))
    save("rewritten-later.jpg", _noise((16, 16), 9))
    save("growing.jpg", _noise((16, 16), 10))

    hooks: dict[str, object] = {
        "after_pending": [
            ["delete", str(root / "deleted-later.jpg")],
            ["rewrite", str(root / "rewritten-later.jpg")],
        ],
        "while_hashing": str(root / "growing.jpg"),
    }
    locked = [root / "locked.jpg", root / "locked-room"]
    if IS_ROOT:  # root reads everything: simulate EACCES where a user would meet it
        hooks["deny"] = [str(p) for p in locked]
    else:
        for p in locked:
            p.chmod(0)
    return hooks


def run_scan(args: list[str], env: dict[str, str], hooks: dict) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in MiB) of a hooked `artnote scan`."""
    env = dict(env, ARTNOTE_TEST_HOOKS=json.dumps(hooks))
    with (
        open(os.devnull, "wb") as out,
        subprocess.Popen(
            [sys.executable, str(HOOKED), *map(str, args)],
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
        ) as proc,
    ):
        assert proc.stderr is not None
        err = proc.stderr.read().decode("utf-8", "replace")
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss // 1024


def artnote_out(*args: object, catalog: Path) -> str:
    """stdout of an in-process `artnote ARGS --catalog CATALOG` that must succeed."""
    result = CliRunner().invoke(app, [*map(str, args), "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    return result.stdout


def exported(catalog: Path) -> dict[str, dict[str, str]]:
    rows = csv.DictReader(io.StringIO(artnote_out("export", "csv", catalog=catalog)))
    return {Path(r["path"]).name: r for r in rows}


@pytest.mark.slow
def test_every_bad_file_is_annotated_or_recorded_with_its_reason(tiny_models, tmp_path, onnx_cache):
    root = tmp_path / "bad"
    hooks = make_bad_collection(root)
    db = tmp_path / "catalog.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTNOTE_")}
    env.update(
        ARTNOTE_CATALOG=str(db),
        ARTNOTE_MODEL=str(tiny_models["smolvlm"]),
        ARTNOTE_CACHE_DIR=str(onnx_cache),
        ARTNOTE_SCAN_MAX_PIXELS=str(MAX_PIXELS),
        ARTNOTE_GENERATION_ALT_TEXT_TOKENS="4",
        ARTNOTE_GENERATION_DESCRIPTION_TOKENS="4",
        ARTNOTE_GENERATION_EXPLANATION_TOKENS="4",
        HF_HUB_OFFLINE="1",
    )
    try:
        code, err, peak_mib = run_scan(["scan", root, "--batch-size", "4"], env, hooks)
    finally:
        for p in (root / "locked.jpg", root / "locked-room"):
            p.chmod(0o755)
    assert code == 3, err  # finished, some files unreadable
    assert "Traceback" not in err, err
    assert peak_mib < 2048, peak_mib  # about 550 MiB here; a decoded bomb needs 30 GB

    status = json.loads(artnote_out("status", "--json", catalog=db))
    reasons = {Path(f["path"]).name: f["reason"] for f in status["failures"]}
    for name, expected in BAD.items():
        assert expected in reasons.get(name, ""), (name, reasons.get(name), reasons)
    assert set(reasons) == set(BAD), set(reasons) ^ set(BAD)

    rows = exported(db)
    for name, (size, _mode) in GOOD.items():
        assert name in rows, (name, sorted(rows))
        assert (int(rows[name]["width"]), int(rows[name]["height"])) == size, name
        assert rows[name]["alt_text"] and rows[name]["status"] == "draft"
    assert rows[SQL_NAME]["path"] == str(root.resolve() / SQL_NAME)  # stored and exported as is
    # The file rewritten after hashing and the one that grew while hashed: the next scan
    # sees their new bytes and annotates those (the catalog follows the file).
    code, err, _ = run_scan(["scan", root, "--batch-size", "4", "--quiet"], env, {})
    assert code == 3, err
    rows = exported(db)
    for name in ("rewritten-later.jpg", "growing.jpg"):
        assert rows[name]["sha256"] == hashlib.sha256((root / name).read_bytes()).hexdigest()
    con = sqlite3.connect(db)
    modes = dict(con.execute("SELECT relpath, mode FROM images WHERE mode IS NOT NULL"))
    con.close()
    for name, (_size, mode) in GOOD.items():
        assert modes[name] == mode, (name, modes.get(name))

"""`artnote scan / export / status / search` end to end, through the CLI, on the paintings."""

from __future__ import annotations

import builtins
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artnote.cli import app
from artnote.emotions import EMOTION_COLUMNS
from artnote.export import CSV_COLUMNS

REQUIRED = (
    "path sha256 width height alt_text description dominant_emotion amusement awe contentment "
    "excitement anger disgust fear sadness something_else explanation model adapter status "
    "annotated_at"
).split()
FAST = ["--quiet"]


@pytest.fixture
def cli(tiny_models, onnx_cache, monkeypatch, tmp_path):
    """Run artnote in-process against a catalog in tmp_path with the tiny SmolVLM."""
    monkeypatch.setenv("ARTNOTE_CATALOG", str(tmp_path / "catalog.db"))
    monkeypatch.setenv("ARTNOTE_CACHE_DIR", str(onnx_cache))
    monkeypatch.setenv("ARTNOTE_MODEL", str(tiny_models["smolvlm"]))
    monkeypatch.setenv("ARTNOTE_GENERATION_DESCRIPTION_TOKENS", "12")
    monkeypatch.setenv("ARTNOTE_GENERATION_ALT_TEXT_TOKENS", "8")
    monkeypatch.setenv("ARTNOTE_GENERATION_EXPLANATION_TOKENS", "8")
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == code, (result.output, result.exception)
        return result

    return run


def _rows(output: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(output)))


def _count_model_calls(monkeypatch) -> list[int]:
    from artnote.model import annotate

    calls: list[int] = []
    original = annotate.Annotator.annotate

    def counting(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(annotate.Annotator, "annotate", counting)
    return calls


def test_scan_then_export_csv(cli, art_copy, monkeypatch):
    calls = _count_model_calls(monkeypatch)
    cli("scan", art_copy, *FAST, "--batch-size", "4")
    assert calls == [4, 4]
    rows = _rows(cli("export", "csv").stdout)
    assert len(rows) == 8
    assert set(REQUIRED) <= set(rows[0]) and list(rows[0]) == list(CSV_COLUMNS)
    for row in rows:
        assert abs(sum(float(row[c]) for c in EMOTION_COLUMNS) - 1) < 1e-6
        assert row["status"] == "draft" and row["model"] and len(row["alt_text"]) <= 125
        assert Path(row["path"]).parent == art_copy.resolve()
    status = json.loads(cli("status", "--json").stdout)
    assert status["images"] == 8 and status["annotated"] == 8 and status["pending"] == 0
    assert status["runs"] == 1
    for key in (
        "images",
        "annotated",
        "failed",
        "pending",
        "corrected",
        "approved",
        "adapters",
        "runs",
    ):
        assert isinstance(status[key], int)
    lines = cli("export", "jsonl").stdout.splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["provenance"]["prompt_hash"]


def test_the_whole_loop_runs_on_a_postgresql_catalog(cli, art_copy, monkeypatch, postgres_url):
    """Scan, rescan, export, correct and status against PostgreSQL (a throwaway server)."""
    monkeypatch.setenv("ARTNOTE_CATALOG", postgres_url)
    cli("scan", art_copy, *FAST)
    assert "8 unchanged" in cli("scan", art_copy).output
    rows = _rows(cli("export", "csv").stdout)
    assert len(rows) == 8 and all(r["annotated_at"].endswith("+00:00") for r in rows)
    for row in rows:
        assert abs(sum(float(row[c]) for c in EMOTION_COLUMNS) - 1) < 1e-6
    cli("correct", rows[0]["path"], "--alt-text", "A corrected alt text.", "--by", "curator")
    again = {r["path"]: r for r in _rows(cli("export", "csv").stdout)}
    assert again[rows[0]["path"]]["alt_text"] == "A corrected alt text."
    assert again[rows[0]["path"]]["status"] == "corrected"
    status = json.loads(cli("status", "--json").stdout)
    assert (status["annotated"], status["corrected"], status["runs"]) == (8, 1, 2)
    assert json.loads(cli("export", "jsonl").stdout.splitlines()[0])["provenance"]


def test_rescan_of_unchanged_folder_opens_nothing(cli, art_copy, monkeypatch):
    cli("scan", art_copy, *FAST)
    from artnote.model import annotate

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded on a rescan")

    monkeypatch.setattr(annotate, "load_annotator", no_model)
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        if str(art_copy) in str(file):
            opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    result = cli("scan", art_copy)
    assert opened == []
    assert "0 annotated, 8 unchanged" in result.stderr


def test_added_and_changed_files_are_the_only_ones_annotated(cli, art_copy, art_paths, monkeypatch):
    from PIL import Image

    cli("scan", art_copy, *FAST)
    calls = _count_model_calls(monkeypatch)
    sub = art_copy / "new room"
    sub.mkdir()
    Image.open(art_paths[0]).rotate(90, expand=True).save(sub / "added.png")
    changed = art_copy / art_paths[1].name
    Image.open(changed).convert("L").convert("RGB").save(changed, "JPEG")  # re-saved: new bytes
    touched = art_copy / art_paths[2].name
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # same bytes, new mtime
    cli("scan", art_copy, *FAST)
    assert sum(calls) == 2
    rows = {Path(r["path"]).name: r for r in _rows(cli("export", "csv").stdout)}
    assert len(rows) == 9 and "added.png" in rows


def test_identical_files_are_annotated_once_and_both_exported(cli, art_copy, monkeypatch):
    calls = _count_model_calls(monkeypatch)
    first = sorted(art_copy.iterdir())[0]
    shutil.copy2(first, art_copy / "twin.jpg")
    result = cli("scan", art_copy)
    assert sum(calls) == 8
    assert "1 duplicates" in result.stderr
    rows = _rows(cli("export", "csv").stdout)
    twins = [r for r in rows if Path(r["path"]).name in (first.name, "twin.jpg")]
    assert len(twins) == 2 and twins[0]["description"] == twins[1]["description"]
    assert twins[0]["sha256"] == twins[1]["sha256"]


def test_bad_files_are_recorded_and_the_scan_goes_on(cli, art_copy, art_paths):
    (art_copy / "empty.jpg").write_bytes(b"")
    (art_copy / "notes.png").write_text("this is not a picture")
    data = art_paths[0].read_bytes()
    (art_copy / "truncated.jpg").write_bytes(data[: len(data) // 3])
    result = cli("scan", art_copy, code=3)
    assert "Traceback" not in result.output
    status = json.loads(cli("status", "--json").stdout)
    assert status["annotated"] == 8 and status["failed"] == 3
    reasons = {Path(f["path"]).name: f["reason"] for f in status["failures"]}
    assert set(reasons) == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert all(reasons.values())
    assert len(_rows(cli("export", "csv").stdout)) == 8


def test_formula_in_a_description_is_neutralised(cli, art_copy, tmp_path):
    from artnote.catalog import open_catalog

    cli("scan", art_copy, *FAST, "--limit", "1")
    catalog = open_catalog(tmp_path / "catalog.db")
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql(
            'UPDATE annotations SET description = \'=HYPERLINK("http://evil","x")\''
        )
    (row,) = _rows(cli("export", "csv").stdout)
    assert row["description"].startswith("'=HYPERLINK(")


def test_search_finds_words_of_the_annotations(cli, art_copy):
    cli("scan", art_copy, *FAST, "--limit", "2")
    rows = _rows(cli("export", "csv").stdout)
    # Every explanation names its dominant emotion ("It makes me feel awe because ...").
    word = rows[0]["dominant_emotion"].split()[0]
    hits = json.loads(cli("search", word, "--json").stdout)
    assert rows[0]["path"] in [h["path"] for h in hits]
    others = [r["path"] for r in rows if word not in r["explanation"]]
    assert not set(others) & {h["path"] for h in hits}
    cli("search", "x'); DROP TABLE images;--")
    assert len(_rows(cli("export", "csv").stdout)) == 2


@pytest.mark.parametrize("offline", ["1", None], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_missing_model_offline_exits_1_with_one_line(art_copy, tmp_path, offline):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    if offline:
        env["HF_HUB_OFFLINE"] = offline
    else:  # no network here: make sure of it whatever the machine, with an unroutable endpoint
        env["HF_ENDPOINT"] = "https://hub.invalid"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "artnote.cli",
            "scan",
            str(art_copy),
            "--model",
            "museum-nobody/missing",
            "--catalog",
            str(tmp_path / "c.db"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "museum-nobody/missing" in lines[0] and "hf download" in lines[0]


def test_help_status_and_export_do_not_import_torch(tmp_path):
    """Start-up speed, checked by what is imported: torch, transformers and onnxruntime
    take seconds to import, and --help, status and export need none of them.
    (Timings belong to benchmarks: no test asserts a wall-clock time.)"""
    from artnote.catalog import open_catalog

    db = tmp_path / "c.db"
    open_catalog(db).close()
    heavy = ("torch", "transformers", "onnxruntime")
    for args in (
        ["--help"],
        ["status", "--catalog", str(db)],
        ["export", "csv", "--catalog", str(db)],
    ):
        code = (
            "import sys; from artnote.cli import main; sys.argv = ['artnote', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print([m for m in {heavy!r} if m in sys.modules])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "[]", (args, proc.stdout[-500:])


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_committed_and_the_next_scan_resumes(
    tiny_models, onnx_cache, tmp_path
):
    import signal

    from PIL import Image

    from artnote.catalog import open_catalog

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(48):
        Image.new("RGB", (40 + i, 30), (5 * i, 255 - 5 * i, 100)).save(folder / f"{i:02d}.png")
    db = tmp_path / "c.db"
    env = {
        **os.environ,
        "ARTNOTE_CACHE_DIR": str(onnx_cache),
        "HF_HUB_OFFLINE": "1",
        # Enough work per batch (min = max tokens) that the scan is still running when the
        # signal comes: with the tiny model an unhurried scan can finish within one poll.
        "ARTNOTE_GENERATION_DESCRIPTION_TOKENS": "64",
        "ARTNOTE_GENERATION_MIN_NEW_TOKENS": "64",
    }
    args = [
        sys.executable,
        "-m",
        "artnote.cli",
        "scan",
        str(folder),
        "--catalog",
        str(db),
        "--model",
        str(tiny_models["smolvlm"]),
        "--batch-size",
        "2",
        "--quiet",
    ]
    # SIGINT as a terminal's Ctrl-C delivers it, even if the runner started us with it ignored.
    proc = subprocess.Popen(
        args,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _annotated_now(db) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    catalog = open_catalog(db)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err
    done = catalog.status_counts()["annotated"]
    assert 4 <= done < 48
    with catalog.engine.connect() as conn:
        outcomes = [r[0] for r in conn.exec_driver_sql("SELECT outcome FROM runs")]
    assert outcomes == ["interrupted"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = catalog.status_counts()
    assert counts["annotated"] == 48 and counts["pending"] == 0
    with catalog.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*), count(DISTINCT sha256) FROM annotations")
        assert tuple(total.one()) == (48, 48)  # nothing annotated twice


def test_a_file_rewritten_after_hashing_is_left_for_the_next_scan(tmp_path, art_paths):
    from artnote.catalog.rows import PendingImage
    from artnote.decoding import CHANGED
    from artnote.decoding import Decoder as _Decoder

    path = tmp_path / "a.jpg"
    shutil.copy(art_paths[0], path)
    st = path.stat()
    item = PendingImage(1, str(path), "a.jpg", "0" * 64, st.st_size, st.st_mtime_ns)
    decoder = _Decoder(max_pixels=10**9, target=64, workers=1)
    try:
        assert decoder._one(item) is not CHANGED
        shutil.copy(art_paths[1], path)  # new bytes: not the content that was hashed
        assert decoder._one(item) is CHANGED
    finally:
        decoder.close()


def test_another_folders_failures_do_not_fail_this_scan(cli, art_paths, tmp_path):
    bad, good = tmp_path / "a", tmp_path / "b"
    bad.mkdir()
    good.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    shutil.copy(art_paths[0], good / art_paths[0].name)
    cli("scan", bad, "--quiet", code=3)
    result = cli("scan", good, code=0)
    assert "0 failed" in result.stderr
    assert json.loads(cli("status", "--json").stdout)["failed"] == 1


def _annotated_now(db: Path) -> int:
    """Annotated images in a catalog another process is writing, read without waiting on its
    locks or migrating it (open_catalog would, and could sit out the whole scan)."""
    import sqlite3
    from contextlib import closing

    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)) as conn:
            (n,) = conn.execute("SELECT count(*) FROM images WHERE status = 'annotated'").fetchone()
    except sqlite3.Error:  # not created yet, or busy for a moment
        return 0
    return int(n)

"""No lost work: `artnote scan`, `finetune` and `corrections import` killed with SIGKILL at
chosen moments, several processes writing one catalog at once, and backups taken mid-scan.

Every process here is a real `artnote` subprocess on a real SQLite file. Exact
moments (inside a commit, after a checkpoint...) come from tests/fixtures/
hooked_artnote.py, which kills its own process there; the others are SIGKILLs
sent from here while watching the catalog.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from artnote.catalog import FileState, open_catalog
from artnote.cli import app
from artnote.corrections import correct
from artnote.emotions import EMOTIONS
from artnote.records import Annotation, Provenance

HOOKED = Path(__file__).parent / "fixtures" / "hooked_artnote.py"
KILLED = -signal.SIGKILL
CORRECTED = "A curator wrote this; no crash may lose it."


# --- helpers ------------------------------------------------------------------------


def artnote_env(catalog: Path, model: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTNOTE_")}
    env.update(
        ARTNOTE_CATALOG=str(catalog),
        ARTNOTE_MODEL=str(model),
        ARTNOTE_CACHE_DIR=str(cache),
        HF_HUB_OFFLINE="1",
        # Tiny generations: the point is the catalog, not the text.
        ARTNOTE_GENERATION_ALT_TEXT_TOKENS="4",
        ARTNOTE_GENERATION_DESCRIPTION_TOKENS="4",
        ARTNOTE_GENERATION_EXPLANATION_TOKENS="4",
    )
    return env


def start(args: list[str], env: dict[str, str], hooks: dict | None = None) -> subprocess.Popen:
    """`artnote ARGS` as a subprocess; with hooks, through hooked_artnote.py."""
    env = dict(env)
    if hooks:
        env["ARTNOTE_TEST_HOOKS"] = json.dumps(hooks)
        cmd = [sys.executable, str(HOOKED), *args]
    else:
        cmd = [sys.executable, "-m", "artnote.cli", *args]
    return subprocess.Popen(
        [str(a) for a in cmd],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )


def _as_from_a_terminal() -> None:
    """SIGHUP as a process started from a terminal has it: the test runner itself may run
    under nohup (SIGHUP ignored, inherited), which artnote rightly leaves ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def make_images(folder: Path, count: int, seed: int = 0) -> dict[str, str]:
    """`count` small distinct images (PNG and JPEG); relpath -> sha256."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(count):
        colour = tuple(rng.randrange(256) for _ in range(3))
        im = Image.new("RGB", (64, 64), colour)
        im.putpixel((i % 64, i // 64 % 64), (255 - colour[0], i % 256, seed % 256))
        name = f"img{i:04d}.{'png' if i % 2 else 'jpg'}"
        im.save(folder / name)
        out[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return out


def query(db: Path, sql: str, *params: object) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def count(db: Path, table: str) -> int:
    try:
        return query(db, f"SELECT count(*) FROM {table}")[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def integrity(db: Path) -> None:
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA foreign_key_check") == []


def fake_annotation(text: str) -> Annotation:
    emotions = {e: 1 / len(EMOTIONS) for e in EMOTIONS}
    prov = Provenance("tiny", None, "idefics3", None, None, "1", "ph", {}, "torch", "cpu", 1.0)
    return Annotation(f"Alt {text}.", f"Description {text}.", emotions, "awe", "Awe.", prov)


def annotated_catalog(db: Path, folder: Path, count_: int) -> dict[str, str]:
    """A catalog where `count_` real images carry (made-up) annotations; relpath -> sha256."""
    files = make_images(folder, count_, seed=7)
    with open_catalog(db) as cat:
        cid = cat.ensure_collection(folder)
        run = cat.start_run({}, "tiny", None)
        states = [
            FileState(rel, (folder / rel).stat().st_size, (folder / rel).stat().st_mtime_ns, sha)
            for rel, sha in files.items()
        ]
        ids = cat.record_files(cid, run, states)
        cat.add_annotations(run, [(ids[rel], fake_annotation(rel)) for rel in files])
        cat.finish_run(run, "completed", {})
    return files


def curated_catalog(db: Path, folder: Path, count_: int) -> dict[str, str]:
    """annotated_catalog, with every description corrected by a curator: finetune's data."""
    files = annotated_catalog(db, folder, count_)
    with open_catalog(db) as cat:
        for rel in files:
            correct(cat, files[rel][:12], {"description": f"A curated view of {rel}."}, "ana")
    return files


# --- 1. crash safety ------------------------------------------------------------------

# Ten moments to die, in the order they are tried; each later run resumes the last.
SCAN_KILLS: list[tuple[str, object]] = [
    ("hook", ["artnote.discover.hash_file", "before", 60]),  # hashing, nothing recorded
    ("hook", ["artnote.catalog.catalog.Catalog.record_files", "commit", 1]),  # discovery commit
    ("watch", 1),  # just after the first batch's commit
    ("hook", ["artnote.images.decode_image", "before", 10]),  # decoding ahead of the model
    ("hook", ["artnote.model.annotate.Annotator.annotate", "before", 2]),  # inside the model
    ("hook", ["artnote.catalog.catalog.Catalog.add_annotations", "commit", 2]),  # mid-commit
    ("hook", ["artnote.catalog.catalog.Catalog.add_annotations", "after", 2]),  # just after
    ("hook", ["artnote.catalog.catalog.Catalog.interrupt_stale_runs", "commit", 1]),
    ("delay", 0.5),  # wherever it is half a second into annotating (not at a commit)
    ("hook", ["artnote.catalog.catalog.Catalog.finish_run", "before", 1]),  # all saved, not closed
]


def _kill_when(proc: subprocess.Popen, db: Path, how: str, arg: object) -> None:
    # "watch": SIGKILL once the annotation count has grown by `arg`; "delay": `arg`
    # seconds after it has grown by one. (A fixed delay from the start let a fast
    # machine finish the whole scan first.)
    grown = int(arg) if how == "watch" else 1  # type: ignore[call-overload]
    base = count(db, "annotations")
    while proc.poll() is None and count(db, "annotations") < base + grown:
        time.sleep(0.005)
    if how == "delay":
        time.sleep(float(arg))  # type: ignore[arg-type]
    proc.send_signal(signal.SIGKILL)


def _annotation_rows(db: Path) -> dict[int, tuple]:
    rows = query(db, "SELECT id, sha256, run_id, alt_text, description FROM annotations")
    return {r[0]: r for r in rows}


@pytest.mark.slow
def test_scan_killed_ten_times_loses_nothing_and_annotates_each_image_once(
    tiny_models, tmp_path, onnx_cache
):
    folder = tmp_path / "collection"
    files = make_images(folder, 200)
    db = tmp_path / "catalog.db"
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    scan = ["scan", folder, "--batch-size", "8", "--quiet"]
    committed: dict[int, tuple] = {}
    corrected_sha = None
    for i, (how, arg) in enumerate(SCAN_KILLS):
        last = i == len(SCAN_KILLS) - 1
        args = scan + (["--limit", "16"] if last else [])  # leave work for the final run
        proc = start(args, env, {"kill": arg} if how == "hook" else None)
        if how != "hook":
            _kill_when(proc, db, how, arg)
        code, err = finish(proc)
        assert code == KILLED, (i, how, arg, code, err[-2000:])
        integrity(db)
        rows = _annotation_rows(db)
        for ann_id, row in committed.items():  # nothing committed is ever lost or changed
            assert rows.get(ann_id) == row, (i, ann_id)
        committed = rows
        runs = query(db, "SELECT id, outcome, pid FROM runs ORDER BY id")
        mine = [outcome for _, outcome, pid in runs if pid == proc.pid]
        if mine:  # it got as far as recording its run, which it could not close ...
            assert mine == ["running"]
            # ... and, starting, it had marked the runs of dead processes as interrupted.
            assert all(outcome != "running" for _, outcome, pid in runs if pid != proc.pid)
        if corrected_sha is None and rows:
            # A curator's correction, made between crashes, must outlive all of them.
            corrected_sha = next(iter(rows.values()))[1]
            with open_catalog(db) as cat:
                correct(cat, corrected_sha[:12], {"description": CORRECTED}, "curator")

    code, err = finish(start(scan, env))
    assert code == 0, err
    integrity(db)
    rows = _annotation_rows(db)
    assert all(rows.get(k) == v for k, v in committed.items())
    per_content: dict[str, int] = {}
    for _, sha, *_ in rows.values():
        per_content[sha] = per_content.get(sha, 0) + 1
    assert set(per_content) == set(files.values())  # no content without an annotation
    assert set(per_content.values()) == {1}  # and none annotated twice, in any run
    runs = query(db, "SELECT outcome FROM runs ORDER BY id")
    assert len(runs) >= 9 and runs[-1] == ("completed",)
    assert set(runs[:-1]) == {("interrupted",)}
    status = json.loads(CliRunner().invoke(app, ["status", "--json", "--catalog", str(db)]).stdout)
    assert (status["images"], status["annotated"], status["pending"]) == (200, 200, 0)
    assert status["failed"] == 0 and status["corrected"] == 1
    with open_catalog(db) as cat:
        (row,) = [r for r in cat.export_rows() if r["sha256"] == corrected_sha]
    assert row["description"] == CORRECTED and row["status"] == "corrected"


@pytest.mark.slow
def test_finetune_killed_after_a_checkpoint_resumes_to_a_loadable_adapter(
    tiny_models, tmp_path, onnx_cache
):
    from artnote.config import ModelSettings
    from artnote.model.adapters import load_adapter
    from artnote.model.load import load_model

    db = tmp_path / "catalog.db"
    curated_catalog(db, tmp_path / "collection", 2)
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    out = tmp_path / "adapters" / "crash"
    args = ["finetune", "--epochs", "3", "--batch-size", "1", "--checkpoint-every", "1"]
    args += ["--name", "crash", "--out", out, "--quiet"]
    # 2 samples, batch 1: 6 steps. Die right after step-2's checkpoint is complete ...
    code, err = finish(
        start(args, env, {"kill": ["trainer.checkpoint.save_checkpoint", "after", 2]})
    )
    assert code == KILLED, err
    assert sorted(p.name for p in out.iterdir()) == ["step-1", "step-2"]
    kept = json.loads((out / "step-2" / "trainer_state.json").read_text())["losses"]
    # ... then, resumed, die while writing step-4 (its adapter written, the rest not).
    hooks = {"kill": ["artnote.model.adapters.save_adapter", "after", 2]}
    code, err = finish(start([*args, "--resume"], env, hooks))
    assert code == KILLED, err
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if not n.startswith(".")] == ["step-1", "step-2", "step-3"]
    (leftover,) = [n for n in names if n.startswith(".")]  # hidden, never read as step-4
    assert leftover.startswith(".step-4.") and leftover.endswith(".partial")
    code, err = finish(start([*args, "--resume"], env))
    assert code == 0, err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # cleaned by step-4's save
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["step"] == 6 and len(state["losses"]) == 6
    assert state["losses"][:2] == kept  # resumed from the checkpoint, not started again
    with open_catalog(db) as cat:
        assert [a["name"] for a in cat.adapters()] == ["crash"]  # registered once, at the end
    loaded = load_model(ModelSettings(name=str(tiny_models["smolvlm"]), device="cpu"))
    config = load_adapter(loaded.model, out / "final", family=loaded.family, base_model=loaded.name)
    assert config.content_hash


@pytest.mark.parametrize(
    ("when", "kept"), [("commit", 0), ("after", 4)], ids=["mid-commit", "after-commit"]
)
def test_corrections_import_killed_keeps_all_or_nothing(tmp_path, when, kept):
    db = tmp_path / "catalog.db"
    files = annotated_catalog(db, tmp_path / "collection", 4)
    with open_catalog(db) as cat:
        rows = list(cat.export_rows())
    table = tmp_path / "edited.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "sha256", "description"])
        writer.writeheader()
        for r in rows:
            writer.writerow({"path": r["path"], "sha256": r["sha256"], "description": CORRECTED})
    env = artnote_env(db, tmp_path / "no-model", tmp_path / "cache")
    hooks = {"kill": ["artnote.catalog.catalog.Catalog.add_reviews", when, 1]}
    code, err = finish(start(["corrections", "import", table], env, hooks), timeout=60)
    assert code == KILLED, err
    integrity(db)
    assert count(db, "reviews") == kept
    code, err = finish(start(["corrections", "import", table], env), timeout=60)
    assert code == 0, err
    assert count(db, "reviews") == len(files) == 4  # idempotent: nothing doubled either


# --- 2. concurrency -------------------------------------------------------------------


@pytest.mark.slow
def test_two_scans_and_an_import_share_one_catalog(tiny_models, tmp_path, onnx_cache):
    db = tmp_path / "catalog.db"
    curated = annotated_catalog(db, tmp_path / "curated", 3)
    with open_catalog(db) as cat:
        rows = list(cat.export_rows())
    table = tmp_path / "edited.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["sha256", "description"])
        writer.writeheader()
        writer.writerows({"sha256": r["sha256"], "description": CORRECTED} for r in rows)
    root = tmp_path / "collection"
    files = make_images(root / "a", 16, seed=1)
    files |= {f"b/{k}": v for k, v in make_images(root / "b", 16, seed=2).items()}
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    # Overlapping folders: every image of b/ is pending for both scans.
    scans = [
        start(["scan", folder, "--batch-size", "4", "--quiet"], env)
        for folder in (root, root / "b")
    ]
    deadline = time.monotonic() + 120
    while count(db, "annotations") == len(curated) and time.monotonic() < deadline:
        time.sleep(0.01)  # the import starts while the scans are writing
    imports = start(["corrections", "import", table, "--by", "ana"], env)
    results = [finish(p) for p in (*scans, imports)]
    for code, err in results:
        assert code == 0, err
        assert "locked" not in err, err
    integrity(db)
    per_run = query(
        db,
        "SELECT run_id, sha256, count(*) FROM annotations"
        " GROUP BY run_id, sha256 HAVING count(*) > 1",
    )
    assert per_run == []  # no run annotates a content twice
    annotated = {sha for (sha,) in query(db, "SELECT DISTINCT sha256 FROM annotations")}
    assert set(files.values()) | set(curated.values()) == annotated
    assert count(db, "reviews") == 3
    with open_catalog(db) as cat:
        got = {r["sha256"]: r["description"] for r in cat.export_rows()}
    assert all(got[sha] == CORRECTED for sha in curated.values())
    twice = query(
        db,
        "SELECT count(*) FROM (SELECT sha256 FROM annotations GROUP BY sha256 HAVING count(*) > 1)",
    )
    print(f"contents annotated by both scans: {twice[0][0]} of 16 shared")


# --- 7. backups while a scan writes ---------------------------------------------------


@pytest.mark.slow
def test_backup_during_a_scan_is_a_consistent_snapshot(tiny_models, tmp_path, onnx_cache):
    folder = tmp_path / "collection"
    make_images(folder, 120, seed=3)
    db = tmp_path / "catalog.db"
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    # A pause after each commit keeps the scan writing while the backups are taken.
    hooks = {"sleep": ["artnote.catalog.catalog.Catalog.add_annotations", 0.2]}
    proc = start(["scan", folder, "--batch-size", "4", "--quiet"], env, hooks)
    try:
        deadline = time.monotonic() + 120
        while count(db, "annotations") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = []
        for k in range(3):
            copy = tmp_path / f"backup-{k}.db"
            result = CliRunner().invoke(app, ["catalog", "backup", str(copy), "--catalog", str(db)])
            assert result.exit_code == 0, result.output
            assert not Path(f"{copy}-wal").exists()  # one self-contained file
            integrity(copy)
            annotated = query(copy, "SELECT DISTINCT sha256 FROM annotations")
            marked = query(copy, "SELECT DISTINCT sha256 FROM images WHERE status = 'annotated'")
            assert sorted(annotated) == sorted(marked)  # each commit wholly in, or wholly out
            # Taken while the scan ran (else this proves nothing).
            assert query(copy, "SELECT outcome FROM runs") == [("running",)]
            seen.append(len(annotated))
            time.sleep(0.3)
        assert seen == sorted(seen) and seen[0] > 0
        with open_catalog(copy) as cat:  # an artnote catalog like any other
            assert cat.status_counts()["annotated"] == seen[-1]
    finally:
        proc.kill()
        proc.communicate()

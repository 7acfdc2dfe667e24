"""A full disk at an export's target and at a finetune checkpoint: one line naming the path
and the space left, nothing half-written under a real name, the catalog intact, and the
same command succeeds once there is room again.

The disk is made full by tests/fixtures/hooked_artnote.py's "enospc" hook: writes to a
path holding a substring fail with ENOSPC once some bytes went through, as a full volume
makes them fail. Every run is a real `artnote` subprocess.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from test_reliability_crash import artnote_env, curated_catalog, finish, integrity, start
from typer.testing import CliRunner

from artnote.catalog import open_catalog
from artnote.cli import app
from artnote.corrections import correct


def one_error_line(err: str) -> str:
    """The error, the last line on stderr and its only one (progress may come before it:
    a first finetune exports the encoder); no traceback."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == lines[-1:] and errors[0].startswith("Error: "), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return errors[0]


def assert_catalog_checks(db: Path) -> None:
    result = CliRunner().invoke(app, ["catalog", "check", "--catalog", str(db)])
    assert result.exit_code == 0, result.output
    integrity(db)


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


# --- exports ------------------------------------------------------------------------

FORMATS = {
    # format: (arguments after --out, target under tmp_path, substring made full)
    "csv": ([], "annotations.csv", "annotations.csv"),
    "jsonl": ([], "annotations.jsonl", "annotations.jsonl"),
    "iiif": (["--base-url", "https://museum.example/images/"], "iiif", "manifests"),
}


def read_export(fmt: str, out: Path) -> int:
    """How many images the export holds (and that it parses whole)."""
    if fmt == "csv":
        with open(out, encoding="utf-8-sig", newline="") as fh:
            return len(list(csv.DictReader(fh)))
    if fmt == "jsonl":
        return len([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])
    collection = json.loads((out / "collection.json").read_text(encoding="utf-8"))
    manifests = [json.loads(p.read_text(encoding="utf-8")) for p in (out / "manifests").iterdir()]
    assert len(manifests) == len(collection["items"])
    return sum(len(m["items"]) for m in manifests)


@pytest.mark.parametrize("previous", [False, True], ids=["new", "replacing"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_full_disk_at_an_export_target(annotated_art, tmp_path, fmt, previous):
    db = annotated_art[0]
    extra, name, full = FORMATS[fmt]
    out = tmp_path / "exports" / name
    out.parent.mkdir()
    env = artnote_env(db, tmp_path / "no-model", tmp_path / "cache")
    args = ["export", fmt, "--out", out, *extra]
    if previous:  # an export made when there was room: it must survive the failed one
        code, err = finish(start(args, env))
        assert code == 0, err
        before = {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    with open_catalog(db) as cat:  # so that the next export differs from the previous one
        correct(cat, str(annotated_art[2]["hokusai"]), {"alt_text": "Waves, corrected."}, "ana")

    # 200 bytes go through, then the volume is full: the file is started, never finished.
    code, err = finish(start(args, env, {"enospc": [full, 200]}))
    assert code == 1, err[-3000:]
    line = one_error_line(err)
    assert line.startswith("Error: no space left to write ") and " free on its volume" in line
    named = line.removeprefix("Error: no space left to write ").split(" (")[0]
    assert Path(named) == out or Path(named).parent == out / "manifests", line
    assert partials(out.parent) == []
    if previous:
        assert {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()} == before
    elif fmt == "iiif":
        assert not (out / "collection.json").exists() and not any((out / "manifests").iterdir())
    else:
        assert not out.exists()
    assert_catalog_checks(db)

    code, err = finish(start(args, env))  # room again: the same command
    assert code == 0, err
    assert read_export(fmt, out) == 8 and partials(out.parent) == []
    assert "Waves, corrected." in "".join(
        p.read_text(encoding="utf-8-sig") for p in [out, *out.rglob("*")] if p.is_file()
    )


# --- finetune checkpoints -------------------------------------------------------------


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


def visible(out: Path) -> list[str]:
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary left behind
    return names


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_then_resume(tiny_models, tmp_path, onnx_cache):
    db = tmp_path / "catalog.db"
    curated_catalog(db, tmp_path / "collection", 2)
    env = artnote_env(db, tiny_models["smolvlm"], onnx_cache)
    out = tmp_path / "adapters" / "full"
    args = ["finetune", "--epochs", "2", "--batch-size", "1", "--checkpoint-every", "1"]
    args += ["--name", "full", "--out", out, "--quiet"]
    # 2 samples, batch 1: 4 steps. The volume fills at step-3's first file (the adapter).
    code, err = finish(start(args, env, {"enospc": ["step-3", 0]}))
    assert code == 1, err[-3000:]
    line = one_error_line(err)
    assert line.startswith(f"Error: no space left to write {out / 'step-3'}/adapter.safetensors (")
    assert " free on its volume" in line
    assert visible(out) == ["step-1", "step-2"]  # no torn step-3, no temporary folder
    kept = {step: tree_digest(out / step) for step in ("step-1", "step-2")}
    losses = json.loads((out / "step-2" / "trainer_state.json").read_text())["losses"]
    assert len(losses) == 2
    assert_catalog_checks(db)

    # Resumed, the volume fills again, now at final/'s optimizer state (the last step is
    # saved as final/): a later file of the folder, after the adapter, config, metrics.
    step2 = {p.name: p.stat().st_size for p in (out / "step-2").iterdir()}
    room = max(size for name, size in step2.items() if name != "optimizer.safetensors")
    assert room < step2["optimizer.safetensors"], step2  # else this would not fail there
    code, err = finish(start([*args, "--resume"], env, {"enospc": ["final", room + 64]}))
    assert code == 1, err[-3000:]
    line = one_error_line(err)
    assert line.startswith(f"Error: no space left to write {out / 'final'} (")
    assert visible(out) == ["step-1", "step-2", "step-3"]
    assert {step: tree_digest(out / step) for step in kept} == kept  # earlier ones untouched
    assert json.loads((out / "step-3" / "trainer_state.json").read_text())["losses"][:2] == losses
    with open_catalog(db) as cat:
        assert cat.adapters() == []  # nothing registered from a run that did not finish

    code, err = finish(start([*args, "--resume"], env))  # room again
    assert code == 0, err[-3000:]
    assert visible(out) == ["final", "step-1", "step-2", "step-3"]
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert state["losses"][:2] == losses  # continued from the checkpoints, not started again
    assert {step: tree_digest(out / step) for step in kept} == kept
    with open_catalog(db) as cat:
        assert [a["name"] for a in cat.adapters()] == ["full"]
    assert_catalog_checks(db)


# --- leftovers: never read as data, cleaned ---------------------------------------------


def test_a_full_feature_cache_costs_only_the_cache_and_leftovers_go(tmp_path, monkeypatch, caplog):
    import torch

    from artnote import files
    from trainer import features
    from trainer.features import FeatureCache, Prepared

    item = Prepared(
        torch.zeros((1, 5), dtype=torch.long),
        torch.zeros((1, 5), dtype=torch.bool),
        torch.zeros((64, 32), dtype=torch.float16),
    )
    cache = FeatureCache(tmp_path, "k", 10**9)

    def full(path, data, **kwargs):  # the volume fills half-way through the write
        with files.atomic_write(path, "wb") as fh:
            fh.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(features, "write_bytes", full)
    cache.put("a" * 64, item)  # no exception: training goes on
    assert "no space left to write" in caplog.text and "free on its volume" in caplog.text
    assert cache.get("a" * 64) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written

    monkeypatch.setattr(features, "write_bytes", files.write_bytes)  # room again
    cache.put("b" * 64, item)
    folder = cache.path("b" * 64).parent
    old, fresh = folder / f".{'c' * 64}.safetensors.1-abcd.partial", folder / ".d.partial"
    legacy = folder / ".tmp-xyz"
    for path in (old, fresh, legacy):
        path.write_bytes(b"half")
    day_ago = time.time() - 2 * 86400
    os.utime(old, (day_ago, day_ago))
    os.utime(legacy, (day_ago, day_ago))
    assert cache.get("c" * 64) is None  # a leftover is never read as the entry
    cache.evict()
    assert not old.exists() and not legacy.exists()
    assert fresh.exists()  # it may be a write in progress
    assert cache.get("b" * 64) is not None


def test_resume_never_trusts_a_temporary_checkpoint(tmp_path):
    from trainer.checkpoint import latest_checkpoint, resume_point

    out = tmp_path / "run"
    for name in ("step-2", ".step-5.123-abcd.partial", "step-7.partial", ".final.9-ef.partial"):
        (out / name).mkdir(parents=True)
        (out / name / "trainer_state.json").write_text('{"step": 1}')
    assert latest_checkpoint(out) == out / "step-2"
    assert resume_point(out) == out / "step-2"


def test_a_backup_cleans_what_killed_backups_left(annotated_art, tmp_path):
    from artnote.catalog.maintenance import backup_catalog

    db = annotated_art[0]
    target = tmp_path / "backups" / "catalog.db"
    target.parent.mkdir()
    old = target.parent / ".catalog.db.1-abcd.partial"
    journal = target.parent / ".catalog.db.1-abcd.partial-journal"
    fresh = target.parent / ".catalog.db.2-ef01.partial"  # a backup still being written
    legacy = target.parent / "catalog.db.partial"
    for path in (old, journal, fresh, legacy):
        path.write_bytes(b"half")
    day_ago = time.time() - 2 * 86400
    for path in (old, journal):
        os.utime(path, (day_ago, day_ago))
    report = backup_catalog(db, target)
    assert report.counts["annotations"] == 8
    assert sorted(p.name for p in target.parent.iterdir()) == [fresh.name, "catalog.db"]
